"""``zoo benchmark``: retrieval quality and cost of several architectures on the same images.

folder(s) -> protocol (queries, gallery) -> per architecture: embed (Trainer.predict), index
(FAISS), search -> metrics (zoo.metrics) -> table, CSV/JSON/Markdown, PNG charts and grids,
and optionally a W&B run.
"""
from __future__ import annotations

import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import torch

from zoo.data.demo import demo_folder
from zoo.data.images import Record, scan_folder
from zoo.embed.runner import embed
from zoo.errors import ZooError
from zoo.evaluate.analysis import (
    BOOTSTRAP_RESAMPLES,
    TWIN_THRESHOLD,
    bootstrap_ci,
    query_diagnostics,
    twin_note,
    twin_report,
    twin_warning,
    worst_queries,
)
from zoo.evaluate.resources import PeakMemory, timer
from zoo.index.core import Hit, ZooIndex
from zoo.io import write_json, write_rows, write_text
from zoo.metrics.hubness import DEFAULT_WEIGHT, check_hubness
from zoo.metrics.retrieval import KS, per_class, retrieval_metrics
from zoo.model.module import ZooModel, model_config
from zoo.model.restore import load_model
from zoo.version import __version__

TABLE_COLUMNS = ["architecture", "weights", "hit@1", "hit@1 95% CI", "hit@10", "p@10", "map", "map 95% CI", "map@r", "img_per_s"]


@dataclass
class Architecture:
    name: str
    model: ZooModel  # not built yet

    @staticmethod
    def from_cli(model: ZooModel, backbones=None, heads=None, checkpoints=None, architectures=None) -> list["Architecture"]:
        base = model_config(model.hparams)
        archs: list[Architecture] = []
        for cfg in architectures or []:
            cfg = dict(cfg)
            name = cfg.pop("name", None)
            m = ZooModel(**{**base, **cfg})
            archs.append(Architecture(name or m.architecture, m))
        if backbones or heads or not (architectures or checkpoints):  # the --model.* architecture
            for b in backbones or [base["backbone"]]:
                for h in heads or [base["head"]]:
                    m = ZooModel(**{**base, "backbone": b, "head": h})
                    archs.append(Architecture(m.architecture, m))
        for ckpt in checkpoints or []:
            m = load_model(ckpt)
            archs.append(Architecture(f"{m.architecture}@{Path(ckpt).stem}", m))
        return archs


@dataclass
class Protocol:
    name: str
    queries: list[Record]
    gallery: Optional[list[Record]]  # None: leave-one-out over the queries
    classes: list[str]
    seed: Optional[int] = None

    def describe(self) -> str:
        g = "leave-one-out" if self.gallery is None else f"{len(self.gallery)} gallery"
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"{self.name}: {len(self.queries)} queries, {g}, {len(self.classes)} classes{seed}"


def make_protocol(images=None, query=None, gallery=None, protocol="auto", query_fraction=0.2, seed=0) -> Protocol:
    if (query is None) != (gallery is None):
        raise ZooError("--query and --gallery go together")
    if query is not None:
        if protocol not in ("auto", "query-gallery"):
            raise ZooError(f"--query/--gallery use protocol query-gallery, not {protocol}")
        q, g = _labelled(scan_folder(query), query), _labelled(scan_folder(gallery), gallery)
        return Protocol("query-gallery", q, g, sorted({r.label for r in q + g}))
    if images is None:
        images = demo_folder()
        print(f"zoo: no --images given: using the built-in demo set (scikit-learn digits) in {images}", file=sys.stderr)
    records = _labelled(scan_folder(images), images)
    classes = sorted({r.label for r in records})
    if protocol in ("auto", "loo"):
        return Protocol("leave-one-out", records, None, classes)
    if protocol == "split":
        by_class = defaultdict(list)
        for r in records:
            by_class[r.label].append(r)
        rng = random.Random(seed)
        qs, gs = [], []
        for c in classes:
            items = by_class[c][:]
            rng.shuffle(items)
            n = max(1, int(round(len(items) * query_fraction))) if len(items) > 1 else 0
            qs += items[:n]
            gs += items[n:]
        return Protocol("split", qs, gs, classes, seed)
    raise ZooError(f"unknown protocol '{protocol}'; use auto, loo, split or query-gallery")


def _labelled(records: list[Record], where) -> list[Record]:
    unlabelled = [r for r in records if r.label is None]
    if unlabelled:
        raise ZooError(f"{where}: benchmark needs class-per-folder images; {len(unlabelled)} file(s) sit directly in the root (e.g. {Path(unlabelled[0].path).name})")
    return records


def evaluate(arch: Architecture, proto: Protocol, trainer: Optional[L.Trainer], k: int, samples: int,
             batch_size: int, num_workers: int, seed: int, twin_threshold: float = TWIN_THRESHOLD,
             resamples: int = BOOTSTRAP_RESAMPLES, hubness: int = 0,
             hubness_weight: float = DEFAULT_WEIGHT) -> dict[str, Any]:
    """Embed, index, search and score one architecture; returns its row and details.
    ``hubness`` K > 0: rank as an index built with --hubness K does (zoo.metrics.hubness)."""
    model = arch.model
    with timer() as t_build:
        model.build()
    model.eval()
    records = proto.queries + (proto.gallery or [])
    with PeakMemory() as mem, timer() as t_embed:
        emb = embed(model, records, trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    ok = {r.path: i for i, r in enumerate(emb.records)}
    vec = torch.from_numpy(np.asarray(emb.vectors, dtype=np.float32))
    cls = {c: i for i, c in enumerate(proto.classes)}
    q_rec = [r for r in proto.queries if r.path in ok]
    q_vec = vec[[ok[r.path] for r in q_rec]]
    q_lab = torch.tensor([cls[r.label] for r in q_rec])
    if proto.gallery is None:
        g_rec, g_vec, g_lab = q_rec, None, None
    else:
        g_rec = [r for r in proto.gallery if r.path in ok]
        g_vec = vec[[ok[r.path] for r in g_rec]]
        g_lab = torch.tensor([cls[r.label] for r in g_rec])
    res = retrieval_metrics(q_vec, q_lab, g_vec, g_lab, ks=KS, confusion_k=k, num_classes=len(proto.classes),
                            hubness=(hubness, hubness_weight) if hubness else None)
    hit1, ap = res["per_query"]["hit@1"].numpy(), res["per_query"]["ap"].numpy()  # (Q,), NaN: no relevant item
    diag = query_diagnostics(q_vec, q_lab, g_vec, g_lab)
    twins = twin_report(vec.numpy(), diag, hit1, ap, twin_threshold)
    ci = {m: bootstrap_ci(v, resamples, seed) for m, v in (("hit@1", hit1), ("map", ap))}

    # index build and per-query search latency, as a user would run them
    index = ZooIndex.create(model, hubness=hubness, hubness_weight=hubness_weight)
    with timer() as t_index:
        index.add((q_vec if g_vec is None else g_vec).numpy(), g_rec)
        if hubness:
            index.refresh_density()
    lat = []
    extra = 1 if proto.gallery is None else 0  # leave-one-out: the query finds itself first
    for i in range(min(len(q_vec), 200)):
        t0 = time.perf_counter()
        index.search_vectors(q_vec[i : i + 1].numpy(), k + extra)
        lat.append((time.perf_counter() - t0) * 1000)

    def grid_row(i: int) -> tuple:
        sims, ids = index.search_vectors(q_vec[i : i + 1].numpy(), k + extra)
        hits = [h for h in index.hits(sims[0], ids[0]) if not (extra and h.path == q_rec[i].path)][:k]
        hits = [Hit(rank=j + 1, similarity=h.similarity, path=h.path, label=h.label) for j, h in enumerate(hits)]
        return (q_rec[i].path, q_rec[i].label, hits)

    rng = random.Random(seed)
    grid_rows = [grid_row(i) for i in sorted(rng.sample(range(len(q_rec)), min(samples, len(q_rec))))]
    worst = worst_queries(diag, samples)
    worst_rows = [grid_row(i) for i in worst]

    device = str(model.device) if trainer is None else str(trainer.strategy.root_device)
    row = {
        "architecture": arch.name,
        "backbone": model.hparams.backbone,
        "head": model.hparams.head,
        "weights": model.weights_id,
        "protocol": proto.name,
        "seed": proto.seed,
        "queries": res["num_queries"],
        "queries_without_relevant": res["queries_without_relevant"],
        "gallery": len(g_rec) - (1 if proto.gallery is None else 0),
        "hubness": f"k={hubness}, weight {hubness_weight:g}" if hubness else "none",
        **{k_: round(v, 4) for k_, v in res["summary"].items()},
        **{f"{m}_ci_{end}": round(v, 4) for m, (lo, hi) in ci.items() for end, v in (("low", lo), ("high", hi))},
        "bootstrap_resamples": resamples,
        **{k_: round(v, 4) if isinstance(v, float) else v for k_, v in twins.items()},
        "img_per_s": round(len(emb.records) / t_embed["s"], 1),
        "embed_s": round(t_embed["s"], 2),
        "build_model_s": round(t_build["s"], 2),
        "index_build_ms": round(t_index["s"] * 1000, 2),
        "search_ms_median": round(float(np.median(lat)), 3),
        "search_ms_p95": round(float(np.percentile(lat, 95)), 3),
        "dim": model.embedding_dim,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "peak_rss_mb": round(mem.peak_rss_mb, 1),
        "peak_gpu_mb": round(mem.peak_gpu_mb, 1),
        "device": device,
        "threads": torch.get_num_threads(),
        "skipped_files": len(emb.skipped),
    }
    names = proto.classes
    details = {
        "per_class": {names[c]: v for c, v in per_class(res["per_query"], q_lab, len(names)).items()},
        "confusion": {"k": k, "classes": names, "matrix": [[round(x, 4) for x in r] for r in res["confusion"].tolist()]},
        "skipped": emb.skipped,
        "worst_queries": [{"query": q_rec[i].path, "label": q_rec[i].label,
                           "first_match": r[2][0].path if r[2] else None,
                           "first_match_label": r[2][0].label if r[2] else None,
                           "first_similarity": round(float(diag.top1_similarity[i]), 4),
                           "best_own_class_similarity": round(float(diag.best_relevant_similarity[i]), 4)}
                          for i, r in zip(worst, worst_rows)],
    }
    return {"row": row, "details": details, "grid_rows": grid_rows, "worst_rows": worst_rows}


def display_row(row: dict) -> dict:
    """A result row with its confidence intervals as printable cells."""
    out = dict(row)
    for m in ("hit@1", "map"):
        if f"{m}_ci_low" in row:
            out[f"{m} 95% CI"] = f"[{row[f'{m}_ci_low']:.3f}, {row[f'{m}_ci_high']:.3f}]"
    return out


def format_table(rows: Sequence[dict], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) and not isinstance(v, bool) else str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(f"{r.get(c, ''):.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def run_benchmark(
    archs: list[Architecture], images=None, query=None, gallery=None, protocol="auto", query_fraction=0.2,
    seed=0, k=10, out="benchmark-results", overwrite=False, samples=3, use_wandb=False, wandb_project="zoo",
    trainer: Optional[L.Trainer] = None, batch_size=32, num_workers=2, twin_threshold: float = TWIN_THRESHOLD,
    resamples: int = BOOTSTRAP_RESAMPLES, hubness: int = 0, hubness_weight: float = DEFAULT_WEIGHT,
) -> list[dict]:
    out = Path(out)
    check_hubness(hubness, hubness_weight)  # before anything is embedded
    if (out / "results.json").exists() and not overwrite:
        raise ZooError(f"{out} already holds benchmark results; pass --overwrite or another --out")
    proto = make_protocol(images, query, gallery, protocol, query_fraction, seed)
    print(f"zoo: benchmark protocol {proto.describe()}", file=sys.stderr)
    results = []
    for arch in archs:
        print(f"zoo: benchmarking {arch.name}", file=sys.stderr)
        results.append(evaluate(arch, proto, trainer, k, samples, batch_size, num_workers, seed, twin_threshold, resamples,
                                hubness, hubness_weight))
    rows = [r["row"] for r in results]
    out.mkdir(parents=True, exist_ok=True)

    from zoo.report.plots import bar_chart, topk_grid

    chart = bar_chart([r["architecture"] for r in rows],
                      {m: [r[m] for r in rows] for m in ("hit@1", "hit@10", "map")},
                      out / "comparison.png", f"retrieval, {proto.describe()}",
                      errors={"hit@1": [(r["hit@1_ci_low"], r["hit@1_ci_high"]) for r in rows],
                              "map": [(r["map_ci_low"], r["map_ci_high"]) for r in rows]})
    grids, worst_grids = {}, {}
    for arch, res in zip(archs, results):
        safe = safe_name(arch.name)
        if res["grid_rows"]:
            grids[arch.name] = topk_grid(res["grid_rows"], out / f"grid_{safe}.png",
                                         title=f"{arch.name} — {res['row']['weights']} (random sample of queries)")
        if res["worst_rows"]:
            worst_grids[arch.name] = topk_grid(
                res["worst_rows"], out / f"worst_{safe}.png",
                title=f"{arch.name} — worst queries: wrong first match, lowest similarity to their own class")

    warnings_ = [w for w in (twin_warning(r["architecture"], r) for r in rows) if w]
    meta = {"zoo_version": __version__, "protocol": proto.name, "seed": proto.seed, "k": k,
            "description": proto.describe(), "classes": proto.classes,
            "hubness": {"k": hubness, "weight": hubness_weight} if hubness else None, "bootstrap_resamples": resamples,
            "bootstrap_seed": seed, "twin_threshold": twin_threshold, "warnings": warnings_,
            "notes": [n for n in (twin_note(r["architecture"], r) for r in rows) if n]}
    write_rows(out / "results.csv", rows)
    write_json(out / "results.json", {"meta": meta, "results": [{**r["row"], **r["details"]} for r in results]})
    write_text(out / "report.md", report_markdown(meta, rows, results, chart, grids, worst_grids))
    print(format_table([display_row(r) for r in rows]))
    print(f"\nzoo: {proto.describe()}; results in {out}/ (results.csv, results.json, report.md, comparison.png, grids)")
    if any("random init" in r["weights"] for r in rows):
        print("zoo: note: rows marked 'random init' ran WITHOUT pretrained weights; their numbers say nothing about the architecture's pretrained quality.")
    for w in warnings_:
        print(f"zoo: warning: {w}", file=sys.stderr)
    for note in meta["notes"]:
        print(f"zoo: note: {note}", file=sys.stderr)
    if use_wandb:
        from zoo.report.wandb_log import log_benchmark

        log_benchmark(meta, rows, results, archs, out, wandb_project, chart=chart,
                      images={**{f"grid {n}": p for n, p in grids.items()},
                              **{f"worst {n}": p for n, p in worst_grids.items()}})
    return rows


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name)


def report_markdown(meta, rows, results, chart, grids, worst_grids=None) -> str:
    worst_grids = worst_grids or {}
    cols = ["architecture", "weights", "hit@1", "hit@1 95% CI", "hit@5", "hit@10", "p@10", "map", "map 95% CI",
            "r_precision", "map@r"]
    cost = ["architecture", "img_per_s", "index_build_ms", "search_ms_median", "search_ms_p95", "dim", "params_m", "peak_rss_mb", "device", "threads"]
    lines = [f"# zoo benchmark", "", f"Protocol: {meta['description']}. zoo {meta['zoo_version']}.", "",
             "## Retrieval quality", "", markdown_table([display_row(r) for r in rows], cols), "",
             f"95% CI: percentile bootstrap over queries ({meta['bootstrap_resamples']} resamples, seed {meta['bootstrap_seed']}).", "",
             f"![comparison]({Path(chart).name})", ""]
    if meta.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in meta["warnings"]], ""]
    if meta.get("notes"):
        lines += ["Notes:", "", *[f"- {n}" for n in meta["notes"]], ""]
    twin = ["architecture", "twin_groups", "twin_queries", "nn_cosine_median", "hit@1", "hit@1_no_twin", "map", "map_no_twin"]
    lines += [f"Near-identical twins (cosine >= {meta['twin_threshold']:g}) inside the set; figures on the queries "
              "without a twin are not inflated by them:", "", markdown_table(rows, twin), "",
             "## Cost", "", markdown_table(rows, cost), ""]
    for r in results:
        name = r["row"]["architecture"]
        lines += [f"## {name}", "", f"Weights: {r['row']['weights']}", ""]
        pc = r["details"]["per_class"]
        lines += [markdown_table([{"class": c, **{k: round(v, 3) for k, v in m.items()}} for c, m in pc.items()],
                                 ["class", "queries", "hit@1", "hit@10", "p@10", "ap"]), ""]
        conf = r["details"]["confusion"]
        lines += [f"Top-{conf['k']} class confusion (row: query class; columns: share of its results per class):", "",
                  markdown_table([{"class": c, **dict(zip(conf["classes"], row))} for c, row in zip(conf["classes"], conf["matrix"])],
                                 ["class", *conf["classes"]]), ""]
        if name in grids:
            lines += [f"Random sample of queries:", "", f"![{name}]({Path(grids[name]).name})", ""]
        if name in worst_grids:
            lines += [f"Worst queries (wrong first match, lowest similarity to their own class):", "",
                      f"![{name} worst]({Path(worst_grids[name]).name})", ""]
    return "\n".join(lines)

"""``zoo duplicates``: exact duplicates by hash, near duplicates by embedding, and the outputs.

The work of the command: embed a folder (or open an index), find exact duplicates
(zoo.dedup.exact), search the pairs above the threshold (zoo.dedup.pairsearch, or scores
against a background set: zoo.dedup.background), group them (zoo.dedup.groups) and write
groups.json, pairs.csv, groups.csv, the nearest-similarity histogram and optional group plots.
Memory stays linear in N: the search returns only the pairs above the threshold and each
vector's nearest similarity. Nothing is deleted; ``--move-to`` hands the groups to
zoo.dedup.quarantine. With a size-aware calibration (``auto``: zoo.dedup.autothreshold), the
search starts at a floor and the threshold is chosen for this library's size.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from zoo.data.images import scan_folder
from zoo.dedup.autothreshold import AutoThreshold
from zoo.dedup.background import background_pairs, background_similarity, background_vectors
from zoo.dedup.exact import exact_groups
from zoo.dedup.groups import group_pairs, group_similarity_range, make_groups
from zoo.dedup.keep import DEFAULT_RULES, check_rules, suggest
from zoo.dedup.pairsearch import check_search_options, find_pairs
from zoo.dedup.quarantine import check_quarantine_target, quarantine
from zoo.embed.runner import embed
from zoo.errors import ZooError
from zoo.index.core import Hit, ZooIndex, load_index
from zoo.io import atomic_path, check_writable_dir, write_json


def near_groups(vectors: np.ndarray, paths: list[str], threshold: float, search: str = "auto",
                nprobe: Optional[int] = None, grouping: str = "star", lossy: bool = False,
                background_sims: Optional[np.ndarray] = None, choose=None) -> tuple[list[dict], list[tuple], Optional[np.ndarray], dict]:
    """(groups, pair rows (path_a, path_b, similarity), nearest similarities for the histogram
    or None, search summary). With ``background_sims`` (each vector's k-th nearest background
    similarity) pairs are scored against the background set, by exact search. ``choose``:
    similarities found above ``threshold`` -> (the threshold to apply, a report); the summary
    then holds both ("threshold", "auto_threshold")."""
    if background_sims is not None:
        pairs, sims = background_pairs(vectors, background_sims, threshold)
        pairs, sims = np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(sims, np.float32)
        nearest = None
        search_info = {"method": "exact, normalised against a background set", "grouping": grouping}
    else:
        found = find_pairs(vectors, threshold, method=search, nprobe=nprobe)
        search_info = {**found.summary(), "grouping": grouping,
                       "similarities": "approximate (decoded from lossy index codes)" if lossy else "exact"}
        print(f"zoo: near duplicates by {found.recall_note}"
              + ("; similarities from lossy index codes are approximate" if lossy else ""), file=sys.stderr)
        pairs, sims, nearest = found.pairs, found.sims, found.nearest
    if choose is not None:
        threshold, search_info["auto_threshold"] = choose(sims)
        search_info["threshold"] = threshold
        keep = sims >= threshold
        pairs, sims = pairs[keep], sims[keep]
    pair_rows = [(paths[a], paths[b], s) for (a, b), s in zip(pairs.tolist(), sims.tolist())]
    groups = make_groups(len(paths), pairs, sims, grouping)
    lo, hi = group_similarity_range(groups, len(paths), pairs, sims)
    inside = group_pairs(groups, len(paths), pairs, sims)
    near = [{"paths": [paths[i] for i in g], "min_similarity": float(a), "max_similarity": float(b), "pairs": p}
            for g, a, b, p in zip(groups, lo, hi, inside)]
    hist = nearest[np.isfinite(nearest)] if nearest is not None else None  # from the same search
    return near, pair_rows, hist, search_info


def write_results(out: Path, result: dict, pair_rows: list[tuple], hist: Optional[np.ndarray] = None,
                  plots: bool = False) -> None:
    """groups.json, pairs.csv and groups.csv in ``out``; the nearest-similarity histogram when
    ``hist`` holds values; with ``plots``, one picture per near group (the first 100)."""
    exact_set, near, threshold = result["exact_groups"], result["near_groups"], result["threshold"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "groups.json", result)
    with atomic_path(out / "pairs.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_a", "path_b", "similarity", "kind"])
        for g in exact_set:
            for p in g[1:]:
                w.writerow([g[0], p, "1.000000", "exact"])
        for a, b, s in pair_rows:
            w.writerow([a, b, f"{s:.6f}", "near"])
    with atomic_path(out / "groups.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "kind", "path", "keep", "reasons"])
        keeps = result.get("exact_keep") or [{}] * len(exact_set)
        for i, (g, k) in enumerate(zip(exact_set, keeps)):
            w.writerows([[f"exact-{i}", "exact", p, int(p == k.get("path")), "; ".join(k.get("reasons", ()))
                          if p == k.get("path") else ""] for p in g])
        for i, g in enumerate(near):
            k = g.get("keep") or {}
            w.writerows([[f"near-{i}", "near", p, int(p == k.get("path")), "; ".join(k.get("reasons", ()))
                          if p == k.get("path") else ""] for p in g["paths"]])
    if hist is not None and len(hist):
        from zoo.report.plots import histogram

        histogram(hist, out / "nearest_similarity.png", f"nearest-neighbour cosine similarity ({result['model']})",
                  "cosine similarity to the nearest other image"
                  + (" (among the inverted file's candidates)" if result["search"]["method"] == "ivf" else ""),
                  marks=[threshold])
    if plots:
        from zoo.report.plots import topk_grid

        for i, g in enumerate(near[:100]):
            hits = [Hit(rank=j + 1, similarity=float("nan"), path=p) for j, p in enumerate(g["paths"][1:12])]
            topk_grid([(g["paths"][0], None, hits)], out / f"group_{i:03d}.png", title=f"near-duplicate group {i}")


def run_duplicates(model, images=None, index=None, threshold=0.95, out="duplicates", overwrite=False,
                   exact_only=False, plots=False, move_to=None, trainer=None, batch_size=32, num_workers=0,
                   search="auto", nprobe=None, grouping="star", background=None, background_k=10,
                   auto: Optional[AutoThreshold] = None, keep_rules=DEFAULT_RULES, protect=(), review=False) -> dict:
    """``search``: "auto" (exact up to about 20k vectors, an inverted file above), "exact" or
    "ivf"; ``nprobe``: nearest lists each vector probes (more: higher recall, slower);
    ``grouping``: "star" (every member within the threshold of the group's first path) or
    "components" (connected components: chains of near duplicates); ``background``: a folder or
    index whose k-th nearest similarity is subtracted from each pair's (zoo.dedup.background);
    ``auto``: a size-aware calibration choosing the threshold for this library (``threshold``
    is then unused);
    ``keep_rules``, ``protect``: which member of each group to keep (zoo.dedup.keep), written to
    groups.json and used by ``move_to``; ``review``: with ``images``, also write the vectors as
    an index ``OUT/index`` for `zoo serve --duplicates` (every file, identical copies too), and
    leave ``move_to`` to the review page."""
    if (images is None) == (index is None):
        raise ZooError("give a folder (--images DIR) or an index (--index PATH)")
    if not 0.0 < threshold <= 1.0:
        raise ZooError(f"--threshold {threshold}: a cosine similarity in (0, 1] is expected")
    check_search_options(search, nprobe, grouping)
    keep_rules = check_rules(keep_rules)
    if review and images is not None and exact_only:
        raise ZooError("--review of a folder needs the model's vectors (for the page's index); drop --exact_only")
    out = Path(out)
    if (out / "groups.json").exists() and not overwrite:
        raise ZooError(f"{out} already holds duplicate results; pass --overwrite or another --out")
    check_writable_dir(out, f"--out {out}")

    exact: list[list[str]] = []
    lossy = False
    if index is not None:
        idx = load_index(index)
        root = idx.root
        on_disk = idx.vector_file() if background is None else None  # searched from the file, not read in
        ids, vectors, lossy = (*on_disk, False) if on_disk else idx.vectors()
        paths = idx.paths_of(ids)
        model_desc = idx.describe()
    else:
        root = Path(os.path.abspath(images))
    if move_to and not review:
        check_quarantine_target(Path(move_to), root)  # before the slow part
    if index is None:
        records = scan_folder(images)
        exact = exact_groups([r.path for r in records])
        print(f"zoo: {len(exact)} group(s) of identical files (by hash)", file=sys.stderr)
        if exact_only:
            paths, vectors, model_desc = [], None, None
        else:
            # one copy of each identical group goes through the model
            dup_extra = {p for g in exact for p in g[1:]}
            built = model.build()
            emb = embed(built, [r for r in records if r.path not in dup_extra], trainer=trainer,
                        batch_size=batch_size, num_workers=num_workers)
            paths, vectors = [r.path for r in emb.records], emb.vectors
            model_desc = f"{model.architecture} (weights: {model.weights_id})"
            if review:
                save_review_index(built, emb, records, exact, root, out / "index", overwrite, trainer)

    near: list[dict] = []
    pair_rows: list[tuple] = []
    hist = None
    search_info = None
    if vectors is not None and len(paths) > 1:
        bg = None
        if background is not None:
            bg_model = idx.model() if index is not None else model
            expect = ((idx.meta["model"]["architecture"], idx.meta["model"]["weights"]) if index is not None
                      else (model.architecture, model.weights_id))
            bg = background_similarity(vectors, background_vectors(background, bg_model, trainer, batch_size, num_workers,
                                                                   expect=expect), background_k)
        choose = None
        if auto is not None and bg is not None:
            print(f"zoo: note: --threshold auto with --background applies the fixed threshold {threshold:.4f} "
                  f"calibrated on raw similarities: it is not size-aware", file=sys.stderr)
        elif auto is not None:
            floor = auto.floor(len(paths))
            threshold, choose = floor, (lambda sims: auto.choose(len(paths), sims, floor))
        near, pair_rows, hist, search_info = near_groups(vectors, paths, threshold, search, nprobe, grouping, lossy, bg,
                                                         choose)
        threshold = search_info.get("threshold", threshold)

    exact_set = [sorted(g) for g in exact]
    for g in near:
        g["keep"] = suggest(g["paths"], keep_rules, protect)
    result = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(images or index), "threshold": threshold, "model": model_desc,
        **({"background": str(background), "background_k": background_k} if background is not None else {}),
        **({"auto_threshold": search_info.pop("auto_threshold")} if search_info and "auto_threshold" in search_info else {}),
        "exact_groups": exact_set, "near_groups": near, "search": search_info,
        "exact_keep": [suggest(g, keep_rules, protect) for g in exact_set], "keep_rules": list(keep_rules),
    }
    write_results(out, result, pair_rows, hist, plots)
    print(f"zoo: {len(exact_set)} exact and {len(near)} near-duplicate group(s) at cosine >= {threshold} -> {out}/groups.json, groups.csv, pairs.csv")
    for i, g in enumerate(exact_set + [g["paths"] for g in near]):
        print(f"  group {i}: " + "  ".join(g))
    if move_to and not review:
        quarantine(exact_set + [g["paths"] for g in near], Path(move_to), root, keep_rules, protect)
    return result


def save_review_index(model, emb, records, exact: list[list[str]], root: Path, out: Path, overwrite: bool,
                      trainer=None) -> None:
    """The embedded folder as an index at ``out`` (for the review page: files by id), every
    identical copy with its twin's vector."""
    at = {r.path: i for i, r in enumerate(emb.records)}
    twin = {p: g[0] for g in exact for p in g[1:]}
    rows, recs = [], []
    for r in records:
        i = at.get(r.path, at.get(twin.get(r.path)))
        if i is not None:
            rows.append(i)
            recs.append(r)
    extra = {"precision": str(trainer.precision)} if trainer is not None else {}
    idx = ZooIndex.create(model, "Flat", root=root, **extra)
    idx.add(emb.vectors[rows], recs)
    idx.save(out, overwrite=overwrite)

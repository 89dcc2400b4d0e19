"""Frozen versus fine-tuned features on held-out photos of a labelled folder, over several seeds.

    python benchmarks/finetune_food7.py [--images ../shared/data/food7] [--test-fraction 0.4]
        [--config configs/metric/mobilenetv2_shared.yaml [configs/triplet/mobilenetv2_shared.yaml ...]]
        [--seeds 3 | --seed 5 6 7] [--epochs N] [--soup] [--hubness 10] [--work runs/finetune]
        [--overwrite | --resume] [--wandb]

For each seed s (0 .. --seeds - 1): each class is split (seeded by s) into train and test photos;
``zoo fit`` trains every --config on the train photos (its own validation split is taken from
them; --seed_everything s), keeping the best epoch by val/map; then ``zoo benchmark`` scores the
frozen backbone of the first config and every trained checkpoint on the test photos with the
same protocol (leave-one-out within the test photos); with --soup also the average of the
seed's trained checkpoints (``zoo soup``). With --hubness K (default 10; 0: off) every model is
scored a second time as an index built with ``zoo index --hubness K`` ranks (the nearest by
cosine first, then cosine minus half the item's mean cosine to its K nearest:
zoo.metrics.hubness), a row "MODEL +hubness" each.
It reports hit@1, hit@10, P@10, mAP, MAP@R, the median cosine of each test photo to its
nearest other test photo (how much of the space the model uses: near 1, every photo has a "twin"
and cosine thresholds mean little) and the training time, per seed and as mean, standard
deviation and range over the seeds; and checks the targets of issue 24 on the soup, else on the
first fine-tuned recipe (ranked both ways when --hubness is on). Results: WORK/summary.{json,md},
WORK/seed-S/benchmark/ (zoo benchmark's report; with --wandb also its W&B runs). --resume keeps
the finished splits and training runs of a stopped --work folder.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
import yaml

from zoo.cli.main import main as zoo
from zoo.data.images import scan_folder

from one_picture import listed_pictures  # noqa: E402  (benchmarks/, beside this script)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
METRICS = (("hit@1", "hit@1"), ("hit@10", "hit@10"), ("P@10", "p@10"), ("mAP", "map"), ("MAP@R", "map@r"),
           ("NN cos median", "nn_cosine_median"), ("training min", "train_min"))
HUB = " +hubness"  # the rows ranked as a --hubness index ranks
TARGETS = {"hit@1": (">=", 0.96), "hit@10": (">=", 0.995), "mAP": (">=", 0.90), "NN cos median": ("<", 0.9),
           "training min": ("<", 15.0)}


def split(images: str, dest: Path, test_fraction: float, seed: int, listing: str | None = None) -> tuple[Path, Path]:
    """Link each class's photos into dest/train/<class> and dest/test/<class>. Photos that
    ``listing`` names as one picture (crops, frames of one video: one_picture.listed_pictures)
    go to one side together, so no test photo has a twin in training. A finished split (its
    marker written last) is kept: the split is a function of the seed."""
    if (dest / "done").is_file():
        return dest / "train", dest / "test"
    if dest.exists():
        shutil.rmtree(dest)  # a split a stop interrupted
    pictures = listed_pictures(listing, images)
    by_class: dict[str, dict] = {}
    for r in scan_folder(images):
        unit = pictures.get(str(Path(r.path).resolve()), r.path)
        by_class.setdefault(r.label, {}).setdefault(unit, []).append(Path(r.path))
    rng = random.Random(seed)
    for label, units in sorted(by_class.items()):
        units = sorted(units.values())
        rng.shuffle(units)
        n_test = round(sum(map(len, units)) * test_fraction)
        test, train = [], []
        for unit in units:
            (test if len(test) < n_test else train).extend(unit)
        for part, chunk in (("test", test), ("train", train)):
            (dest / part / label).mkdir(parents=True, exist_ok=True)
            for p in chunk:  # hard links: zoo reads no link out of a folder; a copy across file systems
                try:
                    os.link(p, dest / part / label / p.name)
                except OSError:
                    shutil.copy2(p, dest / part / label / p.name)
    (dest / "done").write_text(f"seed {seed}\n")
    return dest / "train", dest / "test"


def recipe_name(config: str) -> str:
    p = Path(config)
    return f"{p.parent.name}/{p.stem}"


def frozen_args(config: str) -> list[str]:
    """The --model.* options of a config's backbone without training (head frozen)."""
    model = yaml.safe_load(open(config))["model"]
    out = ["--backbone", model["backbone"]]
    for key in ("weights", "pretrained"):
        if key in model:
            out += [f"--model.{key}", str(model[key]).lower() if isinstance(model[key], bool) else str(model[key])]
    for key in ("model_kwargs", "data_config"):
        if model.get(key):
            out += [f"--model.{key}", yaml.safe_dump(model[key], default_flow_style=True).strip()]
    return out


def train_run(args, config: str, train: Path, seed: int, run: Path) -> tuple[Path, float]:
    """``zoo fit`` of one config on one split: its best checkpoint and the training seconds.
    With --resume a run that finished before (run/train.json, written last) is not repeated."""
    done = run / "train.json"
    if args.resume and done.is_file():
        record = json.loads(done.read_text())
        return run / record["best"], float(record["seconds"])
    if run.exists():
        shutil.rmtree(run)  # unfinished, or replaced
    t = time.perf_counter()
    epochs = ["--trainer.max_epochs", str(args.epochs)] if args.epochs is not None else []
    code = zoo(["fit", "--config", config, "--data.root", str(train), *epochs,
                "--seed_everything", str(seed), "--data.seed", str(seed), "--model.seed", str(seed),
                "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run)])
    seconds = time.perf_counter() - t
    if code:
        raise SystemExit(code)
    best = sorted(run.rglob("best-*.ckpt")) or sorted(p for p in run.rglob("*.ckpt") if p.name != "last.ckpt")
    done.write_text(json.dumps({"best": str(best[0].relative_to(run)), "seconds": seconds}))
    return best[0], seconds


def run_seed(args, seed: int, work: Path) -> list[dict]:
    """Train every config on seed ``seed``'s split and benchmark frozen + trained: a row each."""
    train, test = split(args.images, work / "split", args.test_fraction, seed, args.same_photos)
    trained = []
    for config in args.config:
        run = work / recipe_name(config).replace("/", "-")
        trained.append((recipe_name(config), *train_run(args, config, train, seed, run)))
    if args.soup:  # the runs averaged into one model (zoo soup); its training time is theirs together
        t = time.perf_counter()
        soup = work / "soup.ckpt"
        code = zoo(["soup", "--checkpoints", *[str(c) for _, c, _ in trained], "--out", str(soup), "--overwrite"])
        if code:
            raise SystemExit(code)
        names = " + ".join(name.split("/")[-1] for name, _, _ in trained)
        trained.append((f"soup({names})", soup, sum(s for _, _, s in trained) + time.perf_counter() - t))
    out = []
    for hubness in [0] + ([args.hubness] if args.hubness else []):
        bench = work / ("benchmark" if not hubness else "benchmark-hubness")
        code = zoo(["benchmark", "--images", str(test), "--protocol", "loo", *frozen_args(args.config[0]),
                    "--checkpoint", *[str(c) for _, c, _ in trained], "--out", str(bench), "--samples", "2",
                    "--overwrite", "--hubness", str(hubness),
                    *(["--wandb", "--wandb_project", "zoo-finetune"] if args.wandb else [])])
        if code:
            raise SystemExit(code)
        rows = list(csv.DictReader(open(bench / "results.csv")))
        if len(rows) != 1 + len(trained):
            raise SystemExit(f"expected {1 + len(trained)} rows in {bench / 'results.csv'}, got {len(rows)}")
        for (name, ckpt, train_s), row in zip([("frozen", None, 0.0), *trained], rows):
            out.append({"seed": seed, "model": name + (HUB if hubness else ""), "checkpoint": str(ckpt) if ckpt else None,
                        "queries": int(row["queries"]), "train_photos": sum(1 for _ in train.rglob("*.*")),
                        **{key: float(row[key]) for _, key in METRICS if key != "train_min"},
                        "train_min": train_s / 60})
    return out


def summarise(rows: list[dict]) -> dict:
    """Per model: mean, standard deviation (n - 1) and range of every metric over the seeds."""
    summary = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        summary[model] = {"seeds": [r["seed"] for r in mine]}
        for label, key in METRICS:
            v = [r[key] for r in mine]
            summary[model][label] = {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                                     "min": min(v), "max": max(v)}
    return summary


def table(summary: dict, seeds: int) -> str:
    head = "| model | " + " | ".join(label for label, _ in METRICS) + " |"
    lines = [f"mean ± sd over {seeds} seed(s) [min-max]", "", head, "|" + "---|" * (len(METRICS) + 1)]
    for model, s in summary.items():
        cells = [f"{s[m]['mean']:.3f} ± {s[m]['sd']:.3f} [{s[m]['min']:.3f}-{s[m]['max']:.3f}]" if m != "training min"
                 else f"{s[m]['mean']:.1f} ± {s[m]['sd']:.1f}" for m, _ in METRICS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(summary: dict) -> str:
    """The issue's targets, checked on the soup where there is one, else the first fine-tuned model:
    a line ranked by plain cosine and, where it was scored, a line ranked with hubness reduction;
    each against frozen ranked the same way."""
    lines = []
    for hub in (False, True):
        mine = [m for m in summary if not m.startswith("frozen") and m.endswith(HUB) == hub]
        name = next((m for m in mine if m.startswith("soup(")), None) or next(iter(mine), None)
        if name is None:
            continue
        s = summary[name]
        checks = []
        for label, (op, bound) in TARGETS.items():
            v = s[label]["mean"]
            ok = v >= bound if op == ">=" else v < bound
            checks.append(f"{label} {v:.3f} {op} {bound}: {'met' if ok else 'MISSED'}")
        for base in dict.fromkeys(("frozen", "frozen" + (HUB if hub else ""))):
            frozen = summary.get(base)
            if frozen:
                worse = [m for m in ("hit@1", "hit@10", "P@10", "mAP", "MAP@R") if s[m]["mean"] < frozen[m]["mean"]]
                checks.append(f"beats {base} on every measure" if not worse else f"below {base} on {', '.join(worse)}")
        lines.append(f"targets (issue 24) for {name}: " + "; ".join(checks))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(SHARED / "data" / "food7"))
    p.add_argument("--config", nargs="+", default=[str(ROOT / "configs" / "metric" / "mobilenetv2_shared.yaml")],
                   help="training configs to compare (the first one's backbone is the frozen baseline)")
    p.add_argument("--test-fraction", type=float, default=0.4)
    p.add_argument("--same-photos", default=str(ROOT / "benchmarks" / "food7_same_photos.txt"),
                   help="photos that are one picture (kept on one side of the split); 'none': split photo by photo")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: each config's max_epochs)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (split and training)")
    p.add_argument("--seed", type=int, nargs="+", default=None, help="run these seeds instead (e.g. unseen ones: 5 6 7)")
    p.add_argument("--work", default="runs/finetune")
    p.add_argument("--wandb", action="store_true", help="log zoo benchmark's runs (frozen vs fine-tuned) to W&B")
    p.add_argument("--soup", action="store_true", help="also average the configs' runs of each seed into one "
                   "model (zoo soup) and check the targets on it; its training time is the runs' together")
    p.add_argument("--hubness", type=int, default=10, help="also score every model ranked as `zoo index --hubness K` "
                   "ranks (hubness reduction, CSLS): rows 'MODEL +hubness'; 0: plain cosine only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --work folder")
    p.add_argument("--resume", action="store_true", help="keep an existing --work folder's finished splits and "
                   "training runs (after a stop); benchmarks run again")
    args = p.parse_args()

    work = Path(args.work)
    if args.soup and len(args.config) < 2:
        raise SystemExit("--soup needs two or more --config")
    if work.exists() and not args.resume:
        if not args.overwrite:
            raise SystemExit(f"{work} exists; pass --overwrite to replace it, --resume to go on, or another --work")
        shutil.rmtree(work)
    seeds = args.seed if args.seed is not None else list(range(args.seeds))
    rows = []
    for seed in seeds:
        rows += run_seed(args, seed, work / f"seed-{seed}")
        (work / "rows.json").write_text(json.dumps(rows, indent=2))  # what is done survives a stop
    summary = summarise(rows)
    first = rows[0]
    text = (f"{args.images}: train {first['train_photos']} photos, test {first['queries']} photos (leave-one-out), "
            f"{args.epochs or 'the configs'} epochs, {torch.get_num_threads()} threads, seeds {seeds}\n\n{table(summary, len(seeds))}\n\n"
            f"{targets(summary)}\n")
    (work / "summary.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    (work / "summary.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()

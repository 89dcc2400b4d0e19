"""Frozen versus triplet-fine-tuned features on held-out photos of a labelled folder.

    python benchmarks/finetune_food7.py [--images ../shared/data/food7] [--test-fraction 0.4]
        [--config configs/triplet/mobilenetv2_shared.yaml] [--epochs 4] [--work runs/finetune] [--overwrite]

Each class is split (seeded) into train and test photos. ``zoo fit`` trains the config on the
train photos (its own validation split is taken from them); then ``zoo benchmark`` scores the
frozen backbone and the trained checkpoint on the test photos with the same protocol
(leave-one-out within the test photos). Prints a table with the training time.
"""
from __future__ import annotations

import argparse
import csv
import random
import shutil
import time
from pathlib import Path

import torch
import yaml

from zoo.cli.main import main as zoo
from zoo.data.images import scan_folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def split(images: str, dest: Path, test_fraction: float, seed: int) -> tuple[Path, Path]:
    """Symlink each class's photos into dest/train/<class> and dest/test/<class>."""
    by_class: dict[str, list[Path]] = {}
    for r in scan_folder(images):
        by_class.setdefault(r.label, []).append(Path(r.path))
    rng = random.Random(seed)
    for label, paths in sorted(by_class.items()):
        rng.shuffle(paths)
        n_test = round(len(paths) * test_fraction)
        for part, chunk in (("test", paths[:n_test]), ("train", paths[n_test:])):
            (dest / part / label).mkdir(parents=True, exist_ok=True)
            for p in chunk:
                (dest / part / label / p.name).symlink_to(p)
    return dest / "train", dest / "test"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(SHARED / "data" / "food7"))
    p.add_argument("--config", default=str(ROOT / "configs" / "triplet" / "mobilenetv2_shared.yaml"))
    p.add_argument("--test-fraction", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/finetune")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --work folder")
    args = p.parse_args()

    work = Path(args.work)
    if work.exists():
        if not args.overwrite:
            raise SystemExit(f"{work} exists; pass --overwrite to replace it, or another --work")
        shutil.rmtree(work)
    train, test = split(args.images, work / "split", args.test_fraction, args.seed)
    t = time.perf_counter()
    code = zoo(["fit", "--config", args.config, "--data.root", str(train), "--trainer.max_epochs", str(args.epochs),
                "--trainer.default_root_dir", str(work), "--trainer.logger.init_args.save_dir", str(work)])
    train_s = time.perf_counter() - t
    if code:
        raise SystemExit(code)
    ckpt = next(p for p in work.rglob("*.ckpt") if p.name != "last.ckpt")  # the best by val/map
    model = yaml.safe_load(open(args.config))["model"]
    frozen = ["--backbone", model["backbone"], "--model.weights", model["weights"],
              "--model.model_kwargs", yaml.safe_dump(model["model_kwargs"], default_flow_style=True).strip(),
              "--model.data_config", yaml.safe_dump(model["data_config"], default_flow_style=True).strip()]
    code = zoo(["benchmark", "--images", str(test), "--protocol", "loo", *frozen, "--checkpoint", str(ckpt),
                "--out", str(work / "benchmark"), "--samples", "2"])
    if code:
        raise SystemExit(code)
    rows = list(csv.DictReader(open(work / "benchmark" / "results.csv")))
    print(f"\ntrain {sum(1 for _ in train.rglob('*.*'))} photos, test {rows[0]['queries']} photos (leave-one-out); "
          f"training {args.epochs} epochs took {train_s / 60:.1f} min on {torch.get_num_threads()} threads")
    print(f"{'architecture':52s} {'hit@1':>6s} {'hit@10':>6s} {'P@10':>6s} {'mAP':>6s}  weights")
    for r in rows:
        print(f"{r['architecture']:52s} {float(r['hit@1']):6.3f} {float(r['hit@10']):6.3f} "
              f"{float(r['p@10']):6.3f} {float(r['map']):6.3f}  {r['weights']}")


if __name__ == "__main__":
    main()

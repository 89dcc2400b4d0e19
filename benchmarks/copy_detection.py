"""Copy detection on unseen photos: frozen ImageNet MobileNetV2 versus the copydetect recipe.

    python benchmarks/copy_detection.py [--images ../shared/data/food7] [--train 1150] [--test 150]
        [--epochs 5] [--checkpoint CKPT] [--frozen-only] [--out copy-detection-results] [--fit ...]

A seeded split of the folder's photos (classes are ignored): ``--test`` photos, never seen in
training, each get one copy made by three random edits out of six (the ``copyset`` edits: crop
to 75-90 %, rotation up to 15 degrees, JPEG quality 15-35, brightness/colour jitter, mirror,
half-size downscale), plus ``--test`` other unseen photos as distractors; ``--train`` of the
remaining photos train configs/copydetect/mobilenetv2_shared.yaml without labels (a tenth of
them validate). Test photos are drawn skipping near-identical photos (grey-thumbnail check, see
``split``) and training skips photos near-identical to a test photo. Every pair of (originals,
copies, distractors) is scored by cosine similarity; the positives are the (original, copy)
pairs. The table gives precision and recall at fixed thresholds, the threshold reaching
precision 0.95 with its recall, and the pair AP, for the frozen features (average and GeM
pooling) and the trained model; precision_recall.png and hardest_negatives.png (the trained
model's highest-scoring pairs that are not copies) go to ``--out``. ``--checkpoint`` skips
training. Extra ``zoo fit`` options follow ``--fit``.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import zoo
from zoo.data.augment import make_copy
from zoo.data.images import Record, scan_folder
from zoo.embed.runner import embed
from zoo.metrics.pairs import at_threshold, average_precision, pair_scores, pr_curve, threshold_for_precision

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FROZEN = dict(backbone="timm/mobilenetv2_100", weights=str(SHARED / "weights" / "mobilenetv2_100_in1k.pth"),
              model_kwargs={"pad_type": "same"},
              data_config={"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0,
                           "input_size": [3, 224, 224]})
FROZEN_GEM = {**FROZEN, "model_kwargs": {"pad_type": "same", "global_pool": "gem"}}


def thumbnails(records) -> np.ndarray:
    """(N, 32, 32) grey thumbnails, for the model-free near-identical check."""
    from PIL import Image

    out = []
    for r in records:
        with Image.open(r.path) as im:
            out.append(np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32))
    return np.stack(out)


def _unit(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-6)


def split(images: str, n_train: int | None, n_originals: int, n_distractors: int, seed: int, n_calibration: int = 0,
          near: float = 0.95):
    """Seeded originals / distractors / calibration photos / training photos. Photo folders hold
    near-identical photos (burst shots, video frames a few pixels apart); a pair of them would
    count as a false positive of every model, and one in training would leak a test photo. So
    the unseen photos (originals, then distractors, then the calibration pool) are drawn first,
    skipping any whose grey 32 x 32 thumbnail correlates at >= ``near`` with one already drawn at
    any shift up to 4 px, and training takes the first ``n_train`` (None: all) of the rest that
    are not near-identical to an unseen photo. The unseen sets do not depend on ``n_train``."""
    records = sorted(scan_folder(images), key=lambda r: r.path)
    random.Random(seed).shuffle(records)
    thumbs = thumbnails(records)  # (N, 32, 32)
    centres = _unit(thumbs[:, 4:28, 4:28])  # (N, 576)

    def near_any(i: int, drawn: list[int]) -> bool:
        shifted = _unit(np.stack([thumbs[i, dy:dy + 24, dx:dx + 24] for dy in range(9) for dx in range(9)]))  # (81, 576)
        return bool(drawn) and float((centres[drawn] @ shifted.T).max()) >= near

    unseen, skipped, i, want = [], 0, 0, n_originals + n_distractors + n_calibration
    while len(unseen) < want and i < len(records):
        if near_any(i, unseen):
            skipped += 1
        else:
            unseen.append(i)
        i += 1
    if len(unseen) < want:
        sys.exit(f"{images} holds {len(records)} photos, {len(unseen)} of them not near-identical; "
                 f"{n_originals} originals + {n_distractors} distractors + {n_calibration} calibration photos need {want}")
    rest = [k for k in range(i, len(records)) if not near_any(k, unseen)]
    if n_train is not None and len(rest) < n_train:
        sys.exit(f"--train {n_train}: {images} has {len(rest)} photos beside the unseen ones that are not near-identical to one")
    train = rest if n_train is None else rest[:n_train]
    print(f"split: {skipped} near-identical photos left out of the unseen sets; {len(train)} training photos", file=sys.stderr)
    a, b = n_originals, n_originals + n_distractors
    return ([records[k] for k in train], [records[k] for k in unseen[:a]], [records[k] for k in unseen[a:b]],
            [records[k] for k in unseen[b:]])


def copy_set(originals, folder: Path, seed: int):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, r in enumerate(originals):
        p = folder / f"{i:04d}-{Path(r.path).parent.name}-{Path(r.path).stem}.png"
        if not p.exists():
            with Image.open(r.path) as im:
                make_copy(im.convert("RGB"), "copyset", seed=seed * 7919 + i).save(p)
        copies.append(Record(str(p)))
    return copies


def same_photos(listing: str, images: str, items, groups: list[int]) -> int:
    """Merge, in place, the groups of test photos that ``listing`` names as one picture (lines
    "a b", paths under ``images``; # comments); returns how many listed pairs are in the test set."""
    if listing == "none":
        return 0
    where = {str(Path(r.path).resolve()): k for k, r in enumerate(items)}
    merged = 0
    for line in Path(listing).read_text().splitlines():
        line = line.split("#")[0].split()
        if not line:
            continue
        ka, kb = (where.get(str((Path(images) / p).resolve())) for p in line)
        if ka is None or kb is None:
            continue
        old, new = groups[kb], groups[ka]
        groups[:] = [new if g == old else g for g in groups]
        merged += 1
    return merged


def train(train_records, out: Path, epochs: int, batch_size: int, workers: int, extra: list[str]) -> str:
    from zoo.cli.main import main

    data = out / "train"
    data.mkdir(parents=True, exist_ok=True)
    for old in data.iterdir():  # files of an earlier run (another --train): this run's set only
        old.unlink()
    for i, r in enumerate(train_records):  # zoo reads no links out of a folder: hard links (or copies)
        target = data / f"{i:05d}{Path(r.path).suffix}"
        try:
            os.link(r.path, target)
        except OSError:
            shutil.copyfile(r.path, target)
    runs = out / "runs"
    args = ["fit", "--config", str(ROOT / "configs/copydetect/mobilenetv2_shared.yaml"), "--model.weights", FROZEN["weights"],
            "--data.root", str(data), "--data.batch_size", str(batch_size), "--data.num_workers", str(workers),
            "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(runs),
            "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false", *extra]
    t = time.time()
    if main(args) != 0:
        sys.exit("training failed")
    print(f"trained in {time.time() - t:.0f} s", file=sys.stderr)
    newest = max(runs.rglob("checkpoints"), key=lambda p: p.stat().st_mtime)
    best = [p for p in newest.iterdir() if p.name.startswith(("best-", "start"))]
    return str(max(best, key=lambda p: p.stat().st_mtime))


def evaluate(name: str, model, items, groups, thresholds, workers: int) -> dict:
    t = time.time()
    emb = embed(model, items, batch_size=32, num_workers=workers)
    keep = {r.path for r in emb.records}
    g = np.array([gr for r, gr in zip(items, groups) if r.path in keep])
    scores, positive = pair_scores(emb.vectors, g)
    row = {"model": name, "pair_ap": average_precision(scores, positive)}
    for th in thresholds:
        m = at_threshold(scores, positive, th)
        row[f"P@{th}"], row[f"R@{th}"] = m["precision"], m["recall"]
    hit = threshold_for_precision(scores, positive, 0.95)
    row["thr@p95"], row["recall@p95"] = hit["threshold"], hit["recall"]
    row["pairs"] = f"{int(positive.sum())}/{len(positive)}"
    row["_weights"] = model.weights_id
    print(f"{name}: embedded {len(emb.records)} images in {time.time() - t:.0f} s", file=sys.stderr)
    kept = [r for r in items if r.path in keep]
    i, j = np.triu_indices(len(kept), 1)  # pair_scores' order
    worst = np.argsort(-np.where(positive, -np.inf, scores))[:6]  # the highest-scoring non-copies
    row["_curve"], row["_negatives"] = pr_curve(scores, positive), [(kept[i[k]].path, kept[j[k]].path, scores[k]) for k in worst]
    return row


def pictures(rows: list[dict], out: Path) -> None:
    """precision_recall.png (every model) and hardest_negatives.png (the last model's
    highest-scoring pairs that are not copies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        ax.plot(r["_curve"]["recall"], r["_curve"]["precision"], drawstyle="steps-post", label=f"{r['model']}: AP {r['pair_ap']:.3f}")
    ax.axhline(0.95, color="grey", ls=":", lw=1)
    ax.set(xlabel="recall (copy pairs found)", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="copy pairs on unseen photos")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "precision_recall.png", dpi=100)
    plt.close(fig)
    negatives = rows[-1]["_negatives"]
    fig, axes = plt.subplots(2, len(negatives), figsize=(2.2 * len(negatives), 4.6), squeeze=False)
    for c, (a, b, score) in enumerate(negatives):
        for r, path in enumerate((a, b)):
            with Image.open(path) as im:
                axes[r][c].imshow(im.convert("RGB").resize((160, 160)))
            axes[r][c].set_title(f"{score:.3f}\n{Path(path).parent.name}/{Path(path).name}"[:40] if r == 0 else
                                 f"{Path(path).parent.name}/{Path(path).name}"[:40], fontsize=7)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
    fig.suptitle(f"highest-scoring pairs that are not copies: {rows[-1]['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "hardest_negatives.png", dpi=100)
    plt.close(fig)
    print(f"pictures: {out / 'precision_recall.png'}, {out / 'hardest_negatives.png'}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(SHARED / "data" / "food7"))
    ap.add_argument("--train", type=int, default=1150)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint: skip training")
    ap.add_argument("--frozen-only", action="store_true", help="score the frozen models only")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--out", default="copy-detection-results")
    ap.add_argument("--same-photos", default=str(ROOT / "benchmarks" / "food7_same_photos.txt"),
                    help="pairs of photos (paths under --images) that are one picture: counted as copies; 'none': raw labels")
    ap.add_argument("--fit", nargs=argparse.REMAINDER, default=[], help="more `zoo fit` options, e.g. --fit --model.lr 0.003")
    a = ap.parse_args()
    out = Path(a.out)
    train_records, originals, distractors = split(a.images, a.train, a.test, a.seed)
    copies = copy_set(originals, out / "copies", a.seed)
    items = [*originals, *copies, *distractors]
    groups = [*range(len(originals)), *range(len(originals)), *range(len(originals), len(originals) + len(distractors))]
    merged = same_photos(a.same_photos, a.images, items, groups)
    rows = [evaluate("frozen mobilenetv2_100 (avg pool)", zoo.ZooModel(**FROZEN), items, groups, a.thresholds, a.workers),
            evaluate("frozen mobilenetv2_100 (GeM p=3)", zoo.ZooModel(**FROZEN_GEM), items, groups, a.thresholds, a.workers)]
    if not a.frozen_only:
        ckpt = a.checkpoint or train(train_records, out, a.epochs, a.batch_size, a.workers, a.fit)
        rows.append(evaluate(f"trained ({Path(ckpt).name})", zoo.load_model(ckpt), items, groups, a.thresholds, a.workers))

    print(f"copy detection: {a.test} unseen photos + 1 copyset copy each + {a.test} distractors "
          f"(" + (f"checkpoint {a.checkpoint}, " if a.checkpoint else f"train {a.train} photos, {a.epochs} epochs, batch {a.batch_size}, ")
          + f"seed {a.seed}{', ' + ' '.join(a.fit) if a.fit else ''}); "
          + (f"{merged} pairs of test photos that are one picture count as copies ({a.same_photos})" if merged
             else "raw labels: every pair of distinct photos is a non-copy"))
    pictures(rows, out)
    cols = [c for c in rows[0] if not c.startswith("_")]
    print(" | ".join(f"{c:>10}" if c != "model" else f"{c:<36}" for c in cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:<36}" if c == "model" else f"{v:>10.3f}" if isinstance(v, float) else f"{str(v):>10}")
        print(" | ".join(cells))
    for r in rows:
        print(f"# {r['model']}: weights {r['_weights']}")


if __name__ == "__main__":
    main()

"""Near-duplicate detection: precision/recall on transformed copies, and search cost at scale.

    python benchmarks/near_duplicates.py [--images ../shared/data/food7] [--originals 150]
        [--thresholds 0.8 0.9 0.95] [--scale 10000 100000] [--dim 1280]

Part 1 (quality). A seeded sample of ``--originals`` photos each gets six transformed copies
(resize, crop, rotation, JPEG re-encoding, colour jitter, flip). Originals, copies and every
other photo of the folder (same-dish photos are hard negatives) are embedded with the shared
MobileNetV2, and ``zoo.dedup.pairsearch.similar_pairs`` lists the pairs above each threshold.
True pairs are the pairs among one original and its copies. Precision = true pairs found /
pairs found; recall = true pairs found / true pairs; per-transform recall counts the
(original, copy) pairs found. Pairs of two untouched photos of the folder are counted as
false positives but also reported apart: some may be real duplicates in the source set.

Part 2 (scale). Synthetic unit vectors (``--dim``; 1% planted noisy copies) go through the same
search and grouping as ``zoo duplicates``; wall time and peak resident memory are reported.
"""
from __future__ import annotations

import argparse
import io
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

import zoo
from zoo.data.images import Record, load_image, scan_folder
from zoo.dedup.groups import connected_components
from zoo.dedup.pairsearch import similar_pairs
from zoo.embed.runner import embed
from zoo.evaluate.resources import PeakMemory

SHARED = Path(__file__).resolve().parents[2] / "shared"


# ---- the six transformations ----------------------------------------------------------------
def resize(im: Image.Image) -> Image.Image:
    return im.resize((im.width // 2, im.height // 2), Image.BILINEAR)


def crop(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.crop((int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h)))  # keep the centre 80%


def rotate(im: Image.Image) -> Image.Image:
    return im.rotate(10, resample=Image.BILINEAR, expand=False, fillcolor=(0, 0, 0))


def jpeg(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=30)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def colour(im: Image.Image) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(1.25)
    im = ImageEnhance.Contrast(im).enhance(0.8)
    return ImageEnhance.Color(im).enhance(1.4)


def flip(im: Image.Image) -> Image.Image:
    return ImageOps.mirror(im)


TRANSFORMS = {"resize": resize, "crop": crop, "rotation": rotate, "jpeg": jpeg, "colour": colour, "flip": flip}


# ---- part 1 ---------------------------------------------------------------------------------
def quality(images: str, n_originals: int, thresholds: list[float], weights: Path, seed: int, batch_size: int):
    photos = scan_folder(images)
    rng = random.Random(seed)
    originals = sorted(rng.sample(range(len(photos)), n_originals))
    records, group, kind = list(photos), list(range(len(photos))), ["photo"] * len(photos)
    for i in originals:
        im = load_image(photos[i].path)
        for name, fn in TRANSFORMS.items():
            records.append(Record(f"{photos[i].path}#{name}", photos[i].label, image=fn(im)))
            group.append(i)
            kind.append(name)
    model = zoo.ZooModel("timm/mobilenetv2_100", weights=str(weights)).build().eval()
    t = time.perf_counter()
    emb = embed(model, records, batch_size=batch_size, num_workers=0)
    embed_s = time.perf_counter() - t
    kept = {r.path: n for n, r in enumerate(records)}
    order = [kept[r.path] for r in emb.records]
    group = np.array(group)[order]
    kind = np.array(kind)[order]
    # true pairs: within each original's family of 1 + 6 images
    family = len(TRANSFORMS) + 1
    n_true = len(originals) * family * (family - 1) // 2
    rows = []
    for thr in thresholds:
        pairs, _ = similar_pairs(emb.vectors, thr)
        same = group[pairs[:, 0]] == group[pairs[:, 1]]
        both_photos = (kind[pairs[:, 0]] == "photo") & (kind[pairs[:, 1]] == "photo")
        tp = int(same.sum())
        row = {
            "threshold": thr, "pairs": len(pairs), "precision": tp / max(len(pairs), 1), "recall": tp / n_true,
            "fp_photo_photo": int((~same & both_photos).sum()),
        }
        for name in TRANSFORMS:  # (original, copy) pairs found, per transformation
            is_pair = same & (((kind[pairs[:, 0]] == "photo") & (kind[pairs[:, 1]] == name))
                              | ((kind[pairs[:, 1]] == "photo") & (kind[pairs[:, 0]] == name)))
            row[name] = int(is_pair.sum()) / len(originals)
        rows.append(row)
    return rows, len(emb.records), embed_s, model.weights_id


# ---- part 2 ---------------------------------------------------------------------------------
def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    planted = rng.choice(n, size=n // 100, replace=False)
    x[planted[1::2]] = x[planted[::2]] + 0.1 * rng.standard_normal((len(planted[1::2]), dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scale(n: int, dim: int, threshold: float) -> dict:
    x = synthetic(n, dim)
    with PeakMemory() as mem:
        before = mem.peak_rss_mb
        t = time.perf_counter()
        pairs, _ = similar_pairs(x, threshold)
        groups = connected_components(n, pairs)
        seconds = time.perf_counter() - t
    return {"n": n, "dim": dim, "pairs": len(pairs), "groups": len(groups), "seconds": seconds,
            "peak_rss_mb": mem.peak_rss_mb, "added_mb": mem.peak_rss_mb - before, "vectors_mb": x.nbytes / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(SHARED / "data" / "food7"))
    p.add_argument("--weights", default=str(SHARED / "weights" / "mobilenetv2_100_in1k.pth"))
    p.add_argument("--originals", type=int, default=150)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    p.add_argument("--scale", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--scale-threshold", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.originals and Path(args.images).is_dir() and Path(args.weights).is_file():
        rows, n, embed_s, wid = quality(args.images, args.originals, args.thresholds, Path(args.weights),
                                        args.seed, args.batch_size)
        print(f"\nnear duplicates: {args.originals} originals x {len(TRANSFORMS)} copies among {n} images "
              f"({embed_s:.0f} s to embed); weights {wid}")
        names = list(TRANSFORMS)
        print(f"{'thr':>5s} {'pairs':>6s} {'precision':>9s} {'recall':>6s} {'fp photo-photo':>14s} "
              + " ".join(f"{k:>8s}" for k in names))
        for r in rows:
            print(f"{r['threshold']:5.2f} {r['pairs']:6d} {r['precision']:9.3f} {r['recall']:6.3f} "
                  f"{r['fp_photo_photo']:14d} " + " ".join(f"{r[k]:8.3f}" for k in names))
    else:
        print(f"skipping the quality part: {args.images} or {args.weights} is missing")

    if args.scale:
        print(f"\nduplicate search at scale: synthetic unit vectors, threshold {args.scale_threshold}, "
              f"{torch.get_num_threads()} threads")
        print(f"{'N':>8s} {'dim':>5s} {'vectors MB':>10s} {'pairs':>7s} {'groups':>7s} {'seconds':>8s} {'peak RSS MB':>11s} {'search added MB':>15s}")
        for n in args.scale:
            r = scale(n, args.dim, args.scale_threshold)
            print(f"{r['n']:8d} {r['dim']:5d} {r['vectors_mb']:10.0f} {r['pairs']:7d} {r['groups']:7d} "
                  f"{r['seconds']:8.1f} {r['peak_rss_mb']:11.0f} {r['added_mb']:15.0f}")


if __name__ == "__main__":
    main()

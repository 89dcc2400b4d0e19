"""Copy detection on unseen photos: the trained copydetect recipe, the frozen MobileNetV2 it starts
from, and perceptual hashes (imagededup PHash/DHash, PDQ), scored on the same pairs.

    python benchmarks/copy_detection.py [--images ../shared/data/food7] [--originals 300] [--distractors 300]
        [--copies 3] [--calibration-photos 330] [--train N] [--epochs 9] [--checkpoint CKPT] [--frozen-only]
        [--no-peers] [--families F ...] [--libraries 300 1500] [--library-draws 5] [--out copy-detection-results] [--fit ...]

A seeded split of the folder's photos (classes are ignored; ``split``): ``--originals`` unseen
photos, ``--distractors`` other unseen photos and ``--calibration-photos`` more unseen photos
for ``zoo calibrate``, drawn skipping near-identical photos (grey-thumbnail check, and the photos
``--same-photos`` lists as one picture); every other photo not near-identical to those trains
configs/copydetect/mobilenetv2_shared.yaml without
labels (a tenth of them validate). With food7's 1505 photos the defaults leave 383 to
train on: the test library is 300 originals + 3 ``copyset`` copies each (crop to 75-90 %,
rotation up to 15 degrees, JPEG quality 15-35, brightness/colour jitter, mirror, half-size
downscale, three at a time) + 300 distractors = 1,500 files, whose every pair is scored.

Tables (stdout): (1) every model and hash on all pairs of the 1,500 files: pair AP, precision
and recall at fixed thresholds, the threshold reaching precision 0.95 and its recall; (2)
``zoo calibrate`` once on the calibration photos, then ``zoo duplicates --threshold auto`` on
libraries of ``--libraries`` files (the same proportions; benchmarks/copy_library.py): measured
precision and recall beside the expected ones; (3) recall at precision 0.95 per edit family of
zoo.data.copyedits (the originals + the distractors + one copy of each original by that family
alone).
precision_recall.png and hardest_negatives.png (the trained model's highest-scoring pairs that
are not copies) go to ``--out``. ``--checkpoint`` skips training. Extra ``zoo fit`` options
follow ``--fit``. Hash rows need ``pip install -e .[bench]`` (skipped with a note otherwise).
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
from zoo.data.copyedits import FAMILIES
from zoo.metrics.pairs import at_threshold, average_precision, pair_scores, pr_curve, threshold_for_precision

from copy_library import library_table  # noqa: E402  (benchmarks/, beside this script)
from copy_peers import hash_all, hash_pair_scores, hashers  # noqa: E402
from one_picture import listed_pictures, same_photos  # noqa: E402

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
          near: float = 0.95, listing: str | None = None):
    """Seeded originals / distractors / calibration photos / training photos. Photo folders hold
    near-identical photos (burst shots, video frames a few pixels apart); a pair of them would
    count as a false positive of every model, and one in training would leak a test photo. So
    the unseen photos (originals, then distractors, then the calibration pool) are drawn first,
    skipping any whose grey 32 x 32 thumbnail correlates at >= ``near`` with one already drawn at
    any shift up to 4 px, and training takes the first ``n_train`` (None: all) of the rest that
    are not near-identical to an unseen photo. The unseen sets do not depend on ``n_train``.
    ``listing`` (food7_same_photos.txt) names photos that are one picture beyond what the
    thumbnail check sees (other crops and zooms, consecutive video frames): a photo of a picture
    already drawn is skipped too, and no photo of an unseen picture trains."""
    records = sorted(scan_folder(images), key=lambda r: r.path)
    random.Random(seed).shuffle(records)
    thumbs = thumbnails(records)  # (N, 32, 32)
    centres = _unit(thumbs[:, 4:28, 4:28])  # (N, 576)

    picture = listed_pictures(listing, images)
    picture_of = [picture.get(str(Path(r.path).resolve())) for r in records]

    def near_any(i: int, drawn: list[int]) -> bool:
        if picture_of[i] is not None and picture_of[i] in {picture_of[k] for k in drawn}:
            return True
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


def copy_set(originals, folder: Path, seed: int, spec="copyset", copies: int = 1, others=()):
    """``copies`` seeded edited copies of each original (PNG files under ``folder``, reused when
    there): (copy records, index of each copy's original). ``others``: records an ``overlay``
    edit may paste a photo onto (training photos: no test photo shows up twice)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    backgrounds = None
    out, of = [], []
    for i, r in enumerate(originals):
        for c in range(copies):
            p = folder / f"{i:04d}-{c}-{Path(r.path).parent.name}-{Path(r.path).stem}.png"
            if not p.exists():
                if backgrounds is None:
                    backgrounds = [Image.open(o.path).convert("RGB") for o in list(others)[:8]]
                with Image.open(r.path) as im:
                    make_copy(im.convert("RGB"), spec, seed=seed * 7919 + i * 31 + c,
                              others=backgrounds[i % max(len(backgrounds), 1):][:1]).save(p)
            out.append(Record(str(p)))
            of.append(i)
    return out, of


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


def embed_items(model, items, workers: int):
    """(vectors, kept records): the records the model could read, in order."""
    emb = embed(model, items, batch_size=32, num_workers=workers)
    return emb.vectors, emb.records


def score_row(name: str, scores, positive, thresholds, items=None) -> dict:
    """Pair AP, precision/recall at fixed thresholds, the threshold reaching precision 0.95
    with its recall; with ``items``, the six highest-scoring non-copy pairs."""
    row = {"model": name, "pair_ap": average_precision(scores, positive)}
    for th in thresholds:
        m = at_threshold(scores, positive, th)
        row[f"P@{th}"], row[f"R@{th}"] = m["precision"], m["recall"]
    hit = threshold_for_precision(scores, positive, 0.95)
    row["thr@p95"], row["recall@p95"] = hit["threshold"], hit["recall"]
    row["pairs"] = f"{int(positive.sum())}/{len(positive)}"
    row["_curve"] = pr_curve(scores, positive)
    if items is not None:
        i, j = np.triu_indices(len(items), 1)  # pair_scores' order
        worst = np.argsort(-np.where(positive, -np.inf, scores))[:6]
        row["_negatives"] = [(items[i[k]].path, items[j[k]].path, scores[k]) for k in worst]
    return row


def evaluate(name: str, model, items, groups, thresholds, workers: int) -> tuple[dict, dict]:
    """The model's row on (items, groups), and its vectors by path (for the other tables)."""
    t = time.time()
    vectors, kept = embed_items(model, items, workers)
    group_of = {r.path: g for r, g in zip(items, groups)}
    scores, positive = pair_scores(vectors, np.array([group_of[r.path] for r in kept]))
    row = score_row(name, scores, positive, thresholds, kept)
    row["_weights"] = model.weights_id
    print(f"{name}: embedded {len(kept)} images in {time.time() - t:.0f} s", file=sys.stderr)
    return row, dict(zip((r.path for r in kept), vectors))


def print_table(rows: list[dict], title: str) -> None:
    print(title)
    cols = [c for c in rows[0] if not c.startswith("_")]
    print(" | ".join(f"{c:>10}" if c != "model" else f"{c:<36}" for c in cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:<36}" if c == "model" else f"{v:>10.3f}" if isinstance(v, float) else f"{str(v):>10}")
        print(" | ".join(cells))


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
    shown = [r for r in rows if "_negatives" in r][-1]
    negatives = shown["_negatives"]
    fig, axes = plt.subplots(2, len(negatives), figsize=(2.2 * len(negatives), 4.6), squeeze=False)
    for c, (a, b, score) in enumerate(negatives):
        for r, path in enumerate((a, b)):
            with Image.open(path) as im:
                axes[r][c].imshow(im.convert("RGB").resize((160, 160)))
            axes[r][c].set_title(f"{score:.3f}\n{Path(path).parent.name}/{Path(path).name}"[:40] if r == 0 else
                                 f"{Path(path).parent.name}/{Path(path).name}"[:40], fontsize=7)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
    fig.suptitle(f"highest-scoring pairs that are not copies: {shown['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "hardest_negatives.png", dpi=100)
    plt.close(fig)
    print(f"pictures: {out / 'precision_recall.png'}, {out / 'hardest_negatives.png'}", file=sys.stderr)


def family_table(families, originals, distractors, train_records, out: Path, seed: int, models, vectors, peers,
                 hash_cache, workers: int, images: str, listing: str, which: str = "all") -> None:
    """Recall at precision 0.95 per edit family: for each family, the originals, the distractors
    and one copy of each original made by that family alone; every pair scored. Models: the
    frozen GeM start and the trained model (the originals' and distractors' vectors reused),
    and the hash peers."""
    names = [n for n, _ in models if "avg pool" not in n and (which == "all" or n.startswith("trained"))]
    table = []
    for family in families:
        t = time.time()
        fcopies, fof = copy_set(originals, out / "families" / family, seed, spec=family, others=train_records)
        items = [*originals, *distractors, *fcopies]
        groups = [*range(len(originals)), *range(len(originals), len(originals) + len(distractors)), *fof]
        same_photos(listing, images, items, groups)
        row = {"family": family}
        for name in names:
            model = dict(models)[name]()
            vecs, kept = embed_items(model, fcopies, workers)
            have = {**vectors[name], **dict(zip((r.path for r in kept), vecs))}
            keep = [k for k, r in enumerate(items) if r.path in have]
            scores, positive = pair_scores(np.stack([have[items[k].path] for k in keep]), np.array([groups[k] for k in keep]))
            row[name] = threshold_for_precision(scores, positive, 0.95)["recall"]
        for name, fn in peers.items():
            scores, positive = hash_pair_scores(hash_all(fn, [r.path for r in items], hash_cache.setdefault(name, {})), groups)
            row[name] = threshold_for_precision(scores, positive, 0.95)["recall"]
        table.append(row)
        print(f"family {family}: {time.time() - t:.0f} s", file=sys.stderr)
    cols = [c for c in table[0] if c != "family"]
    print(f"\nrecall at precision 0.95 per edit family ({len(originals)} unseen photos + one copy each by that family "
          f"alone + {len(distractors)} distractors; every pair scored)")
    print("| family | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in table:
        print(f"| {r['family']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(SHARED / "data" / "food7"))
    ap.add_argument("--train", type=int, default=None, help="training photos (default: all beside the unseen ones)")
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--distractors", type=int, default=300)
    ap.add_argument("--copies", type=int, default=3, help="copyset copies of each original in the test library")
    ap.add_argument("--calibration-photos", type=int, default=330,
                    help="unseen photos `zoo calibrate` samples, all of them (it asks for 327 to measure the "
                         "false-match rate a 1,500-file library needs)")
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint: skip training")
    ap.add_argument("--frozen-only", action="store_true", help="score the frozen models only")
    ap.add_argument("--family-models", choices=["trained", "all"], default="all",
                    help="models of the per-family table: the trained one, or also the frozen GeM start")
    ap.add_argument("--no-peers", action="store_true", help="no perceptual-hash rows")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), help="edit families of the per-family table ('' : none)")
    ap.add_argument("--libraries", type=int, nargs="*", default=[300, 1500], help="library sizes for --threshold auto")
    ap.add_argument("--library-draws", type=int, default=5,
                    help="disjoint libraries of each smaller size, as many as the photos allow (the spread of precision)")
    ap.add_argument("--precision", type=float, default=0.95)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--out", default="copy-detection-results")
    ap.add_argument("--same-photos", default=str(ROOT / "benchmarks" / "food7_same_photos.txt"),
                    help="pairs of photos (paths under --images) that are one picture: counted as copies; 'none': raw labels")
    ap.add_argument("--fit", nargs=argparse.REMAINDER, default=[], help="more `zoo fit` options, e.g. --fit --model.lr 0.003")
    a = ap.parse_args()
    out = Path(a.out)
    train_records, originals, distractors, calibration = split(a.images, a.train, a.originals, a.distractors, a.seed,
                                                               a.calibration_photos, listing=a.same_photos)
    copies, copy_of = copy_set(originals, out / "copies", a.seed, copies=a.copies)
    items = [*originals, *copies, *distractors]
    groups = [*range(len(originals)), *copy_of, *range(len(originals), len(originals) + len(distractors))]
    merged = same_photos(a.same_photos, a.images, items, groups)
    models = [("frozen mobilenetv2_100 (avg pool)", lambda: zoo.ZooModel(**FROZEN)),
              ("frozen mobilenetv2_100 (GeM p=3)", lambda: zoo.ZooModel(**FROZEN_GEM))]
    ckpt = None
    if not a.frozen_only:
        ckpt = a.checkpoint or train(train_records, out, a.epochs, a.batch_size, a.workers, a.fit)
        models.append((f"trained ({Path(ckpt).name})", lambda: zoo.load_model(ckpt)))
    rows, vectors = [], {}
    for name, make in models:
        row, vectors[name] = evaluate(name, make(), items, groups, a.thresholds, a.workers)
        rows.append(row)
    peers = {} if a.no_peers else hashers()
    hash_cache: dict = {}
    for name, fn in peers.items():
        t = time.time()
        scores, positive = hash_pair_scores(hash_all(fn, [r.path for r in items], hash_cache.setdefault(name, {})), groups)
        rows.insert(len(rows) - (0 if a.frozen_only else 1), score_row(name, scores, positive, a.thresholds))
        print(f"{name}: hashed {len(items)} images in {time.time() - t:.0f} s", file=sys.stderr)

    print(f"copy detection: {len(originals)} unseen photos + {a.copies} copyset copies each + {len(distractors)} "
          f"distractors = {len(items)} files (" + (f"checkpoint {a.checkpoint}, " if a.checkpoint else
                                                   f"train {len(train_records)} photos, {a.epochs} epochs, batch {a.batch_size}, ")
          + f"seed {a.seed}{', ' + ' '.join(a.fit) if a.fit else ''}); "
          + (f"{merged} pairs of test photos that are one picture count as copies ({a.same_photos})" if merged
             else "raw labels: every pair of distinct photos is a non-copy"))
    out.mkdir(parents=True, exist_ok=True)
    pictures(rows, out)
    print_table(rows, "all pairs of the library: pair AP, precision/recall at fixed thresholds, recall at precision 0.95")
    for r in rows:
        if "_weights" in r:
            print(f"# {r['model']}: weights {r['_weights']}")
    if ckpt is not None and a.libraries:
        library_table(ckpt, a.libraries, originals, copies, copy_of, distractors, calibration, groups, a.images,
                      a.same_photos, out, a.precision, a.workers, vectors[models[-1][0]], a.copies,
                      sample=len(calibration), draws=a.library_draws)
    families = [f for f in a.families if f]
    if families:
        family_table(families, originals, distractors, train_records, out, a.seed, models, vectors, peers, hash_cache,
                     a.workers, a.images, a.same_photos, a.family_models)


if __name__ == "__main__":
    main()

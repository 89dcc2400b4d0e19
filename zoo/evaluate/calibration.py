"""``zoo calibrate``: the similarity threshold at which a model's copy decisions reach a target
precision, measured on the user's own photos.

A seeded sample of the folder's images gets edited copies (the ``copyset`` edits of
zoo.augment by default: three of crop, rotation, JPEG, colour, mirror, downscale); the model
embeds originals and copies, and every pair of them is scored: (image, its copy) pairs are
positives, all pairs of different images negatives. The lowest threshold with precision >=
the target on the sample (the highest recall there) is written to a calibration file, keyed by
the model's identity (architecture + weights id), with the model's per-pair false-match rate
(zoo.metrics.falsematch: the highest non-copy scores, a tail model, the copy-pair scores) from
which ``zoo duplicates --threshold auto`` chooses the threshold for the size of the library it
runs on (zoo.dedup.autothreshold). ``zoo calibrate`` also says how many photos a sample needs to
measure the false-match rate a library of ``library_size`` photos needs.
Thresholds are per model: a similarity means nothing across models.

File format (JSON; version 1 entries lack "size_aware" and give one fixed threshold)::

    {"version": 2, "models": {"<architecture> | <weights id>": {"threshold": 0.83, "precision": ...,
     "recall": ..., "precision_target": 0.95, "images": 200, "copies": 1, "edits": "copyset", ...,
     "size_aware": {"negative_pairs": 79600, "top_negatives": [...], "tail": {...}, "positives": [...]}}}}
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from zoo.data.augment import make_copy, resolve_spec
from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import Record, load_image, scan_folder
from zoo.embed.runner import embed
from zoo.errors import ZooError
from zoo.index.core import load_index
from zoo.io import (
    atomic_path,
    file_lock,
    read_json,
    refuse_overwrite,
    write_json,
)
from zoo.dedup.autothreshold import AutoThreshold
from zoo.metrics.falsematch import FalseMatchRate, photos_needed, required_rate
from zoo.metrics.pairs import pair_scores, pr_curve, threshold_for_precision

DEFAULT_FILE = "zoo-calibration.json"


def model_key(architecture: str, weights: str) -> str:
    return f"{architecture} | {weights}"


def read_calibration(path: str | Path) -> dict:
    """The calibration file at ``path`` (empty if there is none); every model entry is an object."""
    path = Path(path)
    if not path.exists():
        return {"version": 2, "models": {}}
    data = read_json(path, "a zoo calibration file")
    try:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ValueError("no 'models' object")
        bad = next((k for k, v in data["models"].items() if not isinstance(v, dict)), None)
        if bad is not None:
            raise ValueError(f"the entry of {bad[:80]!r} is not an object")
    except ValueError as e:
        raise ZooError(f"{path} is not a zoo calibration file ({str(e)[:200]})") from None
    return data


def lookup_threshold(path: str | Path, architecture: str, weights: str) -> float:
    """The calibrated threshold of this model, or a ZooError telling how to make one."""
    entry = read_calibration(path)["models"].get(model_key(architecture, weights), {})
    return entry_threshold(entry, path, architecture, weights)


def entry_threshold(entry: dict, path: str | Path, architecture: str, weights: str) -> float:
    """The threshold of a model's calibration ``entry`` (read from ``path``), or a ZooError
    telling how to make one."""
    threshold = entry.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        where = f"in {path}" if Path(path).exists() else f"({path} does not exist)"
        raise ZooError(f"--threshold auto: no calibration for {architecture} (weights: {weights}) {where}; "
                       f"run `zoo calibrate --images DIR` with the same model first (or pass --calibration FILE)")
    return float(threshold)


def damaged_entry(path: str | Path, key: str, reason: Exception | str) -> ZooError:
    """The one-line error of a calibration entry that cannot be used as it is."""
    return ZooError(f"{path}: the entry of {key[:80]} is damaged ({str(reason)[:120]}); rerun `zoo calibrate --overwrite`")


def size_aware_rate(entry: dict, path: str | Path, key: str) -> FalseMatchRate:
    """The per-pair false-match rate of a size-aware (version 2) ``entry``; a damaged one is a ZooError."""
    try:
        return FalseMatchRate.from_json(entry["size_aware"])
    except (ValueError, TypeError) as e:
        raise damaged_entry(path, key, e) from None


def save_entry(path: str | Path, key: str, entry: dict, overwrite: bool) -> None:
    """Merge one model's entry into the file atomically; another model's entries are kept,
    this model's is replaced only with ``overwrite``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):  # one merge at a time
        data = read_calibration(path)
        if key in data["models"] and not overwrite:
            raise ZooError(f"{path} already holds a calibration for {key}; pass --overwrite to replace it")
        data["models"][key] = entry
        data["version"] = max(2, data.get("version", 1) if isinstance(data.get("version"), int) else 2)
        write_json(path, data)


def pr_plot(curve: dict, chosen: dict, target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(curve["recall"], curve["precision"], drawstyle="steps-post")
    ax1.axhline(target, color="grey", ls=":", lw=1)
    if chosen["threshold"] is not None:
        ax1.plot([chosen["recall"]], [chosen["precision"]], "o", color="C3",
                 label=f"threshold {chosen['threshold']:.3f}: recall {chosen['recall']:.2f}")
        ax1.legend(loc="lower left")
    ax1.set(xlabel="recall (copy pairs found)", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax2.plot(curve["threshold"], curve["precision"], label="precision")
    ax2.plot(curve["threshold"], curve["recall"], label="recall")
    if chosen["threshold"] is not None:
        ax2.axvline(chosen["threshold"], color="C3", ls="--", lw=1)
    ax2.set(xlabel="cosine similarity threshold", ylim=(0, 1.02))
    ax2.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def synthetic_copies(records, edits: Any, copies: int, seed: int, folder: Path) -> tuple[list, list[int]]:
    """``copies`` seeded edited copies of each record, saved as PNG under ``folder``:
    (copy records, group = index of the original)."""
    out, groups = [], []
    for i, r in enumerate(records):
        try:
            image = load_image(r.path, draft_size=1024)  # big JPEGs decode at a reduced size
        except (ValueError, OSError) as e:  # unusable: the model run reports and skips it too
            print(f"zoo: warning: cannot read {r.path} ({e}); no copy of it", file=sys.stderr)
            continue
        for c in range(copies):
            copy = make_copy(image, edits, seed=seed * 1_000_003 + i * 101 + c)
            p = folder / f"{i:06d}_{c}.png"
            copy.save(p)
            out.append(Record(str(p), None))
            groups.append(i)
    return out, groups


def run_calibrate(model, images: str, sample: int = 200, precision: float = 0.95, edits: Any = "copyset",
                  copies: int = 1, calibration: str = DEFAULT_FILE, plot: Optional[str] = None, seed: int = 0,
                  overwrite: bool = False, trainer=None, batch_size: int = BATCH_SIZE, num_workers: int = NUM_WORKERS,
                  library_size: Optional[int] = None, library_copy_pairs: Optional[int] = None) -> dict:
    if not 0.0 < precision < 1.0:
        raise ZooError(f"--precision {precision}: a target precision in (0, 1) is expected")
    if sample < 2 or copies < 1:
        raise ZooError(f"--sample {sample} --copies {copies}: at least 2 images and 1 copy each are needed")
    if (library_size is not None and library_size < 2) or (library_copy_pairs is not None and library_copy_pairs < 1):
        raise ZooError(f"--library_size {library_size} --library_copy_pairs {library_copy_pairs}: "
                       f"at least 2 photos and 1 copy pair are expected")
    resolve_spec(edits)
    model = model.build()
    key = model_key(model.architecture, model.weights_id)
    cal_path = Path(calibration)
    if cal_path.exists() and key in read_calibration(cal_path)["models"] and not overwrite:
        raise ZooError(f"{cal_path} already holds a calibration for {key}; pass --overwrite to replace it")
    plot_path = Path(plot) if plot else cal_path.with_name(
        f"{cal_path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.png")
    refuse_overwrite(plot_path, overwrite)

    records = scan_folder(images)
    chosen_records = random.Random(seed).sample(records, min(sample, len(records)))
    with tempfile.TemporaryDirectory(prefix="zoo-calibrate-") as tmp:
        copy_records, copy_groups = synthetic_copies(chosen_records, edits, copies, seed, Path(tmp))
        emb = embed(model, [*chosen_records, *copy_records], trainer=trainer, batch_size=batch_size,
                    num_workers=num_workers)
    group_of = {r.path: i for i, r in enumerate(chosen_records)}
    group_of.update({r.path: g for r, g in zip(copy_records, copy_groups)})
    groups = np.array([group_of[r.path] for r in emb.records])
    if len(set(groups.tolist())) < 2 or len(groups) == len(set(groups.tolist())):
        raise ZooError(f"{images}: too few usable images to calibrate (need 2 or more)")
    scores, positive = pair_scores(emb.vectors, groups)
    curve = pr_curve(scores, positive)
    chosen = threshold_for_precision(scores, positive, precision)
    title = f"{model.architecture} ({model.weights_id}) on {len(set(groups.tolist()))} images of {images}"
    pr_plot(curve, chosen, precision, plot_path, title)
    n_pos = int(positive.sum())
    rate = FalseMatchRate.measure(scores, positive)
    if chosen["threshold"] is None:
        raise ZooError(f"no threshold reaches precision {precision} with {key} on these copies "
                       f"(best precision {curve['precision'].max():.3f}); see {plot_path}")
    entry = {
        "architecture": model.architecture, "weights": model.weights_id, "threshold": chosen["threshold"],
        "precision_target": precision, "precision": chosen["precision"], "recall": chosen["recall"],
        "positive_pairs": n_pos, "negative_pairs": int(len(positive) - n_pos),
        "images": len(set(groups.tolist())), "copies": copies, "edits": edits, "seed": seed, "source": str(images),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "plot": str(plot_path),
        "size_aware": rate.to_json(),
    }
    save_entry(cal_path, key, entry, overwrite)
    print(f"threshold {chosen['threshold']:.4f}: precision {chosen['precision']:.4f} (target {precision}), "
          f"recall {chosen['recall']:.4f} of {n_pos} copy pairs, {chosen['fp']} false pair(s) among "
          f"{len(positive) - n_pos} -> {cal_path} [{key}]")
    print(sample_advice(rate, precision, library_size or len(records), library_copy_pairs, entry["images"], copies))
    print(f"zoo: precision/recall curve -> {plot_path}", file=sys.stderr)
    return entry


def sample_advice(rate: FalseMatchRate, precision: float, library: int, copy_pairs: Optional[int], photos: int,
                  copies: int) -> str:
    """What a library of ``library`` photos (``copy_pairs`` copy pairs; default one per ten
    photos) needs: the false-match rate per pair for ``precision``, and the sample size that
    measures it (EMPIRICAL_MIN non-copy pairs above it) rather than leaving it to the tail model."""
    copy_pairs = copy_pairs or max(1, library // 10)
    fit = rate.tail
    tail = (f"tail model: {fit['model']} xi {fit['xi']:.3f} sigma {fit['sigma']:.4f} over the {fit['k']} highest non-copy "
            f"scores above {fit['u']:.4f} (KS p {fit['ks_pvalue']:.2f})") if fit else "no tail model (too few pairs)"
    need = required_rate(rate, library, copy_pairs, precision)
    if need is None:
        return (f"a library of {library} photos with {copy_pairs} copy pairs: no threshold reaches precision {precision} "
                f"with this model ({tail})")
    fpr = need["false_match_rate"]
    n = photos_needed(fpr, copies)
    measured = "measured by this sample" if n <= photos else f"this sample's {photos} photos leave it to the {tail.split(':')[0]}"
    return (f"a library of {library} photos with {copy_pairs} copy pairs: precision {precision} needs a false-match rate "
            f"<= {fpr:.2e} per pair (threshold about {need['threshold']:.4f}, recall about {need['recall']:.2f}); "
            f"measuring it takes --sample {n} photos with --copies {copies} ({measured}); {tail}")


def auto_threshold(calibration: str | Path, model=None, index: Optional[str] = None,
                   precision: Optional[float] = None) -> tuple[float, Optional[AutoThreshold]]:
    """``--threshold auto``: (the fixed threshold calibrated on the sample, the size-aware
    calibration or None for a version 1 entry, which gets a note). ``precision``: another
    target than the calibrated one."""
    if precision is not None and not 0.0 < precision < 1.0:
        raise ZooError(f"--precision {precision}: a target precision in (0, 1) is expected")
    architecture, weights = _identity(model, index)
    key = model_key(architecture, weights)
    entry = read_calibration(calibration)["models"].get(key, {})
    threshold = entry_threshold(entry, calibration, architecture, weights)
    if "size_aware" not in entry:
        print(f"zoo: --threshold auto: {threshold:.4f} (calibrated for {architecture}, {calibration})", file=sys.stderr)
        print(f"zoo: note: the calibration of {architecture} in {calibration} is version 1 (one threshold, measured on "
              f"{entry.get('images', '?')} photos): it does not adapt to this library's size, so precision falls as the "
              f"library grows; rerun `zoo calibrate --overwrite` for a size-aware one", file=sys.stderr)
        if precision is not None:
            raise ZooError(f"--precision {precision}: the version 1 calibration in {calibration} holds one threshold "
                           f"for precision {entry.get('precision_target')}; rerun `zoo calibrate --overwrite`")
        return threshold, None
    rate = size_aware_rate(entry, calibration, key)
    target = precision if precision is not None else entry.get("precision_target")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ZooError(f"{calibration}: the entry of {key[:80]} has no precision target in (0, 1); pass --precision")
    copies = entry.get("copies") if isinstance(entry.get("copies"), int) and entry.get("copies") > 0 else 1
    return threshold, AutoThreshold(rate, float(target), f"{calibration} [{key}]", copies)


def _identity(model=None, index: Optional[str] = None) -> tuple[str, str]:
    if index is not None:
        meta = load_index(index).meta["model"]
        return meta["architecture"], meta["weights"]
    model = model.build()
    return model.architecture, model.weights_id

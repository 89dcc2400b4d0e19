"""The upload check: is this image a copy of an indexed one (e.g. a placeholder), or new?

One query is compared with every item of an index of N items, so it meets N unrelated items
where a library's pair search meets N (N - 1) / 2 pairs. With the model's per-pair false-match
rate FPR(t) from its size-aware calibration (zoo.metrics.falsematch, measured by
``zoo calibrate``), a new upload is called a copy by chance with probability about
min(1, FPR(t) N), and an edited copy is found with the calibration's copy-pair recall R(t). If
an upload is as likely a copy as new, a "copy" verdict at threshold t is right with

    precision(t) = R(t) / (R(t) + min(1, FPR(t) N))

The threshold is the lowest calibration score (where FPR is measured or trusted: not below
the calibration's resolution) whose precision reaches the calibrated target; the precision
there is the verdict's expected precision. A version 1 calibration (one threshold) gives its
threshold and the precision measured on its sample, not adjusted to N (the answer says so).

:func:`load_check` reads the calibration of an index's model (a ZooError says why there is
none); :func:`verdict` turns a nearest item and its cosine into the answer; :func:`run_check`
is ``zoo check`` (against an index, or a folder of known images embedded on the spot). ``zoo serve`` answers ``POST /api/check`` with the same functions.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zoo.data.images import records_from, scan_folder
from zoo.dedup.compare import cosine_matrix, similarity_score
from zoo.embed.runner import embed, require_some
from zoo.errors import ZooError
from zoo.evaluate.calibration import damaged_entry, entry_threshold, model_key, read_calibration, size_aware_rate
from zoo.index.core import load_index
from zoo.metrics.falsematch import FalseMatchRate

PRIOR = "an upload is as likely a copy as new"


@dataclass
class CopyCheck:
    """The threshold of a copy verdict against an index of ``n_items`` and what it is worth."""

    threshold: float
    n_items: int
    precision_target: Optional[float]
    expected_precision: Optional[float]  # of a "copy" verdict at ``threshold`` (None: unknown)
    false_match_chance: Optional[float]  # chance that a new upload is called a copy, min(1, FPR(t) N)
    recall: Optional[float]  # share of the calibration's edited copies scoring >= threshold
    estimate: str  # how it was estimated, in words
    source: str  # calibration file [model key]

    def to_json(self) -> dict:
        r = (lambda x: None if x is None or not np.isfinite(x) else round(float(x), 6))
        return {"calibrated": True, "threshold": round(self.threshold, 6), "index_items": self.n_items,
                "precision_target": self.precision_target, "expected_precision": r(self.expected_precision),
                "false_match_chance": r(self.false_match_chance), "recall": r(self.recall),
                "estimate": self.estimate, "calibration": self.source}


def size_aware(rate: FalseMatchRate, n_items: int, target: float) -> tuple[float, float, float, float, bool]:
    """(threshold, expected precision, false-match chance, recall, target reached) of a copy
    verdict for one query against ``n_items`` items, by the module's formula."""
    grid = np.unique(np.r_[rate.top, rate.positives])  # ascending
    if not len(grid):
        raise ValueError("the calibration holds no scores")
    fpr = rate(grid)
    trusted = fpr >= rate.resolution  # where the tail model is not extrapolated too far
    trusted[0] = True  # at least one candidate: the lowest score
    chance = np.minimum(1.0, fpr * n_items)
    recall = np.array([rate.recall(t) for t in grid])
    recall = np.where(np.isfinite(recall), recall, 1.0)  # no copy pairs kept: the best case
    precision = np.where(recall + chance > 0, recall / np.maximum(recall + chance, 1e-300), 0.0)
    ok = np.nonzero(trusted & (precision >= target))[0]
    reached = bool(len(ok))
    i = int(ok[0]) if reached else int(np.argmax(np.where(trusted, precision, -1.0)))
    return float(grid[i]), float(precision[i]), float(chance[i]), float(recall[i]), reached


def load_check(calibration: str | Path, architecture: str, weights: str, n_items: int) -> CopyCheck:
    """The copy check of this model against an index of ``n_items`` items from its entry in
    ``calibration``; a one-line ZooError when there is none or it is damaged."""
    key = model_key(architecture, weights)
    entry = read_calibration(calibration)["models"].get(key)
    if entry is None:
        where = f"in {calibration}" if Path(calibration).exists() else f"({calibration} does not exist)"
        raise ZooError(f"no calibration for {architecture} (weights: {weights}) {where}: the copy check needs one; run "
                       f"`zoo calibrate --images DIR` with the index's model first (or pass --calibration FILE)")
    threshold = entry_threshold(entry, calibration, architecture, weights)  # ZooError: no usable threshold
    source = f"{calibration} [{key}]"
    target = entry.get("precision_target")
    target = float(target) if isinstance(target, (int, float)) and not isinstance(target, bool) \
        and 0.0 < target < 1.0 else None
    if "size_aware" not in entry:
        p = entry.get("precision")
        p = float(p) if isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0 else None
        return CopyCheck(threshold, n_items, target, p, None, None,
                         f"version 1 calibration: one threshold, pair precision {p} measured on its sample of "
                         f"{entry.get('images', '?')} photos, not adjusted to this index's {n_items} items; rerun "
                         f"`zoo calibrate --overwrite` for a size-aware one", source)
    rate = size_aware_rate(entry, calibration, key)
    try:
        if target is None:
            raise ValueError("no precision target in (0, 1)")
        t, p, chance, recall, reached = size_aware(rate, n_items, target)
    except (ValueError, TypeError) as e:
        raise damaged_entry(calibration, key, e) from None
    how = (f"one query meets {n_items} items: false-match chance min(1, FPR(t) x {n_items}) = {chance:.2e} with "
           f"FPR({t:.4f}) {rate.method(t)}; recall {recall:.3f} of the calibration's edited copies; precision "
           f"R / (R + chance) if {PRIOR}")
    if not reached:
        how += f"; the target {target} is not reached at this index's size (best {p:.3f}): recalibrate with more photos"
    return CopyCheck(t, n_items, target, p, chance, recall, how, source)


def verdict(check: Optional[CopyCheck], nearest: Optional[dict], cosine: Optional[float],
            reason: str = "") -> dict:
    """The answer for one upload whose nearest indexed item is ``nearest`` at ``cosine``:
    "copy" or "new" with the threshold and its expected precision, or, without a calibration
    (``check`` None; ``reason`` says why), "calibrated": false and no verdict."""
    near = {"nearest": nearest, "cosine": None if cosine is None else round(float(cosine), 6),
            "score": None if cosine is None else round(float(similarity_score(cosine)), 6)}
    if check is None:
        return {"calibrated": False, "verdict": None, **near, "note": reason or "no calibration for this model"}
    copy = cosine is not None and cosine >= check.threshold
    return {**check.to_json(), "verdict": "copy" if copy else "new", **near}


def describe(name: str, answer: dict) -> str:
    """One line for ``zoo check``'s table."""
    near, cos = answer["nearest"], answer["cosine"]
    where = near["path"] if near else "nothing"
    p = answer["expected_precision"]
    p = "unknown" if p is None else f"{p:.3f}"
    if answer["verdict"] == "copy":
        return (f"{name}: copy of {where} (cosine {cos:.4f} >= threshold {answer['threshold']:.4f}; expected precision "
                f"{p} among {answer['index_items']} items)")
    shown = "" if cos is None else f"; nearest {where} at cosine {cos:.4f}"
    return f"{name}: new (below threshold {answer['threshold']:.4f}{shown}; a copy verdict there has expected precision {p})"


def folder_nearest(model, known: Sequence, query: Sequence[str], name: str, trainer=None,
                   **loader) -> tuple[int, list]:
    """Known images (records of folder ``name``), embedded now with ``model``: (number of known
    images that decoded, [(query path, nearest {"id", "path", "label"}, cosine)]). ``loader``:
    batch_size, num_workers."""
    known = embed(model, known, trainer=trainer, **loader)
    require_some(known, name)
    queries = embed(model, records_from(list(query)), trainer=trainer, **loader)
    require_some(queries, "the query")
    sims = cosine_matrix(queries.vectors, known.vectors, dtype=np.float64)  # (Q, N)
    best = sims.argmax(axis=1)
    return len(known.records), [(r.path, {"id": int(j), "path": known.records[j].path, "label": known.records[j].label},
                                 float(sims[i, j])) for i, (r, j) in enumerate(zip(queries.records, best))]


def run_check(index: Optional[str], query: Sequence[str], calibration: str = "zoo-calibration.json",
              as_json: bool = False, trainer=None, images: Optional[str] = None, model=None, **loader) -> list[dict]:
    """``zoo check``: each query's verdict against ``index`` (or the known images of folder
    ``images``, embedded with ``model``) on stdout: a line each, or JSON; how the precision was
    estimated goes to stderr. A ZooError when the model has no calibration (checked before
    anything is embedded). ``loader``: batch_size, num_workers of the folder's embedding."""
    if images is not None and index is not None:
        raise ZooError("--index and --images exclude each other: check against an index or a folder of known images")
    if images is None:
        idx = load_index(index or "zoo.index")
        m = idx.meta["model"]
        n_items = len(idx)
        check = load_check(calibration, m["architecture"], m["weights"], n_items)
        found = []
        for q, hits in idx.search_many(query, k=1, trainer=trainer, hubness=False):  # nearest by cosine
            h = hits[0] if hits else None
            near = None if h is None else {"id": h.id, "path": h.path, "label": h.label, "frame": h.frame}
            found.append((q, near, None if h is None else h.similarity))
    else:
        model = model.build()
        known = scan_folder(images)  # listed once: its size sizes the check, then it is embedded
        check = load_check(calibration, model.architecture, model.weights_id, len(known))
        n_items, found = folder_nearest(model, known, query, images, trainer, **loader)
        if n_items != len(known):  # some known images did not decode: the size it holds
            check = load_check(calibration, model.architecture, model.weights_id, n_items)
    answers = [{"query": str(q), **verdict(check, near, cos)} for q, near, cos in found]
    print(f"zoo: check: threshold {check.threshold:.4f} for {n_items} items ({check.source}); {check.estimate}",
          file=sys.stderr)
    if as_json:
        print(json.dumps(answers, indent=2))
    else:
        for a in answers:
            print(describe(a["query"], a))
    return answers

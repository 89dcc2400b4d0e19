"""Choosing an inverted file's nprobe for a recall target by a quick calibration on a sample.

Sampled stored vectors are searched with a generous nprobe (the reference) and then with
growing ones; the smallest whose recall@k against the reference reaches the target becomes the
index's default (meta.json "search"), and the measurement is recorded (meta.json
"calibration"). A few hundred queries take seconds even at 10M vectors. The reference is not
exact search (that would read every vector): it measures what probing fewer lists loses.
"""
from __future__ import annotations

from typing import Callable, Optional

import faiss
import numpy as np

from zoo.index.factory import set_search_params
from zoo.index.vectors import vectors_by_id

NPROBES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TARGET = 0.95
REFERENCE = 256


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's valid truth ids (>= 0) among its found ids."""
    shares = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
              for f, t in zip(found, truth)]
    return float(np.mean(shares)) if shares else 1.0


def calibrate_nprobe(search: Callable[[np.ndarray, int, int], np.ndarray], queries: np.ndarray, nlist: int,
                     target: float = TARGET, k: int = 10, reference: int = REFERENCE) -> dict:
    """``search(queries, k, nprobe)`` -> ids (Q, k). Returns the chosen nprobe and how it was chosen."""
    ref = int(min(nlist, reference))
    truth = search(queries, k, ref)
    chosen, rec = ref, 1.0
    for p in [p for p in NPROBES if p < ref]:
        rec = recall_at(search(queries, k, p), truth)
        if rec >= target:
            chosen = p
            break
    else:
        rec = 1.0
    return {"nprobe": chosen, "target": target, f"recall@{k}": round(rec, 4), "reference_nprobe": ref,
            "queries": int(len(queries))}


def calibrate_index(idx, target: float = TARGET, queries: int = 200, seed: int = 0) -> Optional[dict]:
    """Set the inverted file of ZooIndex ``idx`` to the smallest nprobe reaching ``target``
    recall@10 on ``queries`` sampled stored vectors, searched by plain cosine; recorded in its
    meta ("search", "calibration"). None where it has no inverted file or no items."""
    ivf = faiss.try_extract_index_ivf(idx.index)
    if ivf is None or len(idx) == 0:
        return None
    ids = np.sort(idx.store.ids())
    pick = ids[np.sort(np.random.default_rng(seed).choice(len(ids), min(queries, len(ids)), replace=False))]
    q = idx.rerank.vectors_of(pick) if idx.rerank is not None else vectors_by_id(idx.index, pick, idx.dim)
    before = int(ivf.nprobe)

    def search(qs: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        ivf.nprobe = nprobe
        return idx.search_vectors(qs, k, hubness=False)[1]

    try:
        found = calibrate_nprobe(search, q, ivf.nlist, target)
    finally:
        ivf.nprobe = before
    idx.meta["search"] = {**idx.meta.get("search", {}), "nprobe": found["nprobe"]}
    idx.meta["calibration"] = found
    set_search_params(idx.index, idx.meta["search"])
    return found

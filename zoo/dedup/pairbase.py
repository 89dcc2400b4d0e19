"""What both near-duplicate pair searches share: the result (PairSearch), the exact cosine of
given pairs (read a chunk of rows at a time, from memory or a vector file), and running many
small products on a pool of Python threads with BLAS and FAISS on one thread each."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from zoo.index.vecfile import VectorFile

TOL = 1e-6  # float32 rounding: a pair at exactly the threshold counts


@dataclass
class PairSearch:
    pairs: np.ndarray  # (P, 2) int64, i < j, sorted
    sims: np.ndarray  # (P,) float32, exact cosine similarity of each pair
    nearest: np.ndarray  # (N,) float32, similarity to the nearest other vector found (-inf: none)
    method: str  # "exact" or "ivf"
    params: dict = field(default_factory=dict)
    expected_recall: float = 1.0
    recall_note: str = "exact search"
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"method": self.method, **self.params, "expected_recall": round(float(self.expected_recall), 4),
                "recall_note": self.recall_note, "seconds": round(self.seconds, 3), "pairs": int(len(self.pairs))}



def _dot_pairs(x: np.ndarray, a: np.ndarray, b: np.ndarray, pool: Optional[ThreadPoolExecutor] = None,
               chunk: int = 8192) -> np.ndarray:
    """Cosine similarity of rows a[i] and b[i] of the unit rows ``x`` (an array, or a VectorFile
    read a chunk of rows at a time, rows scaled to unit length again): (P,) float32."""
    out = np.empty(len(a), np.float32)

    def part(s: int) -> None:
        u, v = x[a[s:s + chunk]], x[b[s:s + chunk]]
        if isinstance(x, VectorFile):  # float16 rows: unit length again after rounding
            faiss.normalize_L2(u)
            faiss.normalize_L2(v)
        out[s:s + chunk] = np.einsum("ij,ij->i", u, v)

    list((pool.map if pool is not None else map)(part, range(0, len(a), chunk)))
    return out


def _threads(threads: Optional[int]) -> int:
    return int(threads or os.cpu_count() or 1)


@contextmanager
def _single_threaded_libraries():
    """BLAS and FAISS's OpenMP on one thread inside the block: the work is spread over a pool of
    Python threads instead (on a shared CPU, multi-threaded BLAS on many small products and
    FAISS's OpenMP k-means ran 2-10x slower than one thread each)."""
    omp = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        faiss.omp_set_num_threads(omp)


def _finish(pairs: list, sims: list) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    p = np.concatenate(pairs).astype(np.int64)
    s = np.concatenate(sims).astype(np.float32)
    order = np.lexsort((p[:, 1], p[:, 0]))
    return p[order], s[order]


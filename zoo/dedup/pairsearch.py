"""Near-duplicate pair search at scale: every pair of vectors with cosine similarity >= a
threshold, plus each vector's nearest other vector (for the histogram), in one pass.

Two methods, one result type (:class:`PairSearch`, zoo.dedup.pairbase):

* ``exact``: all-against-all in row chunks, upper triangle only (each pair computed once), as
  one matrix product per chunk; O(N^2 d) time, O(N + pairs + chunk x N) memory.
* ``ivf``: an inverted file over compact codes (PCA-reduced float32 or float16), candidates
  re-checked with exact cosine; zoo.dedup.ivfpairs. Vectors can stay on disk in a vector
  file (zoo.index.vecfile): then only candidate rows are read back.

Groups are made from the pairs by zoo.dedup.groups.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import faiss
import numpy as np

from zoo.dedup.groups import check_grouping
from zoo.dedup.ivfpairs import PCA_DIM, TARGET_RECALL, _Coarse, ivf_params, ivf_search  # noqa: F401
from zoo.dedup.pairbase import TOL, PairSearch, _finish, _single_threaded_libraries, _threads
from zoo.errors import ZooError
from zoo.index.vecfile import VectorFile

# exact search is the default while N^2 * d stays below this (20k vectors of dim 1280: a few
# seconds on 2 cores; see benchmarks/scale.py)
EXACT_MAX_WORK = 20_000**2 * 1280
IN_MEMORY_MAX_BYTES = 1 << 30  # a vector file this small (as float32) is read in for the exact search
METHODS = ("auto", "exact", "ivf")


# ---- vectors ------------------------------------------------------------------------------------
def unit_rows(vectors: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """float32 C-contiguous rows of unit length: ``vectors`` itself when it already is that,
    else one copy scaled to unit length (zero rows stay zero)."""
    x = vectors
    if x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2:
        ok = all(np.allclose(np.einsum("ij,ij->i", x[s:s + chunk], x[s:s + chunk]), 1.0, atol=1e-4)
                 for s in range(0, len(x), chunk))
        if ok:
            return x
    if x.ndim != 2:
        raise ZooError(f"expected a 2-d array of vectors, got shape {x.shape}")
    out = np.empty(x.shape, np.float32)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = x[s:s + chunk]
        faiss.normalize_L2(out[s:s + chunk])
    return out


# ---- exact -------------------------------------------------------------------------------------
def exact_search(x: np.ndarray, threshold: float, chunk: Optional[int] = None, block_mb: int = 64,
                 threads: Optional[int] = None) -> PairSearch:
    """All pairs at or above ``threshold`` and each row's nearest other row, exactly.

    ``x``: (N, d) unit rows. Row chunk [s, e) is multiplied with rows [s, N) only (the upper
    triangle); column maxima of that block update the nearest neighbours of rows >= e. ``chunk``
    rows per block (default: blocks of about ``block_mb``)."""
    t0 = time.perf_counter()
    n = len(x)
    nearest = np.full(n, -np.inf, np.float32)
    chunk = int(chunk or np.clip((block_mb << 20) // (4 * max(n, 1)), 16, 4096))

    def block(s: int):
        e = min(n, s + chunk)
        g = x[s:e] @ x[s:].T  # (e-s, N-s) float32
        diag = np.arange(e - s)
        g[diag, diag] = -np.inf  # self
        r, c = np.nonzero(g >= threshold - TOL)
        keep = c > r  # the diagonal block is symmetric: take each pair once
        r, c = r[keep], c[keep]
        return s, e, np.stack([r + s, c + s], 1), g[r, c], g.max(1), (g[:, e - s:].max(0) if e < n else None)

    pairs, sims = [], []
    with _single_threaded_libraries(), ThreadPoolExecutor(_threads(threads)) as pool:
        for s, e, p, sm, row_max, col_max in pool.map(block, range(0, n, chunk)):
            pairs.append(p)
            sims.append(sm)
            np.maximum(nearest[s:e], row_max, out=nearest[s:e])
            if col_max is not None:
                np.maximum(nearest[e:], col_max, out=nearest[e:])
    p, sm = _finish(pairs, sims)
    return PairSearch(p, sm, nearest, "exact", {"n": n, "dim": int(x.shape[1])}, 1.0, "exact search",
                      time.perf_counter() - t0)



def similar_pairs(vectors: np.ndarray, threshold: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with cosine similarity >= threshold, exactly; memory O(N + pairs).

    returns pairs (P, 2) int64 and their similarities (P,) float32.
    """
    found = exact_search(unit_rows(vectors), threshold, chunk=chunk)
    return found.pairs, found.sims


# ---- the switch ------------------------------------------------------------------------------------
def check_search_options(method: str = "auto", nprobe: Optional[int] = None, grouping: str = "star") -> None:
    """Refuse bad options before any expensive work."""
    if method not in METHODS:
        raise ZooError(f"search method '{method}': one of {', '.join(METHODS)} is expected")
    if nprobe is not None and nprobe < 1:
        raise ZooError(f"--nprobe {nprobe}: a positive number of lists is expected")
    check_grouping(grouping)


def choose_method(n: int, d: int, method: str = "auto", exact_max_work: float = EXACT_MAX_WORK) -> str:
    check_search_options(method)
    if method == "auto":
        return "exact" if float(n) * n * d <= exact_max_work or n < 64 else "ivf"
    return method


def find_pairs(vectors: np.ndarray, threshold: float, method: str = "auto", nprobe: Optional[int] = None,
               exact_max_work: float = EXACT_MAX_WORK, **ivf_kwargs) -> PairSearch:
    """Near-duplicate pairs of ``vectors`` (N, d), any scale: exact below ``exact_max_work``
    (N^2 d) unless told, an inverted file above it. ``vectors`` may be a VectorFile
    (zoo.index.vecfile) of unit rows: the inverted file then reads it a chunk at a time and
    only candidate rows for the exact check; a small one is read into memory."""
    if not 0.0 < threshold <= 1.0:
        raise ZooError(f"threshold {threshold}: a cosine similarity in (0, 1] is expected")
    check_search_options(method, nprobe)
    if isinstance(vectors, VectorFile):
        n, d = vectors.shape
        small = n * d * 4 <= IN_MEMORY_MAX_BYTES
        if choose_method(n, d, method, exact_max_work) == "ivf" and not small:
            return ivf_search(vectors, threshold, nprobe=nprobe, **ivf_kwargs)
        vectors = vectors[0:n]
    x = unit_rows(vectors)
    n, d = x.shape
    chosen = choose_method(n, d, method, exact_max_work)
    if n < 2:
        return PairSearch(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), np.full(n, -np.inf, np.float32),
                          "exact", {"n": n, "dim": d})
    if chosen == "exact":
        return exact_search(x, threshold)
    return ivf_search(x, threshold, nprobe=nprobe, **ivf_kwargs)

"""The FAISS index inside a zoo index: which one (``--factory``, and the ``auto`` choice by size
and memory), making an empty one whose search returns item ids, training it on a sample,
removing vectors by id, and the search-time settings (nprobe, efSearch) with their defaults.

Vectors go in and queries go out L2-normalised, so inner product is cosine similarity.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

import faiss
import numpy as np

from zoo.errors import ZooError
from zoo.index.vectors import as_array, stored_ids


def faiss_reason(e: Exception) -> str:
    """FAISS's own explanation, without the C++ location in front of it."""
    msg = " ".join(str(e).split())
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", msg)


def normalised(vectors: np.ndarray, copy: bool = True) -> np.ndarray:
    """``vectors`` as contiguous float32 rows of unit length: a copy, or (``copy`` False) the
    array itself, scaled in place, when it already is contiguous float32 (saves memory on a big add)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def auto_factory(n: int, dim: int, memory_bytes: Optional[int] = None) -> str:
    """An index_factory string for ``n`` vectors of ``dim`` and ``memory_bytes`` of memory (the
    machine's, from psutil, if not given), as autofaiss chooses: exact below 50k vectors; an
    inverted file above, with float vectors while they take at most a quarter of the memory,
    8-bit scalar codes while those do; beyond that a PCA to ``dim / 5`` (at most 256) dims in
    front of the inverted file, with 8-bit codes of those dims, or product-quantised ones when
    even those would not fit, and about sqrt(N) lists (k-means and the assignment of every vector
    stay affordable on a few cores). The PCA and PQ codes are ranked again from the full vectors
    kept on disk (zoo.index.rerank)."""
    if n < 50_000:
        return "Flat"
    if memory_bytes is None:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    nlist = int(min(65536, 2 ** round(np.log2(4 * np.sqrt(n)))))
    if n * dim * 4 <= memory_bytes // 4:
        return f"IVF{nlist},Flat"
    if n * dim <= memory_bytes // 4:
        return f"IVF{nlist},SQ8"
    small = int(min(65536, 2 ** round(np.log2(np.sqrt(n)))))
    pca = max(16, min(256, dim // 5) // 16 * 16) if dim >= 80 else dim
    front = f"PCA{pca}," if pca < dim else ""
    if n * pca <= memory_bytes // 4:
        return f"{front}IVF{small},SQ8"
    m = max(m for m in (8, 16, 32, 48, 64) if pca % m == 0 and m <= max(8, pca // 4)) if pca >= 32 else pca
    return f"{front}IVF{small},PQ{m}"


def new_faiss_index(dim: int, factory: str, metric: int = faiss.METRIC_INNER_PRODUCT) -> faiss.Index:
    """An empty index whose search returns item ids: an inverted file keeps ids itself (and
    removes and reconstructs by id through a hash-table direct map, unless its vectors are
    re-ranked from a file: zoo.index.rerank); anything else is wrapped in an IndexIDMap2.
    ``metric``: L2 in front of a re-ranking (a centred PCA keeps distances, not inner products)."""
    try:
        index = faiss.index_factory(dim, factory, metric)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            return faiss.index_factory(dim, f"IDMap2,{factory}", metric)
    except RuntimeError as e:
        raise ZooError(f"bad FAISS index factory string '{factory}': {faiss_reason(e)}") from None
    if metric == faiss.METRIC_INNER_PRODUCT:  # a 10M-entry hash table would take seconds to open
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def has_item_ids(index: faiss.Index) -> bool:
    """Whether ``index`` is one new_faiss_index makes: its search returns item ids."""
    return isinstance(index, faiss.IndexIDMap2) or faiss.try_extract_index_ivf(index) is not None


# ---- search-time settings ---------------------------------------------------------------------
def default_search_params(index: faiss.Index) -> dict[str, int]:
    """Search-time settings for a recall@10 near 0.95 (measured in benchmarks/index_scale.py)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return {"nprobe": int(min(ivf.nlist, max(16, ivf.nlist // 128)))}
    if isinstance(index, faiss.IndexIDMap2) and "HNSW" in type(faiss.downcast_index(index.index)).__name__:
        return {"efSearch": 128}
    return {}


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``, with an inverted file's threads spread over the lists of each query when
    there are fewer queries than threads (FAISS parallel_mode 1) and over the queries otherwise
    (mode 0): at 10M, PCA256,IVF4096,SQ8 at nprobe 96, a single query took 17 ms on 2 cores
    instead of 31-42 ms, at the same recall and batch queries/s. Both modes give the same result."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.parallel_mode = 1 if len(queries) < faiss.omp_get_max_threads() else 0
    return index.search(queries, k)


def set_search_params(index: faiss.Index, params: dict[str, Optional[int]]) -> None:
    """Set search-time settings by FAISS name (None: leave as is); one the index does not take
    is a ZooError."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError as e:
            raise ZooError(f"this index takes no {name} ({faiss_reason(e)[:120]})") from None


def check_search_knobs(nprobe: Optional[int] = None, ef_search: Optional[int] = None) -> dict[str, Optional[int]]:
    """The command-line knobs (``--nprobe``, ``--ef_search``) as FAISS settings, each 1 or more."""
    for flag, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is not None and value < 1:
            raise ZooError(f"--{flag} {value}: must be 1 or more")
    return {"nprobe": nprobe, "efSearch": ef_search}


# ---- training and removing ------------------------------------------------------------------
def train_index(index: faiss.Index, take: Callable[[np.ndarray], np.ndarray], n: int, factory: str) -> None:
    """Train an inverted file or codes on a seeded sample of the ``n`` vectors to be added
    (k-means needs ~40-256 points a list, not all): ``take(rows)`` gives those rows."""
    ivf = faiss.try_extract_index_ivf(index)
    n_train = min(n, max(100_000, 64 * ivf.nlist) if ivf is not None else 100_000)
    rows = np.arange(n) if n_train == n else np.sort(np.random.default_rng(0).choice(n, n_train, replace=False))
    sample = normalised(take(rows))
    try:
        index.train(sample)
    except RuntimeError as e:
        raise ZooError(f"cannot train index '{factory}' on {len(sample)} vectors: {faiss_reason(e)}") from None


def remove_ids(index: faiss.Index, ids: np.ndarray, search: dict[str, int]) -> faiss.Index:
    """``index`` without the vectors of ``ids`` (int64): in place where FAISS can remove by id,
    else a rebuilt copy with the ``search`` settings. Returns the index to use from now on."""
    if not isinstance(index, faiss.IndexIDMap2):
        index.remove_ids(ids)  # an inverted file removes by its own ids
        return index
    if isinstance(faiss.downcast_index(index.index), faiss.IndexFlatCodes):
        index.remove_ids(ids)  # flat storage closes the gaps, and the id map follows
        return index
    return _rebuilt_without(index, ids, search)  # HNSW cannot remove: re-add what stays


def _rebuilt_without(index: faiss.IndexIDMap2, gone: np.ndarray, search: dict[str, int]) -> faiss.Index:
    """Re-add the vectors that stay to an empty copy of the trained index (no retraining);
    internal positions stay 0..N-1 in id-map order, so row i of the storage is id_map[i]."""
    ids = stored_ids(index)
    keep = ~np.isin(ids, gone)
    inner = faiss.downcast_index(index.index)
    vectors = as_array(inner.reconstruct_n(0, inner.ntotal))[keep] if len(ids) else np.zeros((0, index.d), np.float32)
    fresh = faiss.clone_index(index)
    fresh.reset()
    if keep.any():
        fresh.add_with_ids(np.ascontiguousarray(vectors), ids[keep])
    set_search_params(fresh, search)
    return fresh

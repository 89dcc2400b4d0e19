"""The one reader of the vectors a FAISS index stores: all of them (a view on Flat storage,
decoded chunk by chunk otherwise) or some of them by item id. SQ/PQ codes decode to
approximations, which the readers say (``lossy``)."""
from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

from zoo.errors import ZooError




class IndexView(np.ndarray):
    """A view on vectors that a FAISS index stores, which keeps that index alive: without it the
    view outlives the index's memory when the caller drops the index (``load_index(p).vectors()``)."""

    @classmethod
    def of(cls, array: np.ndarray, owner) -> "IndexView":
        view = array.view(cls)
        view.owner = owner
        return view

    def __array_finalize__(self, obj) -> None:
        self.owner = getattr(obj, "owner", None)

def as_array(vectors) -> np.ndarray:
    """float32 numpy rows, whatever FAISS returned: once ``faiss.contrib.torch_utils`` is imported
    (pytorch-metric-learning's samplers import it), FAISS methods called without an output array
    return torch tensors for the rest of the process."""
    return np.asarray(vectors, dtype=np.float32)

def index_vectors(index: faiss.Index, chunk: int = 65536, owner=None) -> tuple[np.ndarray, bool]:
    """The vectors stored in a FAISS index as (N, d) float32, and whether they are lossy.

    Flat storage (``Flat``, ``HNSW*Flat``) is returned as a view on the index's own memory (no
    copy); other indexes are decoded chunk by chunk into one float32 array. PQ / SQ codes decode
    to approximations, so similarities computed from them are approximate (``lossy`` True)."""
    index = faiss.downcast_index(index)
    n, d = index.ntotal, index.d
    flat = index
    if isinstance(index, faiss.IndexHNSW):
        flat = faiss.downcast_index(index.storage)
    if isinstance(flat, faiss.IndexFlat):
        return IndexView.of(faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d), owner if owner is not None else index), False
    lossy = not isinstance(index, faiss.IndexIVFFlat)
    try:
        ivf = faiss.extract_index_ivf(index)
        ivf.make_direct_map()
    except RuntimeError:
        pass  # not an IVF index
    out = np.empty((n, d), np.float32)
    try:
        for s in range(0, n, chunk):
            out[s:s + chunk] = as_array(index.reconstruct_n(s, min(chunk, n - s)))
    except RuntimeError as e:
        raise ZooError(f"cannot read the vectors back from this {type(index).__name__} index: "
                       f"{str(e).splitlines()[-1][:120]}") from e
    return out, lossy


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The ids of every stored vector (int64; in storage order for an IndexIDMap2, by inverted
    list for an inverted file), read without touching the vectors."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    sizes = [ivf.invlists.list_size(l) for l in range(ivf.nlist)]
    out, at = np.empty(sum(sizes), np.int64), 0
    for l, size in enumerate(sizes):  # one copy, straight into place (10M ids: 0.8 s less to open)
        if size:
            out[at:at + size] = faiss.rev_swig_ptr(ivf.invlists.get_ids(l), size)
            at += size
    return out


def stored_vectors(index: faiss.Index, chunk: int = 65536):
    """Yield (ids, vectors) of every stored vector, a chunk at a time (codes decoded: for SQ/PQ
    indexes the vectors are approximations)."""
    if isinstance(index, faiss.IndexIDMap2):
        ids = stored_ids(index)
        inner = faiss.downcast_index(index.index)
        for s in range(0, len(ids), chunk):
            yield ids[s : s + chunk], as_array(inner.reconstruct_n(s, min(chunk, len(ids) - s)))
        return
    ids = np.sort(stored_ids(index))
    for s in range(0, len(ids), chunk):
        part = ids[s : s + chunk]
        yield part, as_array(index.reconstruct_batch(part))


def all_vectors(index: faiss.Index, dim: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Every stored vector: ids (N,), vectors (N, dim) float32, and whether they are lossy."""
    if isinstance(index, faiss.IndexIDMap2):
        vectors, lossy = index_vectors(faiss.downcast_index(index.index), owner=index)  # the id map owns its storage
        return stored_ids(index), vectors, lossy
    parts = list(stored_vectors(index))  # an inverted file: decoded by id, a chunk at a time
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    vectors = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    return ids, vectors, not isinstance(faiss.extract_index_ivf(index), faiss.IndexIVFFlat)


def vectors_by_id(index: faiss.Index, ids: Sequence[int], dim: int) -> np.ndarray:
    """The stored vectors of ``ids`` (M, dim) float32, in that order (IDMap2 and inverted files
    with a direct map reconstruct by id)."""
    ids = np.asarray(list(ids), np.int64)
    if len(ids) == 0:
        return np.zeros((0, dim), np.float32)
    try:
        return as_array(index.reconstruct_batch(ids)).reshape(len(ids), dim)
    except RuntimeError as e:
        raise ZooError(f"cannot read vectors back by id from this {type(index).__name__} index: "
                       f"{str(e).splitlines()[-1][:120]}") from e

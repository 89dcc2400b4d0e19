"""The exact re-ranking of an index whose codes are lossy and compact (``PCA...`` or ``...PQ``
factories, what ``--factory auto`` picks when float vectors would not fit in memory).

FAISS finds ``k_factor x k`` candidates on its compact codes; their full vectors are read from
a vector file in the version folder (zoo.index.vecfile, float16, rows in id order) and ranked by
exact cosine similarity. The version folder holds

    rerank.npy      (N, dim) float16 vectors, row i for the i-th smallest id
    rerank_ids.npy  (N,) int64 ids, increasing (read with allow_pickle=False, checked)

Only the candidate rows are read (a memory map per call), so the vectors never need to fit in
memory. Vectors added since the last save wait in memory (float16) or in the file they came from
(``add_file``); a save streams old rows that stay and the new ones into the new version (or
links the single file it came from, when that is all it holds).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from zoo.errors import ZooError
from zoo.index.vecfile import VectorFile, unit_chunks, write_vectors

K_FACTOR = 8  # candidates per result re-ranked
FILES = ("rerank.npy", "rerank_ids.npy")


def needs_rerank(factory: str) -> bool:
    """Factories whose codes lose too much for ranking on their own: a PCA in front, or PQ codes."""
    return factory.startswith("PCA") or ",PQ" in factory


class RerankVectors:
    """Full vectors by id for the exact re-ranking: a saved file plus what was added since."""

    def __init__(self, dim: int, base: Optional[VectorFile] = None, base_ids: Optional[np.ndarray] = None):
        self.dim = dim
        self.base, self.base_ids = base, base_ids if base_ids is not None else np.zeros(0, np.int64)
        self.parts: list[tuple[np.ndarray, object]] = []  # (ids, float16 array or VectorFile)
        self.removed = np.zeros(0, np.int64)

    # ---- reading a saved version ------------------------------------------------------------
    @classmethod
    def open(cls, folder: Path, dim: int, path: Path) -> "RerankVectors":
        """The re-ranking vectors of version ``folder`` (of the index at ``path``), checked."""
        vf = VectorFile.open(folder / FILES[0], "re-ranking vector file")
        try:
            ids = np.load(folder / FILES[1], mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ZooError(f"{path}: rerank_ids.npy is damaged ({' '.join(str(e).split())[:100]}); rebuild the index") from None
        if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != vf.rows or vf.dim != dim:
            raise ZooError(f"{path}: the re-ranking vectors do not match the index ({vf.rows} x {vf.dim} vectors, "
                           f"{ids.shape} {ids.dtype} ids, dim {dim}); rebuild the index")
        contiguous = len(ids) == 0 or int(ids[-1]) - int(ids[0]) + 1 == len(ids)
        ids = np.arange(int(ids[0]), int(ids[-1]) + 1, dtype=np.int64) if contiguous and len(ids) else np.asarray(ids)
        if not contiguous and np.any(np.diff(ids) <= 0):
            raise ZooError(f"{path}: rerank_ids.npy is not increasing; rebuild the index")
        return cls(dim, vf, ids)

    def __len__(self) -> int:
        return len(self.base_ids) + sum(len(i) for i, _ in self.parts) - len(self.removed)

    # ---- changes ------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Unit vectors ``vectors`` (M, dim) for new ``ids`` (increasing, above every id held)."""
        self.parts.append((np.asarray(ids, np.int64), np.asarray(vectors, np.float16)))

    def add_file(self, ids: np.ndarray, vf: VectorFile) -> None:
        """The rows of ``vf`` for new ``ids``: read from that file when needed, not held."""
        self.parts.append((np.asarray(ids, np.int64), vf))

    def remove(self, ids: np.ndarray) -> None:
        self.removed = np.union1d(self.removed, np.asarray(ids, np.int64))

    # ---- reading by id ----------------------------------------------------------------------
    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """(M, dim) float32 unit vectors of ``ids`` (any order); rows of unknown ids are zero."""
        ids = np.asarray(ids, np.int64).ravel()
        out = np.zeros((len(ids), self.dim), np.float32)
        for part_ids, source in [(self.base_ids, self.base)] + self.parts:
            if source is None or len(part_ids) == 0:
                continue
            pos = np.searchsorted(part_ids, ids)
            hit = (pos < len(part_ids)) & (part_ids[np.minimum(pos, len(part_ids) - 1)] == ids)
            if hit.any():
                rows = pos[hit]
                out[hit] = source.take(rows) if isinstance(source, VectorFile) else source[rows].astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query (Q, dim unit rows) among its candidate ids (Q, K), -1 empty."""
        q, kk = candidates.shape
        sims_out = np.full((q, k), -np.inf, np.float32)
        ids_out = np.full((q, k), -1, np.int64)
        for s in range(0, q, chunk):
            cand = candidates[s:s + chunk]
            vecs = self.vectors_of(cand).reshape(len(cand), kk, self.dim)
            sims = np.einsum("qkd,qd->qk", vecs, queries[s:s + chunk])
            sims[cand < 0] = -np.inf
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            sims_out[s:s + chunk, :top.shape[1]] = np.take_along_axis(sims, top, 1)
            ids_out[s:s + chunk, :top.shape[1]] = np.where(np.isfinite(np.take_along_axis(sims, top, 1)),
                                                          np.take_along_axis(cand, top, 1), -1)
        return sims_out, ids_out

    # ---- saving ---------------------------------------------------------------------------------
    def _pieces(self):
        """(ids, source) pieces in id order, removals applied lazily by the writer."""
        return [(self.base_ids, self.base)] + self.parts if self.base is not None else list(self.parts)

    def save(self, folder: Path, chunk: int = 65536) -> None:
        """Write rerank.npy and rerank_ids.npy of this state into the new version ``folder``."""
        pieces = [(i, s) for i, s in self._pieces() if len(i)]
        single = len(pieces) == 1 and isinstance(pieces[0][1], VectorFile) and not len(self.removed)
        if single and pieces[0][1].dtype == np.float16 and len(pieces[0][0]) == pieces[0][1].rows:
            try:  # the one file these vectors came from, linked (no copy)
                os.link(pieces[0][1].path, folder / FILES[0])
                np.save(folder / FILES[1], pieces[0][0].astype(np.int64), allow_pickle=False)
                return
            except OSError:
                pass
        keep = [(i, s, ~np.isin(i, self.removed)) for i, s in pieces]
        total = int(sum(m.sum() for _, _, m in keep))

        def chunks():
            for ids, source, mask in keep:
                rows = np.nonzero(mask)[0]
                if isinstance(source, VectorFile):
                    yield from unit_chunks(source, chunk, ids=rows)
                else:
                    for s in range(0, len(rows), chunk):
                        yield source[rows[s:s + chunk]]

        write_vectors(folder / FILES[0], chunks(), total, self.dim, np.float16)
        all_ids = np.concatenate([i[m] for i, _, m in keep] + [np.zeros(0, np.int64)])
        np.save(folder / FILES[1], all_ids, allow_pickle=False)

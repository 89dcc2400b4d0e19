"""ZooIndex: a persistent FAISS index of image embeddings plus what is needed to use it later,
opened (load_index) or made empty (ZooIndex.create; zoo.index.build fills one from images).

It holds the FAISS index (zoo.index.factory), the item table (zoo.index.store), meta.json
(zoo.index.meta) and the version folder it came from (zoo.index.persist, zoo.index.folder);
it adds and removes items by id, reads items and stored vectors, searches by vectors or by
images, and rebuilds the model that made it.

An index names its model by identity and keeps its own copy of weights that are not a hub
tag or a seeded random init, so searching it later reads no file outside the index folder and
does not depend on the working directory it was built from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import faiss
import lightning as L
import numpy as np

from zoo.data.images import Record, records_from
from zoo.embed.runner import default_trainer, embed, require_some
from zoo.errors import ZooError
from zoo.index import folder as indexdir
from zoo.index import hubness as hub
from zoo.index.calibrate import calibrate_index
from zoo.index.factory import (
    auto_factory,
    check_search_knobs,
    default_search_params,
    new_faiss_index,
    normalised,
    remove_ids,
    search as faiss_search,
    set_search_params,
    train_index,
)
from zoo.index.meta import (check_same_model, describe_model, keeps_own_weights, new_meta, recorded_precision,
                            recorded_runtime)
from zoo.index.persist import open_current, version_parts, write_version
from zoo.index.rerank import K_FACTOR, RerankVectors, needs_rerank
from zoo.index.store import ItemStore, common_root, file_state, resolve_item_path
from zoo.index.vecfile import VectorFile
from zoo.index.vectors import all_vectors, vectors_by_id
from zoo.model.inference import FP32
from zoo.model.restore import restore_model


@dataclass
class Hit:
    """One search result: an indexed item and its similarity to the query."""

    rank: int
    similarity: float  # cosine similarity, 1 = same direction
    path: str
    label: Optional[str] = None
    frame: Optional[int] = None
    time: Optional[float] = None
    id: Optional[int] = None  # the item's id in its index


def check_k(k: int) -> None:
    if k < 1:
        raise ZooError(f"-k {k}: the number of results must be 1 or more")


class ZooIndex:
    """An index in memory: FAISS index, item table, meta and the version folder it came from."""

    def __init__(self, index: faiss.Index, meta: dict, store: ItemStore, root: Optional[Path], folder: Optional[Path] = None):
        self.index = index  # search returns item ids (see new_faiss_index)
        self.meta = meta
        self.store = store
        self.root = root  # absolute; item paths are relative to it
        self.folder = folder  # the version folder this was loaded from
        self._model = None
        self._next_id = store.max_id() + 1
        self.rerank: Optional[RerankVectors] = None  # full vectors on disk for lossy codes (zoo.index.rerank)
        self.density: Optional[np.ndarray] = None  # by id, with --hubness (zoo.index.hubness)

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def create(cls, model, factory: str = "Flat", root: Optional[Path] = None, expected: int = 0,
               precision: str = FP32, runtime: str = "torch", hubness: int = 0,
               hubness_weight: float = hub.DEFAULT_WEIGHT) -> "ZooIndex":
        """An empty index of vectors made at ``precision`` by ``runtime``; ``factory`` "auto" chooses one for
        ``expected`` vectors (auto_factory). ``hubness`` K > 0: see zoo.index.hubness."""
        hub_meta = hub.hubness_meta(hubness, hubness_weight) if hubness else None
        if factory == "auto":
            factory = auto_factory(expected, model.embedding_dim)
        rerank = needs_rerank(factory)
        index = new_faiss_index(model.embedding_dim, factory, faiss.METRIC_L2 if rerank else faiss.METRIC_INNER_PRODUCT)
        meta = new_meta(model, factory, default_search_params(index), precision, runtime)
        set_search_params(index, meta["search"])
        out = cls(index, meta, ItemStore(), Path(os.path.abspath(root)) if root else None)
        out._model = model
        if rerank:
            meta["rerank"] = {"k_factor": K_FACTOR}
            out.rerank = RerankVectors(model.embedding_dim)
        if hub_meta:
            meta["hubness"] = hub_meta
        return out

    def relative(self, path: str) -> str:
        prefix = str(self.root).rstrip(os.sep) + os.sep
        if not path.startswith(prefix):
            raise ZooError(f"{path} is outside the index's root {self.root}")
        return path[len(prefix):].replace(os.sep, "/")

    def add(self, vectors: np.ndarray, records: Sequence[Record]) -> np.ndarray:
        """Add (N, D) vectors for ``records``; returns their new ids."""
        if len(records) == 0:
            return np.zeros(0, np.int64)
        if vectors.shape[1] != self.dim:
            raise ZooError(f"embeddings of dim {vectors.shape[1]} cannot go into an index of dim {self.dim}")
        x = normalised(vectors, copy=False)  # a float32 array is scaled in place: no second copy of a big add
        if self.root is None:  # the first items decide where the index's root is
            self.root = common_root([r.path for r in records])
        if not self.index.is_trained:
            self.train(lambda rows: vectors[rows], len(x))
        ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        self.index.add_with_ids(x, ids)
        self._next_id += len(x)
        if self.rerank is not None:
            self.rerank.add(ids, x)
        self._add_rows(ids, records)
        return ids

    def add_file(self, vf: VectorFile, records: Sequence[Record], chunk: int = 65536) -> np.ndarray:
        """Add the vectors of a vector file (zoo.index.vecfile) for ``records`` (a sequence of
        len(vf), read a chunk at a time), streamed: trained on a sample, added ``chunk`` rows at a
        time, never the whole matrix in memory; a re-ranking index keeps the file's rows (linked
        into the saved version where it can be). Returns the new ids."""
        if len(records) != len(vf):
            raise ZooError(f"{vf.path} holds {len(vf)} vectors for {len(records)} records")
        if vf.dim != self.dim:
            raise ZooError(f"embeddings of dim {vf.dim} cannot go into an index of dim {self.dim}")
        if len(vf) == 0:
            return np.zeros(0, np.int64)
        if self.root is None:
            self.root = common_root([r.path for r in records[:1000]])
        if not self.index.is_trained:
            self.train(vf.take, len(vf))
        first = self._next_id
        for s, part in vf.chunks(chunk):
            part = normalised(part)
            ids = np.arange(first + s, first + s + len(part), dtype=np.int64)
            self.index.add_with_ids(part, ids)
            self._add_rows(ids, records[s:s + len(part)])
        ids = np.arange(first, first + len(vf), dtype=np.int64)
        self._next_id += len(vf)
        if self.rerank is not None:
            self.rerank.add_file(ids, vf)
        return ids

    def _add_rows(self, ids: np.ndarray, records: Sequence[Record]) -> None:
        rows = []
        for i, r in zip(ids.tolist(), records):
            size, mtime = file_state(r.path) if r.frame is None else (None, None)
            rows.append((i, self.relative(r.path), r.label, r.frame, r.time, size, mtime))
        self.store.add(rows)
        self.density = None  # neighbourhoods changed: found again when needed

    def train(self, take: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        """Train the FAISS index on a sample of the ``n`` vectors to be added (train_index)."""
        train_index(self.index, take, n, self.meta["factory"])

    def add_shards(self, job, records: Sequence[Record]) -> None:
        """Add what ``job`` (zoo.index.shards.ShardJob) embedded for ``records``, in record order
        and a chunk at a time: the same index as adding all vectors at once, in O(chunk) memory."""
        n = job.count()
        if n and not self.index.is_trained:
            self.train(job.gather, n)
        for positions, vectors in job.ordered():
            self.add(vectors, [records[p] for p in positions])

    def remove(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            return
        sel = np.asarray(ids, dtype=np.int64)
        self.index = remove_ids(self.index, sel, self.meta.get("search", {}))
        self.store.remove(sel.tolist())
        self.density = None
        if self.rerank is not None:
            self.rerank.remove(sel)

    # ---- identity -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def _item(self, row: dict) -> dict:
        item = {"id": row["id"], "path": os.path.normpath(self.root / row["path"]), "label": row["label"]}
        if row["frame"] is not None:
            item.update(frame=row["frame"], time=row["time"])
        return item

    def item(self, id: int) -> dict:
        """The item with FAISS id ``id``: id, absolute path, label[, frame, time]."""
        row = self.store.get([id]).get(int(id))
        if row is None:
            raise ZooError(f"no item with id {id} in this index")
        return self._item(row)

    def item_file(self, id: int) -> Path:
        """The file of item ``id``, links resolved; a ZooError unless it is a regular file inside
        the index's root (zoo.index.store.resolve_item_path): what a server or report may open."""
        row = self.store.get([id]).get(int(id))
        if row is None:
            raise ZooError(f"no item with id {id} in this index")
        return resolve_item_path(self.root, row["path"])

    def ids_of(self, paths: Sequence[str]) -> dict[str, int]:
        """Absolute path -> id of the indexed file (not a video frame) at each of ``paths`` that
        the index holds; one query whatever their number."""
        rel = {}
        for p in paths:
            try:
                rel[self.relative(os.path.normpath(p))] = p
            except ZooError:  # outside the root: not in this index
                pass
        return {rel[r]: i for r, i in self.store.ids_of(list(rel)).items()}

    @property
    def items(self) -> list[dict]:
        """Every item in id order (reads the whole table: for small indexes and exports)."""
        return [self._item(r) for r in self.store.rows()]

    @property
    def paths(self) -> list[str]:
        return [it["path"] for it in self.items]

    def vectors(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """Every stored vector: ids (N,), vectors (N, D) float32, and whether they are decoded
        from lossy codes (SQ/PQ). Flat storage is a view on the index's memory, not a copy."""
        return all_vectors(self.index, self.dim)

    def vector_file(self) -> Optional[tuple[np.ndarray, VectorFile]]:
        """Ids (N,) and the float16 vector file holding every stored vector in that order, for
        an index re-ranked from disk with no unsaved changes; None otherwise (use ``vectors``)."""
        r = self.rerank
        if r is None or r.base is None or r.parts or len(r.removed) or len(r.base_ids) != len(self):
            return None
        return r.base_ids, r.base

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of items ``ids`` (M, D) float32, in that order."""
        return vectors_by_id(self.index, ids, self.dim)

    def paths_of(self, ids: Sequence[int]) -> list[str]:
        """Absolute paths of the items ``ids``, in that order."""
        rows = self.store.get(list(map(int, ids)))
        return [self._item(rows[int(i)])["path"] for i in ids]

    def add_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Remember (absolute path, reason) of files that could not be used, with their size and
        time, so that an update reads them again only once they change."""
        self.store.set_skipped((self.relative(p), reason, *file_state(p)) for p, reason in skipped)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(absolute path, reason) of the files that could not be used."""
        return [(str(self.root / p), reason) for p, reason, _, _ in self.store.skipped()]

    # ---- the model ------------------------------------------------------------------------
    def describe(self) -> str:
        return describe_model(self.meta["model"]) + (f", {hub.describe(self.meta['hubness'])}" if "hubness" in self.meta else "")

    @property
    def precision(self) -> str:
        """The precision its vectors were made at (32-true for an index that records none)."""
        return recorded_precision(self.meta)

    @property
    def runtime(self) -> str:
        """The runtime that made its vectors (torch for an index that records none)."""
        return recorded_runtime(self.meta)

    def check_model(self, model) -> None:
        """Refuse to compare embeddings from another model than the one that built the index."""
        check_same_model(self.meta["model"], model)

    def model(self):
        """The model that built this index, rebuilt (zoo.model.restore) from its recorded
        hparams and recipe and the index's own weights: never from a path in the metadata, so an
        edited meta.json cannot make zoo read another file."""
        if self._model is None:
            m = self.meta["model"]
            own = self.folder / "model.safetensors" if self.folder is not None and m.get("own_weights") else None
            if own is None and keeps_own_weights(str(m["weights"])):
                raise ZooError(f"{self.folder}: the index records weights '{m['weights']}' but holds no copy of them; rebuild the index")
            if not isinstance(m["hparams"], dict) or not isinstance(m["recipe"], dict):
                raise ZooError(f"{self.folder}: meta.json is damaged (model hparams/recipe); rebuild the index")
            model = restore_model(m["hparams"], m["recipe"], own, source=str(self.folder))
            if own is not None:
                model.restored_weights_id = m["weights"]
            self.check_model(model)  # e.g. hub weights that changed since
            self._model = model
        return self._model

    # ---- searching ------------------------------------------------------------------------
    def set_search(self, nprobe: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        """Search-time knobs: inverted lists visited (IVF) or graph breadth (HNSW); more = slower,
        better recall. The index keeps its own defaults (meta["search"])."""
        set_search_params(self.index, check_search_knobs(nprobe, ef_search))

    def search_vectors(self, queries: np.ndarray, k: int = 10, hubness: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> cosine similarities (Q, k) and item ids (Q, k); ids of -1 are empty
        slots. An index built with --hubness ranks by cosine minus weight x density unless
        ``hubness`` is False (the cosine order: what copy checks and calibrations need)."""
        check_k(k)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ZooError(f"query embeddings have dim {queries.shape[-1]}, the index has dim {self.dim} ({self.describe()})")
        k = min(k, len(self)) or 1
        if hubness and "hubness" in self.meta:
            if self.density is None:
                self.refresh_density()
            sims, ids = self.search_vectors(queries, hub.candidates(k, len(self)), hubness=False)
            return hub.rerank(sims, ids, self.density, self.meta["hubness"]["weight"], k)
        q = normalised(queries)
        if self.rerank is None:
            return faiss_search(self.index, q, k)
        _, cand = faiss_search(self.index, q, min(len(self), k * int(self.meta["rerank"]["k_factor"])))
        return self.rerank.rerank(q, cand, k)

    def calibrate(self, target: float = 0.95, queries: int = 200, seed: int = 0) -> Optional[dict]:
        """Set an inverted file's default nprobe to the smallest reaching ``target`` recall@10
        on ``queries`` sampled stored vectors (zoo.index.calibrate); recorded in meta.json."""
        return calibrate_index(self, target, queries, seed)

    def hits(self, sims: np.ndarray, ids: np.ndarray) -> list[Hit]:
        rows = self.store.get([int(i) for i in ids if i >= 0])
        out = []
        for s, i in zip(sims, ids):
            if i < 0 or int(i) not in rows:
                continue
            it = self._item(rows[int(i)])
            out.append(Hit(rank=len(out) + 1, similarity=float(s), path=it["path"], label=it["label"],
                           frame=it.get("frame"), time=it.get("time"), id=int(i)))
        return out

    def search_many(self, images: Sequence[str | Path], k: int = 10, model=None,
                    trainer: Optional[L.Trainer] = None, hubness: bool = True) -> list[tuple[str, list[Hit]]]:
        """(query path, top-k hits) for every usable image among ``images`` (folders expand);
        unusable ones are reported and left out, so each result stays tied to its query. The
        queries are embedded at the index's own precision unless ``trainer`` says otherwise."""
        check_k(k)
        model = model or self.model()
        self.check_model(model)
        trainer = trainer or default_trainer(recorded=self.precision)  # the index's own precision
        emb = embed(model, records_from(list(images)), trainer=trainer)
        require_some(emb, "the query")
        sims, ids = self.search_vectors(emb.vectors, k, hubness=hubness)
        return [(r.path, self.hits(s, i)) for r, s, i in zip(emb.records, sims, ids)]

    def search(self, images, k: int = 10, model=None, trainer: Optional[L.Trainer] = None):
        """Top-k hits for one image path; for a list of paths, (query, hits) per usable image."""
        if isinstance(images, (str, os.PathLike)):
            if Path(images).is_dir():
                raise ZooError(f"{images} is a folder; search a list of images with search_many")
            return self.search_many([images], k, model, trainer)[0][1]
        return self.search_many(images, k, model, trainer)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False, _locked: bool = False) -> Path:
        """Write a new version of the index at ``path`` and switch to it atomically."""
        path = Path(os.path.abspath(path))
        if not _locked:
            indexdir.check_target(path, overwrite, update=False)
            with indexdir.locked(path):
                return self.save(path, overwrite, _locked=True)
        if self.rerank is not None and "calibration" not in self.meta:
            self.calibrate()
        meta = {**self.meta, "root": str(self.root), "count": len(self), "dim": self.dim}
        if "hubness" in meta and self.density is None:
            self.refresh_density()

        self.folder = write_version(path, self.index, self.store, meta, self._model, previous=self.folder,
                                    extra=version_parts(self.rerank, self.density))
        if self.rerank is not None:
            self.rerank = RerankVectors.open(self.folder, self.dim, path)
        return path

    def refresh_density(self) -> None:
        self.density = hub.index_density(self)  # every item's, from the index as it is now

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "ZooIndex":
        """Open an index; ``mmap``: map the vectors from disk instead of reading them (read-only,
        opens in a moment whatever the size; the OS pages in what searches touch)."""
        path = Path(os.path.abspath(path))
        index, meta, store, folder = open_current(path, mmap)
        set_search_params(index, meta.get("search", {}))
        out = cls(index, meta, store, Path(meta["root"]), folder)
        if "rerank" in meta:
            out.rerank = RerankVectors.open(folder, out.dim, path)
        if "hubness" in meta:
            out.density = hub.open_density(folder, path, store.max_id())
        return out

    def writable_copy(self) -> "ZooIndex":
        """This index with an in-memory item table, for an update."""
        out = ZooIndex(self.index, self.meta, self.store.copy(), self.root, self.folder)
        out._model = self._model
        out.rerank = self.rerank
        out.density = self.density
        return out


def load_index(path: str | Path) -> ZooIndex:
    return ZooIndex.load(path)

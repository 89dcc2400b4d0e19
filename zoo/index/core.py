"""A persistent FAISS index plus what is needed to use it later.

On disk an index is a folder (see ``zoo.indexdir`` for the versioned layout and the lock);
each version holds

    index.faiss         faiss.write_index; vector ids are item ids (an inverted file keeps
                        them itself, with a hash-table direct map; other indexes sit in an
                        IndexIDMap2), so items are added and removed by id without a rebuild
    items.sqlite        one row per vector: path relative to the root, label, frame/time,
                        size and mtime (zoo.store)
    meta.json           root folder, model identity and recipe, factory, counts
    model.safetensors   the model's own weights, when they came from a file or a checkpoint

An index names its model by identity and keeps its own copy of weights that are not a hub
tag or a seeded random init, so searching it later reads no file outside the index folder and
does not depend on the working directory it was built from.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import faiss
import lightning as L
import numpy as np

from zoo.data.images import Record, records_from, scan_folder
from zoo.embed.runner import embed, report_skipped, require_some
from zoo.errors import ZooError
from zoo.index import folder as indexdir
from zoo.index.shards import ShardJob, embed_to_shards, is_primary_process, job_key
from zoo.index.store import ItemStore, file_state, resolve_item_path
from zoo.index.vectors import all_vectors, stored_ids, vectors_by_id
from zoo.model.identity import model_identity
from zoo.model.module import ZooModel
from zoo.model.restore import restore_model
from zoo.version import __version__

META_KEYS = ("model", "factory", "root", "count", "dim")
MODEL_KEYS = ("architecture", "dim", "weights", "hparams", "recipe")
SEARCH_PARAMS = ("nprobe", "efSearch")  # the search settings meta.json may hold
MAX_SEARCH = 1 << 20


@dataclass
class Hit:
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


def faiss_reason(e: Exception) -> str:
    """FAISS's own explanation, without the C++ location in front of it."""
    msg = " ".join(str(e).split())
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", msg)



def keeps_own_weights(weights_id: str) -> bool:
    """Weights that cannot be had again by name (a file, a checkpoint) travel with the index."""
    return not (weights_id.startswith("hub:") or weights_id.startswith("random init"))


def auto_factory(n: int, dim: int, memory_bytes: Optional[int] = None) -> str:
    """An index_factory string for ``n`` vectors of ``dim``: exact below 50k vectors; an inverted
    file above, with 8-bit scalar codes when float vectors would take over a quarter of the
    memory, and product-quantised codes when even those would not fit."""
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
    m = max(m for m in (8, 16, 32, 48, 64, 96, 128) if dim % m == 0 and m <= dim // 8) if dim >= 64 else dim
    return f"IVF{nlist},PQ{m}"


def default_search_params(index: faiss.Index) -> dict[str, int]:
    """Search-time settings for a recall@10 near 0.95 (measured in benchmarks/index_scale.py)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return {"nprobe": int(min(ivf.nlist, max(16, ivf.nlist // 128)))}
    if isinstance(index, faiss.IndexIDMap2) and "HNSW" in type(faiss.downcast_index(index.index)).__name__:
        return {"efSearch": 128}
    return {}


def new_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An empty index whose search returns item ids: an inverted file keeps ids itself (and
    removes and reconstructs by id through a hash-table direct map); anything else is wrapped
    in an IndexIDMap2."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            return faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ZooError(f"bad FAISS index factory string '{factory}': {faiss_reason(e)}") from None
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index



def check_meta(meta: Any, path: Path) -> None:
    """meta.json as ``_load_version`` uses it: the keys it needs, an absolute root, and search
    settings that are integers (anything else is a damaged or edited file)."""
    def damaged(why: str) -> ZooError:
        return ZooError(f"{path}: meta.json is damaged ({why}); rebuild the index")

    if not isinstance(meta, dict) or any(k not in meta for k in META_KEYS):
        raise damaged(f"missing {', '.join(k for k in META_KEYS if not isinstance(meta, dict) or k not in meta)}")
    if not isinstance(meta["model"], dict) or any(k not in meta["model"] for k in MODEL_KEYS):
        raise damaged("missing model fields")
    root = meta["root"]
    if not isinstance(root, str) or not os.path.isabs(root) or "\0" in root:
        raise damaged(f"root must be an absolute folder path, not {json.dumps(root)[:60]}")
    search = meta.get("search", {})
    if not isinstance(search, dict):
        raise damaged("search settings must be a mapping")
    for name, value in search.items():
        if name not in SEARCH_PARAMS or isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEARCH:
            raise damaged(f"search setting {name} {json.dumps(value)[:40]}: "
                          f"{' and '.join(SEARCH_PARAMS)} take an integer from 1 to {MAX_SEARCH}")


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError as e:
            raise ZooError(f"this index takes no {name} ({faiss_reason(e)[:120]})") from None


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def common_root(records: Sequence[Record]) -> Path:
    folders = {os.path.dirname(r.path) for r in records}
    return Path(os.path.commonpath(sorted(folders))) if folders else Path.cwd()


class ZooIndex:
    def __init__(self, index: faiss.Index, meta: dict, store: ItemStore, root: Optional[Path], folder: Optional[Path] = None):
        self.index = index  # search returns item ids (see new_faiss_index)
        self.meta = meta
        self.store = store
        self.root = root  # absolute; item paths are relative to it
        self.folder = folder  # the version folder this was loaded from
        self._model = None
        self._next_id = store.max_id() + 1

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def create(cls, model, factory: str = "Flat", root: Optional[Path] = None, expected: int = 0) -> "ZooIndex":
        """An empty index; ``factory`` "auto" chooses one for ``expected`` vectors (auto_factory)."""
        if factory == "auto":
            factory = auto_factory(expected, model.embedding_dim)
        index = new_faiss_index(model.embedding_dim, factory)
        meta = {
            "zoo_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "factory": factory,
            "metric": "inner_product on L2-normalised vectors (cosine similarity)",
            "model": model_identity(model),
            "search": default_search_params(index),
        }
        set_search_params(index, meta["search"])
        out = cls(index, meta, ItemStore(), Path(os.path.abspath(root)) if root else None)
        out._model = model
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
        x = _normalised(vectors)
        if self.root is None:  # the first items decide where the index's root is
            self.root = common_root(records)
        if not self.index.is_trained:
            self.train(lambda rows: vectors[rows], len(x))
        ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        self.index.add_with_ids(x, ids)
        self._next_id += len(x)
        rows = []
        for i, r in zip(ids.tolist(), records):
            size, mtime = file_state(r.path) if r.frame is None else (None, None)
            rows.append((i, self.relative(r.path), r.label, r.frame, r.time, size, mtime))
        self.store.add(rows)
        return ids

    def train(self, take, n: int) -> None:
        """Train an inverted file or codes on a seeded sample of the ``n`` vectors to be added
        (k-means needs ~40-256 points a list, not all): ``take(rows)`` gives those rows."""
        ivf = faiss.try_extract_index_ivf(self.index)
        n_train = min(n, max(100_000, 64 * ivf.nlist) if ivf is not None else 100_000)
        rows = np.arange(n) if n_train == n else np.sort(np.random.default_rng(0).choice(n, n_train, replace=False))
        sample = _normalised(take(rows))
        try:
            self.index.train(sample)
        except RuntimeError as e:
            raise ZooError(f"cannot train index '{self.meta['factory']}' on {len(sample)} vectors: {faiss_reason(e)}") from None

    def add_shards(self, job, records: Sequence[Record]) -> None:
        """Add what ``job`` (zoo.shards.ShardJob) embedded for ``records``, in record order and a
        chunk at a time: the same index as adding all vectors at once, in O(chunk) memory."""
        n = job.count()
        if n and not self.index.is_trained:
            self.train(job.gather, n)
        for positions, vectors in job.ordered():
            self.add(vectors, [records[p] for p in positions])

    def remove(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            return
        sel = np.asarray(ids, dtype=np.int64)
        if not isinstance(self.index, faiss.IndexIDMap2):
            self.index.remove_ids(sel)  # an inverted file removes by its own ids
        elif isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlatCodes):
            self.index.remove_ids(sel)  # flat storage closes the gaps, and the id map follows
        else:  # HNSW cannot remove: re-add what stays
            self._rebuild_without(sel)
        self.store.remove(sel.tolist())

    def _rebuild_without(self, gone: np.ndarray) -> None:
        """Re-add the vectors that stay to an empty copy of the trained index (no retraining);
        internal positions stay 0..N-1 in id-map order, so row i of the storage is id_map[i]."""
        ids = stored_ids(self.index)
        keep = ~np.isin(ids, gone)
        inner = faiss.downcast_index(self.index.index)
        vectors = inner.reconstruct_n(0, inner.ntotal)[keep] if len(ids) else np.zeros((0, self.dim), np.float32)
        fresh = faiss.clone_index(self.index)
        fresh.reset()
        if keep.any():
            fresh.add_with_ids(np.ascontiguousarray(vectors), ids[keep])
        set_search_params(fresh, self.meta.get("search", {}))
        self.index = fresh

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
        the index's root (zoo.store.resolve_item_path): what a server or report may open."""
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

    def describe(self) -> str:
        m = self.meta["model"]
        return f"{m['architecture']} (dim {m['dim']}, weights: {m['weights']})"

    def check_model(self, model) -> None:
        """Refuse to compare embeddings from another model than the one that built the index."""
        m = self.meta["model"]
        other = model_identity(model)
        if other["dim"] != m["dim"] or other["architecture"] != m["architecture"] or other["weights"] != m["weights"]:
            raise ZooError(
                f"model mismatch: the index was built with {self.describe()}, the query model is "
                f"{other['architecture']} (dim {other['dim']}, weights: {other['weights']}); "
                "use the index's own model (the default) or rebuild the index"
            )

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
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is not None and value < 1:
                raise ZooError(f"--{'ef_search' if name == 'efSearch' else name} {value}: must be 1 or more")
        set_search_params(self.index, {"nprobe": nprobe, "efSearch": ef_search})

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> similarities (Q, k) and item ids (Q, k); ids of -1 are empty slots."""
        check_k(k)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ZooError(f"query embeddings have dim {queries.shape[-1]}, the index has dim {self.dim} ({self.describe()})")
        k = min(k, len(self)) or 1
        return self.index.search(_normalised(queries), k)

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
                    trainer: Optional[L.Trainer] = None) -> list[tuple[str, list[Hit]]]:
        """(query path, top-k hits) for every usable image among ``images`` (folders expand);
        unusable ones are reported and left out, so each result stays tied to its query."""
        check_k(k)
        model = model or self.model()
        self.check_model(model)
        emb = embed(model, records_from(list(images)), trainer=trainer)
        require_some(emb, "the query")
        sims, ids = self.search_vectors(emb.vectors, k)
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
        if path.is_dir():
            indexdir.clean_stale(path)  # what an earlier crash left, before this adds more
        tmp, name = indexdir.new_version(path)
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            self.store.save_as(tmp / "items.sqlite")
            meta = {**self.meta, "root": str(self.root), "count": len(self), "dim": self.dim}
            model = self._model
            if keeps_own_weights(meta["model"]["weights"]):
                meta["model"]["own_weights"] = True
                if model is not None:
                    from safetensors.torch import save_file

                    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                    save_file(state, str(tmp / "model.safetensors"))
                elif self.folder is not None:  # an update: the model is unchanged, carry its file over
                    try:
                        os.link(self.folder / "model.safetensors", tmp / "model.safetensors")
                    except OSError:
                        shutil.copyfile(self.folder / "model.safetensors", tmp / "model.safetensors")
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=1)
            final = indexdir.commit_version(path, tmp, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.folder = final
        return path

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "ZooIndex":
        """Open an index; ``mmap``: map the vectors from disk instead of reading them (read-only,
        opens in a moment whatever the size; the OS pages in what searches touch)."""
        path = Path(os.path.abspath(path))
        for attempt in range(3):  # a writer may switch versions while this reads
            folder = indexdir.current_version(path)
            try:
                return cls._load_version(path, folder, mmap)
            except FileNotFoundError:
                if attempt == 2:
                    raise ZooError(f"{folder} is incomplete; rebuild the index") from None

    @classmethod
    def _load_version(cls, path: Path, folder: Path, mmap: bool = True) -> "ZooIndex":
        for name in ("meta.json", "index.faiss", "items.sqlite"):
            if not (folder / name).is_file():
                raise FileNotFoundError(folder / name)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
            raise ZooError(f"{path}: meta.json is damaged ({' '.join(str(e).split())[:100]}); rebuild the index") from None
        check_meta(meta, path)
        try:
            index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        except RuntimeError as e:
            raise ZooError(f"{path}: index.faiss is damaged ({faiss_reason(e)[:160]}); rebuild the index") from None
        if not isinstance(index, faiss.IndexIDMap2) and faiss.try_extract_index_ivf(index) is None:
            raise ZooError(f"{path}: index.faiss is not a zoo index (no item ids); rebuild the index")
        store = ItemStore(folder / "items.sqlite", readonly=True)
        if index.ntotal != len(store) or index.d != meta["model"]["dim"]:
            raise ZooError(f"{path} is inconsistent: index.faiss holds {index.ntotal} vectors of dim {index.d}, items.sqlite "
                           f"{len(store)} items, meta.json says dim {json.dumps(meta['model']['dim'])[:20]}; rebuild the index")
        # the same ids on both sides (a swapped or edited file would give other items, or none)
        if not np.array_equal(np.sort(stored_ids(index)), store.ids()):
            raise ZooError(f"{path} is inconsistent: the ids in index.faiss are not the ids of items.sqlite; rebuild the index")
        set_search_params(index, meta.get("search", {}))
        return cls(index, meta, store, Path(meta["root"]), folder)

    def writable_copy(self) -> "ZooIndex":
        """This index with an in-memory item table, for an update."""
        out = ZooIndex(self.index, self.meta, self.store.copy(), self.root, self.folder)
        out._model = self._model
        return out


def load_index(path: str | Path) -> ZooIndex:
    return ZooIndex.load(path)


def _records(images, exclude: Optional[Path]) -> tuple[list[Record], Optional[Path]]:
    """Records of a folder, files or records; and the folder they came from, if one."""
    if isinstance(images, (str, os.PathLike)):
        if Path(images).is_dir():
            return scan_folder(images, exclude=exclude), Path(os.path.abspath(images))
        return records_from([images]), None
    if images and isinstance(images[0], Record):
        return list(images), None
    return records_from(images), None


def build_index(
    images: str | Path | Sequence[str | Path] | Sequence[Record] | None,
    model=None,
    out: Optional[str | Path] = None,
    factory: str = "auto",
    overwrite: bool = False,
    update: bool = False,
    trainer: Optional[L.Trainer] = None,
    batch_size: int = 32,
    num_workers: int = 0,
    decode: str = "auto",
    shard_size: int = 4096,
    channels_last: Optional[bool] = None,
    **model_kwargs,
) -> Optional[ZooIndex]:
    """Embed images (a folder, files, or records) and index them; saved to ``out`` if given.

    ``model``: a ZooModel, or None to build ``ZooModel(**model_kwargs)`` (e.g. backbone="vgg16").
    ``update``: bring ``out`` up to date with its root folder: embed new and changed files,
    drop the ones that disappeared, with the index's own model.

    With ``out``, embeddings stream to shards inside it (zoo.shards) and the index is built
    from them afterwards: memory stays O(batch), a stopped run resumes where it stopped, and
    in a multi-device run every process embeds its part; only the first returns the index
    (the others return None).
    """
    out_path = Path(os.path.abspath(out)) if out is not None else None
    run = dict(trainer=trainer, batch_size=batch_size, num_workers=num_workers, decode=decode, shard_size=shard_size,
               channels_last=channels_last)
    primary = is_primary_process()
    if update:
        if out_path is None:
            raise ZooError("--update needs --out, the index to update")
        if not primary:  # rank 0 holds the lock; this process embeds its part of the same work
            return _update(out_path, images, model, **run)
        indexdir.check_target(out_path, overwrite=False, update=True)
        with indexdir.locked(out_path):
            return _update(out_path, images, model, **run)
    sources = (Path(images),) if isinstance(images, (str, os.PathLike)) else ()
    if out_path is not None and primary:
        indexdir.check_target(out_path, overwrite, update=False, sources=sources)  # before any expensive work
    records, root = _records(images, exclude=out_path)
    model = (model or ZooModel(**model_kwargs)).build()
    index = ZooIndex.create(model, factory, root=root or common_root(records), expected=len(records))
    if out_path is None:
        return _embed_into(index, model, records, trainer, batch_size, num_workers, decode, require=True)
    if not primary:
        _embed_shards(index, out_path, model, records, **run)
        return None
    if factory == "auto":
        print(f"zoo: --factory auto: {index.meta['factory']} for {len(records)} files of dim {model.embedding_dim}", file=sys.stderr)
    with indexdir.locked(out_path):
        indexdir.check_target(out_path, overwrite, update=False, sources=sources)  # again, now under the lock
        job = _embed_shards(index, out_path, model, records, **run)
        if len(index) == 0:
            job.remove()
            raise ZooError("no usable images to index")
        index.save(out_path, overwrite=True, _locked=True)
        job.remove()
    return index


def _embed_into(index: ZooIndex, model, records: list[Record], trainer, batch_size: int, num_workers: int,
                decode: str = "auto", require: bool = False) -> ZooIndex:
    emb = embed(model, records, trainer=trainer, batch_size=batch_size, num_workers=num_workers, decode=decode) if records else None
    if emb is None or len(emb.records) == 0:
        if require:
            raise ZooError("no usable images to index")
        return index
    index.add(emb.vectors, emb.records)
    index.add_skipped(emb.skipped)
    return index


def _embed_shards(index: ZooIndex, out: Path, model, records: list[Record], trainer, batch_size: int,
                  num_workers: int, decode: str, shard_size: int, channels_last: Optional[bool] = None):
    """Embed ``records`` into shards in ``out`` (resuming an earlier run of the same job); the
    first process then adds them to ``index``. Returns the job."""
    job = ShardJob(out, job_key(model_identity(model), records), len(records), model.embedding_dim)
    primary = is_primary_process()
    if primary:
        job.prepare()
    if records:
        embed_to_shards(model, records, job, trainer=trainer, batch_size=batch_size, num_workers=num_workers,
                        decode=decode, shard_rows=shard_size, channels_last=channels_last)
    if primary and records:
        index.add_shards(job, records)
        skipped = [(records[p].path, reason) for p, reason in job.skipped()]
        index.add_skipped(skipped)
        if skipped:
            report_skipped(skipped)
    return job


def _update(out: Path, images, model, trainer, batch_size: int, num_workers: int, decode: str = "auto",
            shard_size: int = 4096, channels_last: Optional[bool] = None) -> Optional[ZooIndex]:
    primary = is_primary_process()
    index = ZooIndex.load(out, mmap=False).writable_copy()
    if images is not None and Path(os.path.realpath(images)) != Path(os.path.realpath(index.root)):
        raise ZooError(f"{out} indexes {index.root}; --update rescans that folder (give no --images, or that one)")
    if index.store.has_frames():
        raise ZooError(f"{out} indexes video frames; --update works on image folders (rebuild it with --overwrite)")
    if model is not None:
        index.check_model(model.build())
    model = index.model()
    records = scan_folder(index.root, exclude=out)
    known = {r["path"]: r for r in index.store.rows()}
    skipped = {p: (size, mtime) for p, _, size, mtime in index.store.skipped()}
    new, changed, retried, seen = [], [], [], set()
    for r in records:
        rel = index.relative(r.path)
        seen.add(rel)
        state = file_state(r.path)
        if rel in known:
            row = known[rel]
            if (row["size"], row["mtime_ns"]) != state:  # changed since it was embedded
                changed.append(row["id"])
                new.append(r)
        elif rel in skipped:
            if skipped[rel] != state:  # a bad file that changed since: try it again
                retried.append(rel)
                new.append(r)
        else:
            new.append(r)
    gone = [row["id"] for rel, row in known.items() if rel not in seen]
    run = dict(trainer=trainer, batch_size=batch_size, num_workers=num_workers, decode=decode, shard_size=shard_size,
               channels_last=channels_last)
    if not primary:
        _embed_shards(index, out, model, new, **run)
        return None
    index.remove(gone + changed)
    index.store.unskip([p for p in skipped if p not in seen] + retried)
    still_bad = sum(1 for p in skipped if p in seen) - len(retried)
    print(f"zoo: {out}: {len(new) - len(changed) - len(retried)} new, {len(changed) + len(retried)} changed, "
          f"{len(gone)} removed file(s); {len(known)} indexed before"
          + (f"; {still_bad} unusable file(s) unchanged since they were reported" if still_bad else ""),
          file=sys.stderr, flush=True)
    job = _embed_shards(index, out, model, new, **run)
    index.save(out, _locked=True)
    job.remove()
    return index

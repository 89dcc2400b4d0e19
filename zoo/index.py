"""A persistent FAISS index plus the metadata needed to use it later.

On disk an index is a folder: ``index.faiss`` (``faiss.write_index``) and ``meta.json``
(paths, labels, model identity, preprocessing, dim, zoo version). It is written to a temporary
folder first and renamed into place, so a crash never leaves half an index, and an existing
index is replaced only when asked.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import faiss
import lightning as L
import numpy as np

import zoo
from zoo.data import Record, records_from, scan_folder
from zoo.errors import ZooError

FORMAT_VERSION = 1


@dataclass
class Hit:
    rank: int
    similarity: float  # cosine similarity, 1 = same direction
    path: str
    label: Optional[str] = None
    frame: Optional[int] = None
    time: Optional[float] = None


def model_identity(model) -> dict[str, Any]:
    """What an index records about the model that made it."""
    from zoo.model import model_config

    hp = dict(model.hparams)
    ident = {
        "architecture": model.architecture,
        "backbone": hp.get("backbone"),
        "head": hp.get("head"),
        "weights": model.weights_id,
        "dim": model.embedding_dim,
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()},
        "hparams": json.loads(json.dumps(model_config(hp), default=str)),
    }
    if getattr(model, "checkpoint_id", None):
        ident["checkpoint"] = str(Path(model.checkpoint_path).resolve())
    return ident


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


class ZooIndex:
    def __init__(self, index: faiss.Index, meta: dict, items: list[dict]):
        self.index = index
        self.meta = meta
        self.items = items  # one dict per vector: path, label[, frame, time]
        self._model = None

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def create(cls, model, factory: str = "Flat") -> "ZooIndex":
        dim = model.embedding_dim
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ZooError(f"bad FAISS index factory string '{factory}': {str(e).splitlines()[-1][:120]}") from e
        meta = {
            "format": FORMAT_VERSION,
            "zoo_version": zoo.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "factory": factory,
            "metric": "inner_product on L2-normalised vectors (cosine similarity)",
            "model": model_identity(model),
        }
        out = cls(index, meta, [])
        out._model = model
        return out

    def add(self, vectors: np.ndarray, records: Sequence[Record]) -> None:
        if len(records) == 0:
            return
        if vectors.shape[1] != self.dim:
            raise ZooError(f"embeddings of dim {vectors.shape[1]} cannot go into an index of dim {self.dim}")
        x = _normalised(vectors)
        if not self.index.is_trained:
            try:
                self.index.train(x)
            except RuntimeError as e:
                raise ZooError(f"cannot train index '{self.meta['factory']}' on {len(x)} vectors: {str(e).splitlines()[-1][:120]}") from e
        self.index.add(x)
        for r in records:
            item = {"path": r.path, "label": r.label}
            if r.frame is not None:
                item.update(frame=r.frame, time=r.time)
            self.items.append(item)

    # ---- identity -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def paths(self) -> list[str]:
        return [it["path"] for it in self.items]

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
        """The model that built this index, rebuilt from the metadata."""
        if self._model is None:
            from zoo.model import ZooModel, load_model, model_config

            m = self.meta["model"]
            if m.get("checkpoint"):
                model = load_model(m["checkpoint"])
            else:
                model = ZooModel(**model_config(m["hparams"]))
            model.build()
            self.check_model(model)  # e.g. the weights file changed since
            self._model = model
        return self._model

    # ---- searching ------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> similarities (Q, k) and ids (Q, k); ids of -1 are empty slots."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ZooError(f"query embeddings have dim {queries.shape[-1]}, the index has dim {self.dim} ({self.describe()})")
        k = min(k, len(self))
        return self.index.search(_normalised(queries), k)

    def hits(self, sims: np.ndarray, ids: np.ndarray) -> list[Hit]:
        return [
            Hit(rank=r + 1, similarity=float(s), path=self.items[i]["path"], label=self.items[i].get("label"),
                frame=self.items[i].get("frame"), time=self.items[i].get("time"))
            for r, (s, i) in enumerate(zip(sims, ids)) if i >= 0
        ]

    def search(self, images, k: int = 10, model=None, trainer: Optional[L.Trainer] = None) -> list[Hit] | list[list[Hit]]:
        """Top-k hits for an image path (a list of hits) or a list of paths (a list per path)."""
        from zoo.embed import embed, require_some

        single = isinstance(images, (str, os.PathLike))
        model = model or self.model()
        self.check_model(model)
        emb = embed(model, records_from([images] if single else images), trainer=trainer)
        require_some(emb, "the query")
        sims, ids = self.search_vectors(emb.vectors, k)
        results = [self.hits(s, i) for s, i in zip(sims, ids)]
        return results[0] if single else results

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        check_writable(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        faiss.write_index(self.index, str(tmp / "index.faiss"))
        meta = {**self.meta, "count": len(self), "dim": self.dim, "items": self.items}
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ZooIndex":
        path = Path(path)
        if not (path / "meta.json").is_file() or not (path / "index.faiss").is_file():
            raise ZooError(f"{path} is not a zoo index (expected a folder made by `zoo index`)")
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ZooError(f"{path} has index format {meta.get('format')}; this zoo reads format {FORMAT_VERSION}")
        items = meta.pop("items")
        index = faiss.read_index(str(path / "index.faiss"))
        if index.ntotal != len(items):
            raise ZooError(f"{path} is inconsistent: {index.ntotal} vectors but {len(items)} items")
        return cls(index, meta, items)


def check_writable(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not (path / "meta.json").is_file():
            raise ZooError(f"{path} exists and is not a zoo index; refusing to replace it")
        if not overwrite:
            raise ZooError(f"{path} already exists; pass --overwrite to replace it or --update to add new files")


def load_index(path: str | Path) -> ZooIndex:
    return ZooIndex.load(path)


def build_index(
    images: str | Path | Sequence[str | Path] | Sequence[Record],
    model=None,
    out: Optional[str | Path] = None,
    factory: str = "Flat",
    overwrite: bool = False,
    update: bool = False,
    trainer: Optional[L.Trainer] = None,
    batch_size: int = 32,
    num_workers: int = 0,
    **model_kwargs,
) -> ZooIndex:
    """Embed images (a folder, files, or records) and index them; saved to ``out`` if given.

    ``model``: a ZooModel, or None to build ``ZooModel(**model_kwargs)`` (e.g. backbone="vgg16").
    ``update``: add only the files that ``out`` does not hold yet, with the index's own model.
    """
    from zoo.embed import embed
    from zoo.model import ZooModel

    if isinstance(images, (str, os.PathLike)):
        records = scan_folder(images) if Path(images).is_dir() else records_from([images])
    elif images and isinstance(images[0], Record):
        records = list(images)
    else:
        records = records_from(images)
    if update:
        if out is None or not Path(out).exists():
            raise ZooError(f"--update needs an existing index; {out} does not exist")
        index = ZooIndex.load(out)
        if model is not None:
            index.check_model(model.build())
        model = index.model()
        known = {(it["path"], it.get("frame")) for it in index.items}
        new = [r for r in records if (r.path, r.frame) not in known]
        print(f"zoo: {len(new)} new file(s) to add to {len(index)} indexed", flush=True)
    else:
        if out is not None:
            check_writable(Path(out), overwrite)  # before any expensive work
        model = (model or ZooModel(**model_kwargs)).build()
        index = ZooIndex.create(model, factory)
        new = records
    if new:
        emb = embed(model, new, trainer=trainer, batch_size=batch_size, num_workers=num_workers)
        if not update and len(emb.records) == 0:
            raise ZooError("no usable images to index")
        index.add(emb.vectors, emb.records)
        skipped = {tuple(s) for s in index.meta.get("skipped", [])} | set(emb.skipped)
        index.meta["skipped"] = [list(s) for s in sorted(skipped)]
    if out is not None:
        index.save(out, overwrite=overwrite or update)
    return index


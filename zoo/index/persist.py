"""Writing a version of an index to its folder, and opening the current version.

A version (zoo.index.folder has the layout and the lock) holds

    index.faiss         faiss.write_index; vector ids are item ids (zoo.index.factory)
    items.sqlite        one row per vector (zoo.index.store)
    meta.json           root folder, model identity and recipe, factory, counts (zoo.index.meta)
    model.safetensors   the model's own weights, when they came from a file or a checkpoint
    rerank.npy, rerank_ids.npy  full vectors of an index with lossy codes (zoo.index.rerank)
    density.npy         each item's neighbourhood density, with --hubness (zoo.index.hubness)

A new version is written beside the current one and switched to atomically, so a reader
never sees half of one; a reader that loses a race with a writer reads the new version.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import faiss
import numpy as np

from zoo.errors import ZooError
from zoo.index import folder as indexdir
from zoo.index.hubness import FILE as DENSITY_FILE
from zoo.index.meta import (check_parts_agree, keeps_own_weights, read_faiss, read_meta, recorded_precision,
                            recorded_runtime)
from zoo.index.store import ItemStore

PARTS = ("meta.json", "index.faiss", "items.sqlite")


def write_version(path: Path, index: faiss.Index, store: ItemStore, meta: dict, model=None,
                  previous: Optional[Path] = None, extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``index``, ``store`` and ``meta`` as a new version of the index at ``path`` (whose
    lock the caller holds) and switch to it; returns the new version folder. Weights that
    cannot be had again by name are kept: ``model``'s, or else the file of the ``previous``
    version (an update, whose model is unchanged)."""
    if path.is_dir():
        indexdir.clean_stale(path)  # what an earlier crash left, before this adds more
    tmp, name = indexdir.new_version(path)
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        store.save_as(tmp / "items.sqlite")
        if extra is not None:
            extra(tmp)
        if keeps_own_weights(meta["model"]["weights"]):
            meta["model"]["own_weights"] = True
            if model is not None:
                from safetensors.torch import save_file

                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                save_file(state, str(tmp / "model.safetensors"))
            elif previous is not None:
                try:
                    os.link(previous / "model.safetensors", tmp / "model.safetensors")
                except OSError:
                    shutil.copyfile(previous / "model.safetensors", tmp / "model.safetensors")
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1)
        return indexdir.commit_version(path, tmp, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def version_parts(rerank, density) -> Callable[[Path], None]:
    """write_version's ``extra``: the files beside index.faiss, re-ranking vectors and densities."""
    def write(folder: Path) -> None:
        if rerank is not None:
            rerank.save(folder)
        if density is not None:
            np.save(folder / DENSITY_FILE, np.asarray(density, np.float32), allow_pickle=False)
    return write


def open_current(path: Path, mmap: bool = True) -> tuple[faiss.Index, dict, ItemStore, Path]:
    """The current version of the index at ``path``: its FAISS index, meta, item store (read
    only) and folder, every part checked against the others."""
    for attempt in range(3):  # a writer may switch versions while this reads
        folder = indexdir.current_version(path)
        try:
            return open_version(path, folder, mmap)
        except FileNotFoundError:
            if attempt == 2:
                raise ZooError(f"{folder} is incomplete; rebuild the index") from None


def open_version(path: Path, folder: Path, mmap: bool = True) -> tuple[faiss.Index, dict, ItemStore, Path]:
    """The version ``folder`` of the index at ``path`` (see open_current); FileNotFoundError if a
    part is missing (a writer removed it meanwhile)."""
    for name in PARTS:
        if not (folder / name).is_file():
            raise FileNotFoundError(folder / name)
    meta = read_meta(folder, path)
    index = read_faiss(folder, path, mmap)
    store = ItemStore(folder / "items.sqlite", readonly=True)
    check_parts_agree(index, store, meta, path)
    return index, meta, store, folder


def current_precision(path: str | Path) -> Optional[str]:
    """The precision the current version of the index at ``path`` records (meta.json alone is
    read); None where there is no readable index there (the command then says why)."""
    try:
        path = Path(os.path.abspath(path))
        return recorded_precision(read_meta(indexdir.current_version(path), path))
    except (ZooError, OSError):
        return None


def current_runtime(path: str | Path) -> Optional[str]:
    """The runtime the current version of the index at ``path`` records (as current_precision)."""
    try:
        path = Path(os.path.abspath(path))
        return recorded_runtime(read_meta(indexdir.current_version(path), path))
    except (ZooError, OSError):
        return None

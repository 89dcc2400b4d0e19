"""meta.json of an index version, and the checks that the parts of a version agree.

meta.json holds the root folder, the model's identity and recipe (zoo.model.identity), the
precision and runtime its vectors were made at (zoo.model.inference, zoo.model.runtime; an index
without them was made at 32-true in torch), the FAISS factory and search settings, counts and dimension. It is read as untrusted input: a
damaged or edited file is a ZooError that says to rebuild, never another exception. Opening a
version also checks that index.faiss, items.sqlite and meta.json describe the same items.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from zoo.errors import ZooError
from zoo.index.factory import faiss_reason, has_item_ids
from zoo.index.hubness import check_hubness_meta
from zoo.index.store import ItemStore
from zoo.index.vectors import stored_ids
from zoo.io import read_json
from zoo.model.identity import model_identity
from zoo.model.inference import FP32, PRECISIONS
from zoo.model.runtime import RUNTIMES, TORCH
from zoo.version import __version__

META_KEYS = ("model", "factory", "root", "count", "dim")
MODEL_KEYS = ("architecture", "dim", "weights", "hparams", "recipe")
SEARCH_PARAMS = ("nprobe", "efSearch")  # the search settings meta.json may hold
MAX_SEARCH = 1 << 20
METRIC = "inner_product on L2-normalised vectors (cosine similarity)"


def new_meta(model, factory: str, search: dict[str, int], precision: str = FP32, runtime: str = TORCH) -> dict:
    """The metadata of a new index of ``model``'s embeddings made at ``precision`` by ``runtime``
    (root and counts come on saving)."""
    return {
        "zoo_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "factory": factory,
        "metric": METRIC,
        "model": model_identity(model),
        "precision": precision,
        "runtime": runtime,
        "search": search,
    }


def recorded_precision(meta: dict) -> str:
    """The precision the index's vectors were made at (a Lightning name); 32-true for an index
    that records none (made before zoo recorded it)."""
    return meta.get("precision", FP32)


def recorded_runtime(meta: dict) -> str:
    """The runtime that made the index's vectors (zoo.model.runtime); torch for an index that
    records none."""
    return meta.get("runtime", TORCH)


def keeps_own_weights(weights_id: str) -> bool:
    """Weights that cannot be had again by name (a file, a checkpoint) travel with the index."""
    return not (weights_id.startswith("hub:") or weights_id.startswith("random init"))


# ---- the model an index records ----------------------------------------------------------------
def describe_model(recorded: dict) -> str:
    return f"{recorded['architecture']} (dim {recorded['dim']}, weights: {recorded['weights']})"


def check_same_model(recorded: dict, model) -> None:
    """Refuse to compare embeddings from another model than the one ``recorded`` (meta["model"])."""
    other = model_identity(model)
    if other["dim"] != recorded["dim"] or other["architecture"] != recorded["architecture"] or other["weights"] != recorded["weights"]:
        raise ZooError(
            f"model mismatch: the index was built with {describe_model(recorded)}, the query model is "
            f"{other['architecture']} (dim {other['dim']}, weights: {other['weights']}); "
            "use the index's own model (the default) or rebuild the index"
        )


# ---- reading and checking ----------------------------------------------------------------------
def read_meta(folder: Path, path: Path) -> dict:
    """meta.json of the version ``folder`` of the index at ``path``, checked (check_meta)."""
    meta = read_json(folder / "meta.json", "meta.json", error=f"{path}: meta.json is damaged ({{reason}}); rebuild the index")
    check_meta(meta, path)
    return meta


def check_meta(meta: Any, path: Path) -> None:
    """meta.json as opening an index uses it: the keys it needs, an absolute root, and search
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
    if "precision" in meta and meta["precision"] not in PRECISIONS:
        raise damaged(f"precision {json.dumps(meta['precision'])[:40]} is not one of {', '.join(PRECISIONS)}")
    if "runtime" in meta and meta["runtime"] not in RUNTIMES[1:]:
        raise damaged(f"runtime {json.dumps(meta['runtime'])[:40]} is not one of {', '.join(RUNTIMES[1:])}")
    rerank = meta.get("rerank", {"k_factor": 1})
    if (not isinstance(rerank, dict) or isinstance(rerank.get("k_factor"), bool) or not isinstance(rerank.get("k_factor"), int)
            or not 1 <= rerank["k_factor"] <= 1024):
        raise damaged("rerank must be a mapping with an integer k_factor from 1 to 1024")
    if "hubness" in meta:
        check_hubness_meta(meta["hubness"], damaged)
    search = meta.get("search", {})
    if not isinstance(search, dict):
        raise damaged("search settings must be a mapping")
    for name, value in search.items():
        if name not in SEARCH_PARAMS or isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEARCH:
            raise damaged(f"search setting {name} {json.dumps(value)[:40]}: "
                          f"{' and '.join(SEARCH_PARAMS)} take an integer from 1 to {MAX_SEARCH}")


def read_faiss(folder: Path, path: Path, mmap: bool) -> faiss.Index:
    """index.faiss of the version ``folder``, memory-mapped if ``mmap``; a zoo index (with item ids)."""
    try:
        index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as e:
        raise ZooError(f"{path}: index.faiss is damaged ({faiss_reason(e)[:160]}); rebuild the index") from None
    if not has_item_ids(index):
        raise ZooError(f"{path}: index.faiss is not a zoo index (no item ids); rebuild the index")
    return index


def check_parts_agree(index: faiss.Index, store: ItemStore, meta: dict, path: Path) -> None:
    """index.faiss, items.sqlite and meta.json of one version hold the same items: as many
    vectors as rows, of the recorded dimension, with the same ids on both sides (a swapped or
    edited file would give other items, or none)."""
    if index.ntotal != len(store) or index.d != meta["model"]["dim"]:
        raise ZooError(f"{path} is inconsistent: index.faiss holds {index.ntotal} vectors of dim {index.d}, items.sqlite "
                       f"{len(store)} items, meta.json says dim {json.dumps(meta['model']['dim'])[:20]}; rebuild the index")
    if not _same_ids(stored_ids(index), store.ids()):
        raise ZooError(f"{path} is inconsistent: the ids in index.faiss are not the ids of items.sqlite; rebuild the index")


def _same_ids(ids: np.ndarray, expected: np.ndarray) -> bool:
    """Whether ``ids`` (any order) are the increasing ``expected``; O(N) when those are one run
    of consecutive ids (every index built in one go), so a 10M index opens in a moment."""
    if len(ids) != len(expected):
        return False
    if len(ids) == 0:
        return True
    lo, hi = int(expected[0]), int(expected[-1])
    if hi - lo + 1 == len(expected):
        if int(ids.min()) != lo or int(ids.max()) != hi:
            return False
        return bool(np.bincount(ids - lo, minlength=len(ids)).max() == 1)
    return bool(np.array_equal(np.sort(ids), expected))

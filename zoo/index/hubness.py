"""The hubness reduction of an index (``zoo index --hubness K``): each item's neighbourhood
density, stored with the index, and the re-ranking of search candidates by cosine minus weight x
density (zoo.metrics.hubness, CSLS).

meta.json records ``"hubness": {"k": K, "weight": W}``; the version folder holds

    density.npy   (max id + 1,) float32: item i's mean cosine to its K nearest other items
                  (NaN where no item has that id); read with allow_pickle=False, checked

Densities are computed again, for every item, whenever the index is saved (a build, every
``--update``): an update changes the neighbourhoods of items it did not touch. That is one
search of K + 1 neighbours per item, a chunk of stored vectors at a time (memory O(chunk)).
A search fetches max(CANDIDATES x k, MIN_CANDIDATES) candidates by cosine, keeps the nearest
first and ranks the rest by the adjusted score; the similarities it returns stay cosines, so
thresholds keep their meaning (a hit may then show a lower cosine than the one after it). The
upload check and calibrations search by plain cosine (``hubness=False``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from zoo.errors import ZooError
from zoo.index.vectors import stored_vectors
from zoo.metrics.hubness import DEFAULT_WEIGHT, check_hubness, hubness_scores

FILE = "density.npy"
CANDIDATES, MIN_CANDIDATES = 10, 100  # candidates fetched by cosine: per result, at least


def hubness_meta(k: int, weight: float) -> dict:
    """meta.json's record of the setting; ZooError for values out of range."""
    check_hubness(k, weight)
    return {"k": int(k), "weight": float(weight)}


def check_hubness_meta(value, damaged: Callable[[str], ZooError]) -> None:
    """meta.json's ``hubness`` as opening an index uses it."""
    try:
        if not isinstance(value, dict) or set(value) != {"k", "weight"} or value["k"] < 1:
            raise ZooError("hubness must be a mapping of k (1 or more) and weight")
        check_hubness(value["k"], value["weight"])
    except (ZooError, TypeError) as e:
        raise damaged(str(e).replace("--hubness", "k")) from None


def candidates(k: int, n: int) -> int:
    return min(n, max(CANDIDATES * k, MIN_CANDIDATES))


def compute_density(chunks, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], k: int,
                    max_id: int, total: int) -> np.ndarray:
    """Densities by id (max_id + 1,) float32 from ``chunks`` of (ids, vectors) and a plain
    cosine ``search``: each item's K + 1 nearest, itself left out. Progress on stderr."""
    out = np.full(max_id + 1, np.nan, np.float32)
    done, last = 0, 0
    for ids, vecs in chunks:
        sims, found = search(vecs, k + 1)
        keep = (found != ids[:, None]) & (found >= 0)
        # the k best others of each row: its own hit (anywhere) and empty slots moved to the end
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, 1)
        top = np.where(kept, np.take_along_axis(sims, order, 1), 0)
        out[ids] = top.sum(1) / np.maximum(kept.sum(1), 1)  # no other item: 0
        done += len(ids)
        if total > 50_000 and done - last >= total // 20:
            print(f"zoo: hubness: densities of {done}/{total} items", file=sys.stderr, flush=True)
            last = done
    return out


def index_density(idx, chunk: int = 4096) -> np.ndarray:
    """Every item's density in ZooIndex ``idx`` as it is now (its vectors a chunk at a time:
    the exact ones of an index with lossy codes), found by plain cosine search."""
    ids = np.sort(idx.store.ids())

    def chunks():
        if idx.rerank is not None:
            for s in range(0, len(ids), chunk):
                yield ids[s:s + chunk], idx.rerank.vectors_of(ids[s:s + chunk])
            return
        # an inverted file reads back by id through the hash-table direct map it was made with
        # (zoo.index.factory): an array map here would refuse every later add with ids
        yield from stored_vectors(idx.index, chunk)  # the search normalises them

    return compute_density(chunks(), lambda q, n: idx.search_vectors(q, n, hubness=False),
                           idx.meta["hubness"]["k"], idx.store.max_id(), len(ids))


def rerank(sims: np.ndarray, ids: np.ndarray, density: np.ndarray, weight: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of candidates (Q, C) by hubness_scores; cosines and ids, -1 empty."""
    valid = ids >= 0
    dens = np.where(valid, density[np.clip(ids, 0, len(density) - 1)], 0.0)
    dens = np.where(np.isfinite(dens), dens, 0.0)  # an id added after the densities: none
    cos = np.where(valid, sims.astype(np.float32), -np.inf)
    score = hubness_scores(cos, dens.astype(np.float32), weight)
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, 1), np.take_along_axis(ids, top, 1)


def open_density(folder: Path, path: Path, max_id: int) -> np.ndarray:
    """density.npy of version ``folder`` (of the index at ``path``), memory-mapped and checked:
    float32, one value per id up to ``max_id``, finite where an item is (values in [-1, 1])."""
    try:
        d = np.load(folder / FILE, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ZooError(f"{path}: {FILE} is missing from an index built with --hubness; rebuild the index") from None
    except (ValueError, OSError, EOFError) as e:
        raise ZooError(f"{path}: {FILE} is damaged ({' '.join(str(e).split())[:100]}); rebuild the index") from None
    if d.dtype != np.float32 or d.ndim != 1 or len(d) != max_id + 1:
        raise ZooError(f"{path}: {FILE} does not match the index ({d.shape} {d.dtype}, "
                       f"expected ({max_id + 1},) float32); rebuild the index")
    finite = np.isfinite(d)
    if np.any(np.abs(d[finite]) > 1.0 + 1e-3):
        raise ZooError(f"{path}: {FILE} holds values outside [-1, 1]; rebuild the index")
    return d


def describe(meta: dict) -> str:
    return f"hubness reduction k={meta['k']}, weight {meta['weight']:g}"


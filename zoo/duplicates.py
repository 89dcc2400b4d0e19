"""``zoo duplicates``: exact duplicates by hash, near duplicates by ``zoo.pairsearch``.

Memory stays linear in N: the search (exact below about 20k vectors, an inverted file above)
returns only the pairs above the threshold and each vector's nearest similarity (histogram),
and groups are stars or connected components of those pairs.
Nothing is deleted; ``--move-to`` quarantines all but one image per group and writes a
manifest that ``--undo`` uses to put them back.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from zoo.data import scan_folder
from zoo.errors import ZooError
from zoo.io import atomic_path, write_json
from zoo.pairsearch import (check_search_options, component_groups, exact_search, find_pairs, group_similarity_range,
                            index_vectors, make_groups, unit_rows)


# ---- exact duplicates ---------------------------------------------------------------------
def file_digest(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def exact_groups(paths: list[str]) -> list[list[str]]:
    """Files with identical bytes (same size first, then same hash)."""
    by_size = defaultdict(list)
    for p in paths:
        by_size[os.path.getsize(p)].append(p)
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash = defaultdict(list)
        for p in same_size:
            by_hash[file_digest(p)].append(p)
        groups += [sorted(g) for g in by_hash.values() if len(g) > 1]
    return sorted(groups)


# ---- near duplicates (the search and grouping live in zoo.pairsearch) -----------------------
def similar_pairs(vectors: np.ndarray, threshold: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with cosine similarity >= threshold, exactly; memory O(N + pairs).

    returns pairs (P, 2) int64 and their similarities (P,) float32.
    """
    found = exact_search(unit_rows(vectors), threshold, chunk=chunk)
    return found.pairs, found.sims


def connected_components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Groups (size >= 2) of the graph with ``n`` nodes and edges ``pairs``."""
    return [g.tolist() for g in component_groups(n, np.asarray(pairs, np.int64).reshape(-1, 2))]


# ---- the command ------------------------------------------------------------------------
def run_duplicates(model, images=None, index=None, threshold=0.95, out="duplicates", overwrite=False,
                   exact_only=False, plots=False, move_to=None, trainer=None, batch_size=32, num_workers=0,
                   search="auto", nprobe=None, grouping="star") -> dict:
    """``search``: "auto" (exact up to about 20k vectors, an inverted file above), "exact" or
    "ivf"; ``nprobe``: nearest lists each vector probes (more: higher recall, slower);
    ``grouping``: "star" (every member within the threshold of the group's first path) or
    "components" (connected components: chains of near duplicates)."""
    from zoo.embed import embed
    from zoo.index import load_index

    if (images is None) == (index is None):
        raise ZooError("give a folder (--images DIR) or an index (--index PATH)")
    if not 0.0 < threshold <= 1.0:
        raise ZooError(f"--threshold {threshold}: a cosine similarity in (0, 1] is expected")
    check_search_options(search, nprobe, grouping)
    out = Path(out)
    if (out / "groups.json").exists() and not overwrite:
        raise ZooError(f"{out} already holds duplicate results; pass --overwrite or another --out")

    exact: list[list[str]] = []
    lossy = False
    if index is not None:
        idx = load_index(index)
        paths = idx.paths
        vectors, lossy = index_vectors(idx.index)  # a view on Flat storage, else decoded once
        model_desc = idx.describe()
    else:
        records = scan_folder(images)
        exact = exact_groups([r.path for r in records])
        print(f"zoo: {len(exact)} group(s) of identical files (by hash)", file=sys.stderr)
        if exact_only:
            paths, vectors, model_desc = [], None, None
        else:
            # one copy of each identical group goes through the model
            dup_extra = {p for g in exact for p in g[1:]}
            emb = embed(model.build(), [r for r in records if r.path not in dup_extra], trainer=trainer,
                        batch_size=batch_size, num_workers=num_workers)
            paths, vectors = [r.path for r in emb.records], emb.vectors
            model_desc = f"{model.architecture} (weights: {model.weights_id})"

    near: list[dict] = []
    pair_rows = []
    hist = None
    search_info = None
    if vectors is not None and len(paths) > 1:
        found = find_pairs(vectors, threshold, method=search, nprobe=nprobe)
        search_info = {**found.summary(), "grouping": grouping,
                       "similarities": "approximate (decoded from lossy index codes)" if lossy else "exact"}
        print(f"zoo: near duplicates by {found.recall_note}"
              + ("; similarities from lossy index codes are approximate" if lossy else ""), file=sys.stderr)
        pair_rows = [(paths[a], paths[b], s) for (a, b), s in zip(found.pairs.tolist(), found.sims.tolist())]
        groups = make_groups(len(paths), found.pairs, found.sims, grouping)
        lo, hi = group_similarity_range(groups, len(paths), found.pairs, found.sims)
        near = [{"paths": [paths[i] for i in g], "min_similarity": float(a), "max_similarity": float(b)}
                for g, a, b in zip(groups, lo, hi)]
        hist = found.nearest[np.isfinite(found.nearest)]  # from the same search, no second pass

    exact_set = [sorted(g) for g in exact]
    result = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(images or index), "threshold": threshold, "model": model_desc,
        "exact_groups": exact_set, "near_groups": near, "search": search_info,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "groups.json", result)
    with atomic_path(out / "pairs.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_a", "path_b", "similarity", "kind"])
        for g in exact_set:
            for p in g[1:]:
                w.writerow([g[0], p, "1.000000", "exact"])
        for a, b, s in pair_rows:
            w.writerow([a, b, f"{s:.6f}", "near"])
    with atomic_path(out / "groups.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "kind", "path"])
        for i, g in enumerate(exact_set):
            w.writerows([[f"exact-{i}", "exact", p] for p in g])
        for i, g in enumerate(near):
            w.writerows([[f"near-{i}", "near", p] for p in g["paths"]])
    if hist is not None and len(hist):
        from zoo.plots import histogram

        histogram(hist, out / "nearest_similarity.png", f"nearest-neighbour cosine similarity ({model_desc})",
                  "cosine similarity to the nearest other image"
                  + (" (among the inverted file's candidates)" if search_info["method"] == "ivf" else ""), marks=[threshold])
    if plots:
        from zoo.index import Hit
        from zoo.plots import topk_grid

        for i, g in enumerate(near[:100]):
            hits = [Hit(rank=j + 1, similarity=float("nan"), path=p) for j, p in enumerate(g["paths"][1:12])]
            topk_grid([(g["paths"][0], None, hits)], out / f"group_{i:03d}.png", title=f"near-duplicate group {i}")
    print(f"zoo: {len(exact_set)} exact and {len(near)} near-duplicate group(s) at cosine >= {threshold} -> {out}/groups.json, groups.csv, pairs.csv")
    for i, g in enumerate(exact_set + [g["paths"] for g in near]):
        print(f"  group {i}: " + "  ".join(g))
    if move_to:
        quarantine(exact_set + [g["paths"] for g in near], Path(move_to))
    return result


def quarantine(groups: list[list[str]], dest: Path) -> Path:
    """Move all but the first image of each group under ``dest``; write a manifest to undo it."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / f"manifest-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.json"
    moves, seen = [], set()
    for gi, g in enumerate(groups):
        keep = g[0]
        for p in g[1:]:
            if p in seen or p == keep or not Path(p).exists():
                continue
            seen.add(p)
            target = dest / f"group{gi:04d}" / Path(p).name
            n = 1
            while target.exists():
                target = target.with_name(f"{Path(p).stem}-{n}{Path(p).suffix}")
                n += 1
            moves.append({"from": str(Path(p).resolve()), "to": str(target.resolve()), "kept": keep})
    write_json(manifest, {"moves": moves})  # written before anything moves
    for m in moves:
        Path(m["to"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(m["from"], m["to"])
    print(f"zoo: moved {len(moves)} file(s) to {dest}; undo with `zoo duplicates --undo {manifest}`")
    return manifest


def undo_quarantine(manifest: str | Path) -> int:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ZooError(f"no such manifest: {manifest}")
    moves = json.loads(manifest.read_text())["moves"]
    restored = 0
    for m in moves:
        src, dst = Path(m["to"]), Path(m["from"])
        if not src.exists():
            print(f"zoo: warning: {src} is gone; cannot restore {dst}", file=sys.stderr)
            continue
        if dst.exists():
            print(f"zoo: warning: {dst} exists again; leaving {src} where it is", file=sys.stderr)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        restored += 1
    print(f"zoo: restored {restored} of {len(moves)} file(s)")
    return restored

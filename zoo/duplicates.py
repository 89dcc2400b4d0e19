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
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from zoo.data import scan_folder
from zoo.errors import ZooError
from zoo.io import atomic_path, check_writable_dir, sha256_file, write_json
from zoo.pairsearch import (check_search_options, component_groups, exact_search, find_pairs, group_similarity_range,
                            make_groups, unit_rows)


# ---- exact duplicates ---------------------------------------------------------------------
def exact_groups(paths: list[str]) -> list[list[str]]:
    """Files with identical bytes (same size first, then same hash); a file that cannot be read
    (gone, or no longer a regular file) is reported and left out."""
    def hashed(key, p: str) -> tuple:
        try:
            return key(p)
        except (OSError, ValueError) as e:
            print(f"zoo: skipped {p} ({getattr(e, 'strerror', None) or e})", file=sys.stderr)
            return None

    by_size = defaultdict(list)
    for p in paths:
        by_size[hashed(os.path.getsize, p)].append(p)
    groups = []
    for size, same_size in by_size.items():
        if size is None or len(same_size) < 2:
            continue
        by_hash = defaultdict(list)
        for p in same_size:
            by_hash[hashed(sha256_file, p)].append(p)
        groups += [sorted(g) for h, g in by_hash.items() if h is not None and len(g) > 1]
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
                   search="auto", nprobe=None, grouping="star", background=None, background_k=10) -> dict:
    """``search``: "auto" (exact up to about 20k vectors, an inverted file above), "exact" or
    "ivf"; ``nprobe``: nearest lists each vector probes (more: higher recall, slower);
    ``grouping``: "star" (every member within the threshold of the group's first path) or
    "components" (connected components: chains of near duplicates); ``background``: a folder or
    index whose k-th nearest similarity is subtracted from each pair's (zoo.normalise)."""
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
    check_writable_dir(out, f"--out {out}")

    exact: list[list[str]] = []
    lossy = False
    if index is not None:
        idx = load_index(index)
        root = idx.root
        ids, vectors, lossy = idx.vectors()
        paths = idx.paths_of(ids)
        model_desc = idx.describe()
    else:
        root = Path(os.path.abspath(images))
    if move_to:
        check_quarantine_target(Path(move_to), root)
    if index is None:
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
        if background is not None:  # scores relative to a background set (zoo.normalise), exact
            from zoo.normalise import background_similarity, background_vectors, normalised_pairs

            bg_model = idx.model() if index is not None else model
            expect = ((idx.meta["model"]["architecture"], idx.meta["model"]["weights"]) if index is not None
                      else (model.architecture, model.weights_id))
            bg = background_similarity(vectors, background_vectors(background, bg_model, trainer, batch_size, num_workers,
                                                                   expect=expect), background_k)
            pairs, sims = normalised_pairs(vectors, bg, threshold)
            pairs, sims = np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(sims, np.float32)
            nearest = None
            search_info = {"method": "exact, normalised against a background set", "grouping": grouping}
        else:
            found = find_pairs(vectors, threshold, method=search, nprobe=nprobe)
            search_info = {**found.summary(), "grouping": grouping,
                           "similarities": "approximate (decoded from lossy index codes)" if lossy else "exact"}
            print(f"zoo: near duplicates by {found.recall_note}"
                  + ("; similarities from lossy index codes are approximate" if lossy else ""), file=sys.stderr)
            pairs, sims, nearest = found.pairs, found.sims, found.nearest
        pair_rows = [(paths[a], paths[b], s) for (a, b), s in zip(pairs.tolist(), sims.tolist())]
        groups = make_groups(len(paths), pairs, sims, grouping)
        lo, hi = group_similarity_range(groups, len(paths), pairs, sims)
        near = [{"paths": [paths[i] for i in g], "min_similarity": float(a), "max_similarity": float(b)}
                for g, a, b in zip(groups, lo, hi)]
        if nearest is not None:
            hist = nearest[np.isfinite(nearest)]  # from the same search, no second pass

    exact_set = [sorted(g) for g in exact]
    result = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(images or index), "threshold": threshold, "model": model_desc,
        **({"background": str(background), "background_k": background_k} if background is not None else {}),
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
        quarantine(exact_set + [g["paths"] for g in near], Path(move_to), root)
    return result


# ---- quarantine and undo ------------------------------------------------------------------
def check_quarantine_target(dest: Path, root: Path) -> None:
    dest, root = Path(os.path.abspath(dest)), Path(os.path.abspath(root))
    if dest == root or root in dest.parents or dest in root.parents:
        raise ZooError(f"--move-to {dest} must be outside the scanned folder {root} (and not hold it)")
    check_writable_dir(dest, f"--move-to {dest}")


def components(groups: list[list[str]]) -> list[list[str]]:
    """Groups that share a file merged into one (exact and near groups can overlap)."""
    paths = sorted({p for g in groups for p in g})
    at = {p: i for i, p in enumerate(paths)}
    edges = np.array([(at[g[0]], at[p]) for g in groups for p in g[1:]], np.int64).reshape(-1, 2)
    return sorted(sorted(paths[i] for i in c) for c in connected_components(len(paths), edges))


def best_file(paths: list[str]) -> str:
    """The copy to keep: most pixels, then largest file, then first by name."""
    from PIL import Image

    def quality(p: str):
        try:
            with Image.open(p) as im:
                pixels = im.size[0] * im.size[1]
        except Exception:
            pixels = -1
        size = os.path.getsize(p) if os.path.exists(p) else -1
        return (-pixels, -size, p)

    return min(paths, key=quality)


def inside(path: str | Path, root: Path) -> bool:
    """``path`` lies under ``root``, also after following links in its folders."""
    path = Path(os.path.abspath(path))
    real_parent = Path(os.path.realpath(path.parent))
    return root in path.parents and Path(os.path.realpath(root)) in (real_parent, *real_parent.parents)


def move_no_clobber(src: Path, dst: Path) -> None:
    """Move a file without ever replacing one at ``dst`` (FileExistsError instead)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)  # fails if dst exists
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise
        with open(src, "rb") as fin, open(dst, "xb") as fout:  # another file system
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, dst)
    os.unlink(src)


def quarantine(groups: list[list[str]], dest: Path, root: Path) -> Path:
    """Move all but the best file of each connected group under ``dest/BATCH/`` at the same
    path relative to ``root``; every move is in the manifest before any file moves."""
    root = Path(os.path.abspath(root))
    check_quarantine_target(dest, root)
    dest = Path(os.path.abspath(dest))
    batch = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    moves = []
    for g in components(groups):
        present = [p for p in g if os.path.isfile(p)]
        if len(present) < 2:
            continue
        keep = best_file(present)
        for p in present:
            if p == keep:
                continue
            if not inside(p, root):
                print(f"zoo: warning: {p} is outside {root}; not moved", file=sys.stderr)
                continue
            rel = Path(os.path.abspath(p)).relative_to(root).as_posix()
            moves.append({"from": str(Path(os.path.abspath(p))), "to": f"{batch}/{rel}", "kept": keep})
    manifest = dest / f"manifest-{batch}.json"
    dest.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"root": str(root), "batch": batch, "moves": moves})  # before anything moves
    for m in moves:
        move_no_clobber(Path(m["from"]), dest / m["to"])
    print(f"zoo: moved {len(moves)} file(s) to {dest / batch}; undo with `zoo duplicates --undo {manifest}`")
    return manifest


def undo_quarantine(manifest: str | Path) -> int:
    """Put quarantined files back. Only files inside the manifest's own folder move, each only
    to the place its manifest entry names (which must mirror where it sits in the quarantine),
    never over an existing file."""
    manifest = Path(os.path.abspath(manifest))
    if not manifest.is_file():
        raise ZooError(f"no such manifest: {manifest}")
    qdir = manifest.parent
    try:
        data = json.loads(manifest.read_text())
        root, batch, moves = Path(data["root"]), str(data["batch"]), list(data["moves"])
        if not root.is_absolute() or not all(isinstance(m, dict) and isinstance(m.get("from"), str)
                                             and isinstance(m.get("to"), str) for m in moves):
            raise ValueError("bad entries")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ZooError(f"{manifest} is not a zoo quarantine manifest ({e})") from None
    restored = 0
    for m in moves:
        src, dst = qdir / m["to"], Path(m["from"])
        try:
            rel = dst.relative_to(root).as_posix()
        except ValueError:
            rel = None
        if (rel is None or ".." in Path(rel).parts or m["to"] != f"{batch}/{rel}" or ".." in Path(m["to"]).parts
                or not inside(src, qdir) or os.path.normpath(dst) != str(dst)):
            print(f"zoo: warning: refusing manifest entry {m['to']} -> {m['from']}: it does not mirror "
                  f"its place in {qdir}", file=sys.stderr)
            continue
        if not src.is_file() or src.is_symlink():
            print(f"zoo: warning: {src} is gone; cannot restore {dst}", file=sys.stderr)
            continue
        if not dst.parent.is_dir():
            print(f"zoo: warning: folder {dst.parent} no longer exists; leaving {src} where it is", file=sys.stderr)
            continue
        try:
            move_no_clobber(src, dst)
        except FileExistsError:
            print(f"zoo: warning: {dst} exists again; leaving {src} where it is", file=sys.stderr)
            continue
        restored += 1
    print(f"zoo: restored {restored} of {len(moves)} file(s)")
    return restored

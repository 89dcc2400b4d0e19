"""``zoo duplicates``: exact duplicates by hash, near duplicates by ``zoo.pairsearch``.

Memory stays linear in N: the search (exact below about 20k vectors, an inverted file above)
returns only the pairs above the threshold and each vector's nearest similarity (histogram),
and groups are stars or connected components of those pairs.
Nothing is deleted; ``--move-to`` quarantines all but one image per group and writes a
signed manifest that ``--undo`` uses to put them back.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import sys
from collections import defaultdict
from pathlib import Path, PurePath, PurePosixPath
from typing import Optional

import numpy as np

from zoo.data.images import scan_folder
from zoo.dedup.background import (
    background_similarity,
    background_vectors,
    normalised_pairs,
)
from zoo.dedup.groups import component_groups, group_similarity_range, make_groups
from zoo.dedup.pairsearch import check_search_options, find_pairs
from zoo.embed.runner import embed
from zoo.errors import ZooError
from zoo.index.core import Hit, load_index
from zoo.io import (
    atomic_path,
    check_writable_dir,
    open_regular,
    sha256_file,
    write_json,
)


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


# ---- near duplicates (the search lives in zoo.dedup.pairsearch, grouping in zoo.dedup.groups) ----

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
        from zoo.report.plots import histogram

        histogram(hist, out / "nearest_similarity.png", f"nearest-neighbour cosine similarity ({model_desc})",
                  "cosine similarity to the nearest other image"
                  + (" (among the inverted file's candidates)" if search_info["method"] == "ivf" else ""), marks=[threshold])
    if plots:
        from zoo.report.plots import topk_grid

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
# A quarantine folder may be handed over, so --undo trusts nothing in it: a manifest is signed
# with a secret key kept in the user's own state folder, and records each file's SHA-256.
# --undo acts only on a manifest this user's zoo signed, moves back only files whose bytes are
# the ones zoo moved, each to the exact place it came from (inside the recorded root), through
# folders opened one by one without following a link, and never over an existing file.
def key_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "zoo" / "quarantine.key"


def quarantine_key(create: bool = False) -> Optional[bytes]:
    """This user's secret that signs quarantine manifests (made on first use with ``create``)."""
    path = key_path()
    if create and not os.path.lexists(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # complete before it is visible; never replaces a key
            except FileExistsError:
                pass  # another process made one just now
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise ZooError(f"cannot keep zoo's quarantine key in {path.parent} ({e.strerror}); "
                           f"set XDG_STATE_HOME to a writable folder") from None
    try:
        with open_regular(path, follow_links=False) as f:
            st = os.fstat(f.fileno())
            key = f.read(256).strip()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ZooError(f"cannot read zoo's quarantine key {path} ({getattr(e, 'strerror', None) or e})") from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or len(key) < 32:
        raise ZooError(f"zoo's quarantine key {path} is not a private file of this user, or is damaged; remove it")
    return key


def signature(key: bytes, body: dict) -> str:
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


def check_quarantine_target(dest: Path, root: Path) -> None:
    dest, root = Path(os.path.realpath(dest)), Path(os.path.realpath(root))
    if dest == root or root in dest.parents or dest in root.parents:
        raise ZooError(f"--move-to {dest} must be outside the scanned folder {root} (and not hold it)")
    check_writable_dir(dest, f"--move-to {dest}")
    quarantine_key(create=True)


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
            with open_regular(p) as f, Image.open(f) as im:
                pixels = im.size[0] * im.size[1]
        except Exception:
            pixels = -1
        size = os.path.getsize(p) if os.path.exists(p) else -1
        return (-pixels, -size, p)

    return min(paths, key=quality)


def open_folder(top: Path, parts: tuple[str, ...], create: bool = False) -> int:
    """A descriptor of the folder ``top/parts...``, reached one folder at a time without
    following a link below ``top``; ``create`` makes missing folders. OSError (naming the
    folder) for a link, a file or a missing folder on the way."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where = top
    try:
        for part in parts:
            where = where / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(where)) from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def move_no_clobber(src_dir: int, dst_dir: int, name: str) -> None:
    """Move the file ``name`` from one open folder to another, never over an existing file
    (FileExistsError) and never through a link."""
    try:
        os.link(name, name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)  # fails if it exists
    except FileExistsError:
        raise
    except OSError:  # another file system
        with open_regular(name, dir_fd=src_dir, follow_links=False) as fin:
            st = os.fstat(fin.fileno())
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         stat.S_IMODE(st.st_mode), dir_fd=dst_dir)
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout)
                fout.flush()
                os.fsync(fd)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.unlink(name, dir_fd=src_dir)


def move_between(src_top: Path, src: PurePath, dst_top: Path, dst: PurePath, create: bool) -> None:
    """Move ``src_top/src`` to ``dst_top/dst`` (same file name) through open folders."""
    src_dir = open_folder(src_top, src.parts[:-1])
    try:
        dst_dir = open_folder(dst_top, dst.parts[:-1], create=create)
        try:
            move_no_clobber(src_dir, dst_dir, src.name)
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)


def quarantine(groups: list[list[str]], dest: Path, root: Path) -> Path:
    """Move all but the best file of each connected group to ``dest/BATCH/`` at the same path
    relative to ``root``. Only regular files (not links) whose real folder is inside ``root``
    move; every move is in the signed manifest before any file moves."""
    root = Path(os.path.realpath(root))
    check_quarantine_target(dest, root)
    dest = Path(os.path.abspath(dest))
    batch = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    moves = []
    for g in components(groups):
        present = [p for p in g if os.path.isfile(p) and not os.path.islink(p)]
        if len(present) < 2:
            continue
        keep = best_file(present)
        for p in present:
            if p == keep:
                continue
            real = Path(os.path.realpath(os.path.dirname(os.path.abspath(p)))) / os.path.basename(p)
            if root not in real.parents:
                print(f"zoo: warning: {p} is outside {root}; not moved", file=sys.stderr)
                continue
            rel = real.relative_to(root).as_posix()
            moves.append({"from": str(real), "to": f"{batch}/{rel}", "kept": keep,
                          "sha256": sha256_file(real, follow_links=False)})
    body = {"kind": "zoo-quarantine", "root": str(root), "batch": batch, "moves": moves}
    manifest = dest / f"manifest-{batch}.json"
    dest.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {**body, "signature": signature(quarantine_key(), body)})  # before anything moves
    moved = 0
    for m in moves:
        try:
            move_between(root, PurePath(m["from"]).relative_to(root), dest, PurePosixPath(m["to"]), create=True)
            moved += 1
        except (OSError, ValueError) as e:
            print(f"zoo: warning: cannot move {m['from']} ({getattr(e, 'strerror', None) or e}); left where it is",
                  file=sys.stderr)
    print(f"zoo: moved {moved} file(s) to {dest / batch}; undo with `zoo duplicates --undo {manifest}`")
    return manifest


def read_manifest(manifest: Path) -> tuple[Path, str, list[dict]]:
    """(root, batch, moves) of a manifest this user's zoo signed; a ZooError for anything else."""
    try:
        with open_regular(manifest) as f:
            data = json.loads(f.read())
        body = {k: v for k, v in data.items() if k != "signature"}
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError) as e:
        raise ZooError(f"{manifest} is not a zoo quarantine manifest ({str(e)[:200]})") from None
    key = quarantine_key()
    if key is None or not isinstance(data.get("signature"), str) or not hmac.compare_digest(
            data["signature"], signature(key, body)):
        raise ZooError(f"{manifest} was not written by this user's `zoo duplicates --move-to` (its signature "
                       f"does not match); nothing was moved")
    root, batch, moves = Path(str(data.get("root"))), str(data.get("batch")), data.get("moves")
    if not root.is_absolute() or not isinstance(moves, list) or not all(
            isinstance(m, dict) and all(isinstance(m.get(k), str) for k in ("from", "to", "sha256")) for m in moves):
        raise ZooError(f"{manifest} is not a zoo quarantine manifest (bad entries)")
    return root, batch, moves


def undo_quarantine(manifest: str | Path) -> int:
    """Put quarantined files back (see above). An entry that cannot go back (its file changed
    or gone, its folder gone or now a link, a file in its place) is reported and stays in the
    quarantine; the others are restored."""
    manifest = Path(os.path.abspath(manifest))
    if not manifest.is_file():
        raise ZooError(f"no such manifest: {manifest}")
    qdir = manifest.parent
    root, batch, moves = read_manifest(manifest)
    restored = 0
    for m in moves:
        src, dst = PurePosixPath(m["to"]), Path(m["from"])
        try:
            rel = dst.relative_to(root)
        except ValueError:
            rel = None
        if (rel is None or not rel.parts or ".." in rel.parts or m["to"] != f"{batch}/{rel.as_posix()}"
                or ".." in src.parts or src.is_absolute() or os.path.normpath(dst) != str(dst)):
            print(f"zoo: warning: refusing manifest entry {m['to']} -> {m['from']}: it does not mirror "
                  f"its place in {qdir}", file=sys.stderr)
            continue
        where = qdir / src
        try:
            folder = open_folder(qdir, src.parts[:-1])
            try:
                same = sha256_file(src.name, dir_fd=folder, follow_links=False) == m["sha256"]
            finally:
                os.close(folder)
        except FileNotFoundError:
            print(f"zoo: warning: {where} is gone; cannot restore {dst}", file=sys.stderr)
            continue
        except (OSError, ValueError) as e:
            print(f"zoo: warning: {where} is not a regular file in a real folder ({getattr(e, 'strerror', None) or e}); "
                  f"not restored", file=sys.stderr)
            continue
        if not same:
            print(f"zoo: warning: {where} is not the file zoo moved (its bytes changed); not restored", file=sys.stderr)
            continue
        try:
            move_between(qdir, src, root, rel, create=False)
        except FileExistsError:
            print(f"zoo: warning: {dst} exists again; leaving {where} where it is", file=sys.stderr)
            continue
        except OSError as e:
            what = (f"{e.filename} is not a real folder" if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT)
                    else f"cannot restore {dst}")
            print(f"zoo: warning: {what} ({e.strerror}); leaving {where} where it is", file=sys.stderr)
            continue
        restored += 1
    print(f"zoo: restored {restored} of {len(moves)} file(s)")
    return restored

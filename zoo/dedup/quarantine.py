"""The quarantine of ``zoo duplicates --move-to`` and its ``--undo``.

Nothing is deleted: all but the best file of each group (most pixels, then largest file, then
first by name) move to ``DEST/BATCH/`` at their path relative to the scanned folder, and a
manifest of the moves is written, signed, before any file moves.

A quarantine folder may be handed over, so ``--undo`` trusts nothing in it: a manifest is
signed (HMAC-SHA-256) with a secret key kept in the user's own state folder, and records each
file's SHA-256. ``--undo`` acts only on a manifest this user's zoo signed, moves back only files
whose bytes are the ones zoo moved, each to the exact place it came from (inside the recorded
root), through folders opened one by one without following a link, and never over an existing
file.
"""
from __future__ import annotations

import contextlib
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
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Optional, Sequence

import numpy as np

from zoo.dedup.facts import file_facts
from zoo.dedup.groups import connected_components
from zoo.dedup.keep import DEFAULT_RULES, choose_keep
from zoo.errors import ZooError
from zoo.io import check_writable_dir, open_regular, read_json, sha256_file, write_json


# ---- the signing key and the manifest ------------------------------------------------------
def key_path() -> Path:
    """Where this user's quarantine key lives: ``$XDG_STATE_HOME/zoo/quarantine.key``."""
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
    """HMAC-SHA-256 of the manifest ``body`` (canonical JSON) under ``key``."""
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


def check_quarantine_target(dest: Path, root: Path) -> None:
    """A ZooError unless ``dest`` is a writable folder apart from ``root``; makes the key."""
    dest, root = Path(os.path.realpath(dest)), Path(os.path.realpath(root))
    if dest == root or root in dest.parents or dest in root.parents:
        raise ZooError(f"--move-to {dest} must be outside the scanned folder {root} (and not hold it)")
    check_writable_dir(dest, f"--move-to {dest}")
    quarantine_key(create=True)


def read_manifest(manifest: Path) -> tuple[Path, str, list[dict]]:
    """(root, batch, moves) of a manifest this user's zoo signed; a ZooError for anything else."""
    data = read_json(manifest, "a zoo quarantine manifest")
    try:
        body = {k: v for k, v in data.items() if k != "signature"}
    except AttributeError as e:
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


# ---- which file stays ---------------------------------------------------------------------
def components(groups: list[list[str]]) -> list[list[str]]:
    """Groups that share a file merged into one (exact and near groups can overlap)."""
    paths = sorted({p for g in groups for p in g})
    at = {p: i for i, p in enumerate(paths)}
    edges = np.array([(at[g[0]], at[p]) for g in groups for p in g[1:]], np.int64).reshape(-1, 2)
    return sorted(sorted(paths[i] for i in c) for c in connected_components(len(paths), edges))


def best_file(paths: list[str], rules: Sequence[str] = DEFAULT_RULES) -> str:
    """The copy to keep (zoo.dedup.keep: most pixels, then least compressed, then sharpest, then
    oldest EXIF date, then largest file, then first by name)."""
    return paths[choose_keep([file_facts(p) for p in paths], rules).index]


def is_under(path: Path, folders: Sequence[Path]) -> Optional[Path]:
    """The first of ``folders`` (real paths) that holds ``path``, or None."""
    return next((f for f in folders if f == path or f in path.parents), None)


def check_movable(path: str, root: Path, protect: Sequence[Path] = ()) -> tuple[Optional[Path], Optional[str]]:
    """(its real path, None) when the file ``path`` may move to a quarantine of ``root`` (a real
    path), else (None, why): gone, a link, not a regular file, outside ``root``, reached through
    a linked folder, or in one of the ``protect`` folders (real paths)."""
    path = os.path.abspath(path)
    if not os.path.lexists(path):
        return None, "gone"
    if os.path.islink(path):
        return None, "a link"
    if not os.path.isfile(path):
        return None, "not a regular file"
    real = Path(os.path.realpath(os.path.dirname(path))) / os.path.basename(path)
    if root not in real.parents:
        return None, f"outside {root}"
    if not _no_link_below(Path(path), root):
        return None, "reached through a linked folder"
    held = is_under(real, protect)
    if held is not None:
        return None, f"in the protected folder {held}"
    return real, None


def _no_link_below(path: Path, root: Path) -> bool:
    """Whether ``path`` reaches ``root`` (a real path) through its own parents, none of them a
    link below ``root`` (a link above it, e.g. /tmp -> /private/tmp, is the root's own name)."""
    for folder in path.parents:
        if os.path.realpath(folder) == str(root):
            return True
        if os.path.islink(folder):
            return False
    return False


# ---- moving files through open folders ----------------------------------------------------
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


# ---- quarantine and undo -------------------------------------------------------------------
@dataclass
class Batch:
    """What one quarantine did: its manifest, the files moved, those refused or left (with why)."""
    manifest: Path
    batch: str
    moved: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def move_files(entries: Sequence[tuple[str, str]], dest: Path, root: Path, protect: Sequence[str | Path] = (),
               deadline: Optional[float] = None) -> Batch:
    """Move each ``(path, kept)`` of ``entries`` to ``dest/BATCH/`` at its path relative to
    ``root``; ``kept`` (the file of its group that stays) goes into the manifest. Only files
    check_movable allows move; every move is in the signed manifest before any file moves, and
    none after ``deadline`` (time.monotonic()) moves. The one mover of `zoo duplicates --move-to`
    and of `zoo serve`'s review page."""
    root = Path(os.path.realpath(root))
    protect = [Path(os.path.realpath(p)) for p in protect]
    check_quarantine_target(dest, root)
    dest = Path(os.path.abspath(dest))
    batch = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    moves, refused = [], []
    for p, keep in entries:
        real, why = check_movable(p, root, protect)
        if real is None:
            refused.append((p, why))
            continue
        rel = real.relative_to(root).as_posix()
        try:
            digest = sha256_file(real, follow_links=False)
        except (OSError, ValueError) as e:
            refused.append((p, f"unreadable ({getattr(e, 'strerror', None) or e})"))
            continue
        moves.append({"from": str(real), "to": f"{batch}/{rel}", "kept": keep, "sha256": digest})
    body = {"kind": "zoo-quarantine", "root": str(root), "batch": batch, "moves": moves}
    manifest = dest / f"manifest-{batch}.json"
    dest.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {**body, "signature": signature(quarantine_key(), body)})  # before anything moves
    done = Batch(manifest, batch, refused=refused)
    for m in moves:
        if deadline is not None and time.monotonic() > deadline:
            done.refused.append((m["from"], "not moved: the request's time ran out"))
            continue
        try:
            move_between(root, PurePath(m["from"]).relative_to(root), dest, PurePosixPath(m["to"]), create=True)
            done.moved.append(m["from"])
        except (OSError, ValueError) as e:
            done.refused.append((m["from"], f"cannot move ({getattr(e, 'strerror', None) or e}); left where it is"))
    return done


def quarantine(groups: list[list[str]], dest: Path, root: Path, rules: Sequence[str] = DEFAULT_RULES,
               protect: Sequence[str | Path] = ()) -> Path:
    """Move all but the file to keep of each connected group (zoo.dedup.keep, ``rules``; a file in
    one of the ``protect`` folders is kept first and never moves) to ``dest/BATCH/`` at the same
    path relative to ``root`` (move_files)."""
    real_root = Path(os.path.realpath(root))
    held = [Path(os.path.realpath(p)) for p in protect]
    entries = []
    for g in components(groups):
        present = [p for p in g if os.path.isfile(p) and not os.path.islink(p)]
        if len(present) < 2:
            continue
        real = [Path(os.path.realpath(p)) for p in present]
        keep = present[choose_keep([file_facts(p) for p in present], rules,
                                   [is_under(r, held) is not None for r in real]).index]
        entries += [(p, keep) for p in present if p != keep]
    done = move_files(entries, dest, real_root, held)
    for p, why in done.refused:
        print(f"zoo: warning: {p} is {why}; not moved" if why.startswith(("outside", "in the protected", "a link", "gone"))
              else f"zoo: warning: {p}: {why}", file=sys.stderr)
    print(f"zoo: moved {len(done.moved)} file(s) to {Path(os.path.abspath(dest)) / done.batch}; "
          f"undo with `zoo duplicates --undo {done.manifest}`")
    return done.manifest


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

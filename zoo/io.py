"""Atomic file writes, the no-overwrite rule, where files can be written, locks, and reading
only regular files."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

from zoo.errors import ZooError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_dir(folder: Path, what: str = "") -> None:
    """The folder, or the nearest existing parent it would be created in, must take new files
    (tried for real: permission bits say nothing for root or on a read-only file system)."""
    import tempfile

    p = Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ZooError(f"cannot write {what or folder}: {p} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".zoo-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ZooError(f"cannot write {what or folder}: {p} is not writable ({e.strerror})") from None


def refuse_overwrite(path: str | Path, overwrite: bool) -> None:
    """Refuse to replace ``path`` without --overwrite, or to write where nothing can be written."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ZooError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise ZooError(f"{path} is a folder; give a file name")
    check_writable_dir(path.parent, str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """A CSV file with one row per dict (columns from the first), atomically."""
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, word in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "link")):
        if test(mode):
            return word
    return "special file"


def open_regular(path: str | Path, dir_fd: Optional[int] = None, follow_links: bool = True) -> BinaryIO:
    """Open a regular file for reading; a named pipe, a device or a folder raises ValueError at
    once instead of blocking or reading for ever. ``dir_fd``: ``path`` is relative to this open
    folder; ``follow_links=False``: a link is refused too (OSError)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)  # a pipe opens without waiting for a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"not a regular file ({kind_of(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


MAX_JSON_BYTES = 256 << 20  # the largest JSON file zoo reads (a groups.json of millions of groups fits)


def read_json(path: str | Path, what: str, max_bytes: int = MAX_JSON_BYTES,
              error: str = "{path} is not {what} ({reason})") -> Any:
    """The JSON value in the regular file ``path``: the one reader of every JSON file a user may be
    handed. Not a regular file, larger than ``max_bytes``, not UTF-8, not JSON, or nested too
    deep: a one-line ZooError, ``error`` filled with the path, ``what`` the file should have been
    and the reason. A missing file raises FileNotFoundError for the caller to word."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ValueError(f"{size} bytes, more than the {max_bytes} a {what} may have")
            return json.loads(f.read(max_bytes + 1).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError, OSError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else " ".join(str(e).split())[:200]
        raise ZooError(error.format(path=path, what=what, reason=reason)) from None


def sha256_file(path: str | Path, chunk: int = 1 << 20, **how) -> str:
    """The SHA-256 of a regular file's bytes (ValueError for anything else); ``how``: open_regular's."""
    h = hashlib.sha256()
    with open_regular(path, **how) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | Path, waiting: Optional[str] = None) -> Iterator[None]:
    """Hold an exclusive flock(2) on the file ``path``, created if need be. The file is never
    truncated, never opened through a link and must be a regular file, so a lock file planted as
    a link to a user's file is refused and its target left alone. Another holder makes this one
    wait; ``waiting`` is then printed on stderr first."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise ZooError(f"{path} is a link; zoo takes its lock only on a file of its own (remove the link)") from None
        raise ZooError(f"cannot lock {path} ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ZooError(f"{path} is not a regular file ({kind_of(mode)}); zoo takes its lock only on a file of its own")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock

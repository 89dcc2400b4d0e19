"""Atomic file writes, the no-overwrite rule, and where files can be written."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

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

"""The folder an index lives in: versioned contents, an atomic switch, and a lock.

    my.index/
      ZOO_INDEX.json     {"kind": "zoo-index", "format": 2, "current": "v-000002"}
      v-000002/          index.faiss, items.sqlite, meta.json[, model.safetensors]
      .lock              held while a process writes (zoo.io.file_lock)
      .embed-<key>/      embeddings of a run in progress, or of one that stopped (zoo.index.shards)

A new version is written to a temporary folder, fsynced and renamed to ``v-N``; then
``ZOO_INDEX.json`` is replaced in one ``os.replace``. A crash at any point leaves the marker
pointing at a complete version; whatever the crash left behind (``.tmp-*``, old ``v-*``) is
removed by the next writer, under the lock. zoo replaces or cleans only a folder that is
provably its own: the marker and nothing but the entries above inside.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zoo.errors import ZooError
from zoo.io import check_writable_dir, file_lock, fsync_dir, read_json

MARKER = "ZOO_INDEX.json"
LOCK = ".lock"
FORMAT = 2
_VERSION = re.compile(r"^v-\d{6}$")
_TEMP = re.compile(r"^\.tmp-[0-9a-f]{32}$")
WORK = re.compile(r"^\.embed-[0-9a-f]{24}$")  # zoo.index.shards


def read_marker(path: Path) -> dict:
    """The marker of the index at ``path``; a clear error for anything else."""
    marker = path / MARKER
    if not marker.is_file():
        if (path / "meta.json").is_file() and (path / "index.faiss").is_file():
            raise ZooError(f"{path} is an index of an older zoo (format 1); build a new one with `zoo index --images ROOT --out NEW`")
        raise ZooError(f"{path} is not a zoo index (expected a folder made by `zoo index`)")
    m = read_json(marker, "a zoo index marker", max_bytes=1 << 16, error="{path} is damaged ({reason}); rebuild the index")
    if not isinstance(m, dict) or m.get("kind") != "zoo-index" or not _VERSION.match(str(m.get("current", ""))):
        raise ZooError(f"{marker} is damaged (not a zoo index marker); rebuild the index")
    if m.get("format") != FORMAT:
        raise ZooError(f"{path} has index format {m.get('format')}; this zoo reads format {FORMAT}")
    return m


def is_own(path: Path) -> bool:
    """True if ``path`` holds a zoo index and nothing else (so zoo may replace its contents)."""
    try:
        read_marker(path)
    except ZooError:
        return False
    return all(e.name in (MARKER, LOCK) or _VERSION.match(e.name) or _TEMP.match(e.name) or WORK.match(e.name)
               for e in path.iterdir())


def current_version(path: Path) -> Path:
    return path / read_marker(path)["current"]


def check_target(out: Path, overwrite: bool, update: bool, sources: tuple[Path, ...] = ()) -> None:
    """May an index be written at ``out``? Refuses before any work is done."""
    out = Path(os.path.abspath(out))
    for src in sources:
        src = Path(os.path.abspath(src))
        if out == src or out in src.parents:
            raise ZooError(f"--out {out} is the input folder or holds it; choose another --out")
    if out.exists() and not out.is_dir():
        raise ZooError(f"{out} exists and is not a zoo index; refusing to replace it")
    if out.is_dir() and any(e.name != LOCK and not _TEMP.match(e.name) and not WORK.match(e.name) for e in out.iterdir()):
        if not is_own(out):
            if (out / MARKER).exists() or (out / "meta.json").exists():
                read_marker(out)  # the precise reason (older format, damaged marker) if there is one
            raise ZooError(f"{out} holds files that are not part of a zoo index; refusing to "
                           f"{'write there' if update else 'replace it'}")
        if not overwrite and not update:
            raise ZooError(f"{out} already exists; pass --overwrite to replace it or --update to add new files")
    elif update:
        raise ZooError(f"--update needs an existing index; {out} does not exist")
    check_writable_dir(out)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out/.lock``; another process that holds it makes this one wait, and says so."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(out / LOCK, waiting=f"zoo: {out} is being written by another zoo process; waiting for it to finish"):
            yield
    finally:
        if created and not (out / MARKER).exists():
            if any(WORK.match(e.name) and any(e.glob("*.index.npy")) for e in out.iterdir()):
                print(f"zoo: the embeddings made so far are kept in {out}; the same command resumes from them",
                      file=sys.stderr, flush=True)
            else:  # nothing was written: leave no empty folder behind
                shutil.rmtree(out, ignore_errors=True)


def new_version(out: Path) -> tuple[Path, str]:
    """A fresh temporary folder inside ``out`` and the version name it will get (call under the lock)."""
    try:
        n = int(read_marker(out)["current"][2:]) + 1
    except ZooError:
        n = 1
    tmp = out / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    return tmp, f"v-{n:06d}"


def commit_version(out: Path, tmp: Path, name: str) -> Path:
    """Make ``tmp`` the current version in one atomic step, then drop what is no longer used."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    final = out / name
    if final.exists():  # left by a crash after the rename but before the switch
        shutil.rmtree(final)
    os.rename(tmp, final)
    marker_tmp = out / f".tmp-{uuid.uuid4().hex}"
    with open(marker_tmp, "w") as f:
        json.dump({"kind": "zoo-index", "format": FORMAT, "current": name}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(marker_tmp, out / MARKER)
    fsync_dir(out)
    clean_stale(out)
    return final


def clean_stale(out: Path) -> None:
    """Remove zoo's own leftovers: temporaries and versions the marker does not point at."""
    try:
        current = read_marker(out)["current"]
    except ZooError:
        current = None
    for e in out.iterdir():
        if (_TEMP.match(e.name) or (_VERSION.match(e.name) and e.name != current)):
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                e.unlink(missing_ok=True)

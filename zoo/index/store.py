"""The items of an index in SQLite: one row per vector, looked up by id, never all read at once.

A row holds the FAISS id, the file's path relative to the indexed root, its label, the frame
number and time of a video frame, and the size and modification time that ``--update`` uses
to see what changed. Files that could not be decoded are kept too (``skipped``), with their
size and time, so an unchanged bad file is not read and reported again on every update.

An item table may have been edited by anyone who could write the index folder: every row read
is checked (item_row), and a file is opened only through resolve_item_path, which keeps it
inside the index's root.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from zoo.errors import ZooError

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,     -- the vector's FAISS id
    path TEXT NOT NULL,         -- relative to the index's root, '/'-separated
    label TEXT,
    frame INTEGER,              -- video frames only
    time REAL,                  -- seconds, video frames only
    size INTEGER,               -- bytes, when indexed
    mtime_ns INTEGER            -- modification time, when indexed
);
CREATE INDEX IF NOT EXISTS items_path ON items (path);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER
);
"""
COLUMNS = ("id", "path", "label", "frame", "time", "size", "mtime_ns")
TYPES = {"path": (str,), "label": (str, type(None)), "frame": (int, type(None)), "time": (int, float, type(None)),
         "size": (int, type(None)), "mtime_ns": (int, type(None))}


def item_row(values: Sequence, where: object = "items.sqlite") -> dict:
    """One row of ``items`` as a dict, or a ZooError if a value has a type zoo never writes
    (a BLOB path or label). Where its path leads is checked when the file is opened."""
    row = dict(zip(COLUMNS, values))
    for name, types in TYPES.items():
        if not isinstance(row[name], types) or isinstance(row[name], bool):
            raise ZooError(f"{where}: item {row['id']} is damaged (its {name} is {type(row[name]).__name__}, "
                           f"not {' or '.join(t.__name__ for t in types if t is not type(None))}); rebuild the index")
    return row


def resolve_item_path(root: str | Path, stored: str) -> Path:
    """The file an item names, ``stored`` relative to ``root``, with links resolved; a ZooError
    unless it lies inside ``root`` (itself resolved) and is a regular file. The one way zoo
    opens an indexed file by what an index says."""
    real_root = Path(os.path.realpath(root))
    try:
        real = Path(os.path.realpath(real_root / stored))
    except (TypeError, ValueError):  # not text, or a NUL byte
        raise ZooError(f"{stored!r} is not a file name") from None
    if real_root not in real.parents:
        raise ZooError(f"{stored!r} leads outside the index's root {root}")
    if not real.is_file():
        raise ZooError(f"{stored!r} is not a regular file (any more)" if real.exists() else f"{real} does not exist (any more)")
    return real


def common_root(paths: Sequence[str]) -> Path:
    """The deepest folder that holds every one of the files ``paths`` (absolute): the root of a
    new index, which item paths are relative to; the working directory if there are none."""
    folders = {os.path.dirname(p) for p in paths}
    return Path(os.path.commonpath(sorted(folders))) if folders else Path.cwd()


class ItemStore:
    """Rows of ``items`` and ``skipped`` in one SQLite database (a file, or in memory)."""

    def __init__(self, path: Optional[str | Path] = None, readonly: bool = False):
        self.path = None if path is None else Path(path)
        self.where = self.path or "the item table"
        try:
            if self.path is None:
                self.db = sqlite3.connect(":memory:", check_same_thread=False)
            elif readonly:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            else:
                self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            if not readonly:
                self.db.executescript(SCHEMA)
            self.db.execute("SELECT id, path, label, frame, time, size, mtime_ns FROM items LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise ZooError(f"{path}: not a readable zoo item table ({e})") from None

    # ---- writing ----------------------------------------------------------------------------
    def add(self, rows: Iterable[tuple]) -> None:
        """rows of (id, path, label, frame, time, size, mtime_ns)."""
        with self.db:
            self.db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def remove(self, ids: Sequence[int]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM items WHERE id = ?", ((int(i),) for i in ids))

    def set_skipped(self, rows: Iterable[tuple[str, str, Optional[int], Optional[int]]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", rows)

    def unskip(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM skipped WHERE path = ?", ((p,) for p in paths))

    def save_as(self, path: str | Path) -> None:
        """A consistent copy of the whole database at ``path`` (SQLite's backup API)."""
        dest = sqlite3.connect(str(path))
        try:
            self.db.backup(dest)
            dest.commit()
        finally:
            dest.close()

    def copy(self) -> "ItemStore":
        """A writable in-memory copy (for an update of a read-only store)."""
        out = ItemStore()
        self.db.backup(out.db)
        return out

    def close(self) -> None:
        self.db.close()

    # ---- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def get(self, ids: Sequence[int]) -> dict[int, dict]:
        """id -> row dict for the ids that exist."""
        out: dict[int, dict] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            q = f"SELECT * FROM items WHERE id IN ({','.join('?' * len(part))})"
            for row in self.db.execute(q, part):
                out[row[0]] = item_row(row, self.where)
        return out

    def rows(self, batch: int = 10_000) -> Iterator[dict]:
        """Every row, in id order, a batch at a time."""
        last = -1
        while True:
            chunk = self.db.execute("SELECT * FROM items WHERE id > ? ORDER BY id LIMIT ?", (last, batch)).fetchall()
            if not chunk:
                return
            for row in chunk:
                yield item_row(row, self.where)
            last = chunk[-1][0]

    def ids_of(self, paths: Sequence[str]) -> dict[str, int]:
        """Stored path -> id of the first item (not a video frame) at each of ``paths``, in one query."""
        q = ("SELECT path, MIN(id) FROM items WHERE frame IS NULL AND path IN (SELECT value FROM json_each(?)) "
             "GROUP BY path")
        return {p: i for p, i in self.db.execute(q, (json.dumps(list(paths)),)) if isinstance(p, str)}

    def has_frames(self) -> bool:
        """True if any item is a video frame."""
        return self.db.execute("SELECT 1 FROM items WHERE frame IS NOT NULL LIMIT 1").fetchone() is not None

    def ids(self) -> np.ndarray:
        """Every item id in order (int64); read only when they are not simply MIN..MAX."""
        n = len(self)  # three queries: together SQLite scans the table, apart MIN and MAX are a look-up
        lo = self.db.execute("SELECT MIN(id) FROM items").fetchone()[0]
        hi = self.db.execute("SELECT MAX(id) FROM items").fetchone()[0]
        other = 0 if self._integer_key() else self.db.execute(  # a full scan: 2 s at 10M rows
            "SELECT COUNT(*) - COUNT(CASE WHEN typeof(id) = 'integer' THEN 1 END) FROM items").fetchone()[0]
        if other:
            raise ZooError(f"{self.path}: not a readable zoo item table ({other} ids that are not integers)")
        if not n:
            return np.zeros(0, np.int64)
        if hi - lo + 1 == n:
            return np.arange(lo, hi + 1, dtype=np.int64)
        return np.fromiter((r[0] for r in self.db.execute("SELECT id FROM items ORDER BY id")), np.int64, count=n)

    def _integer_key(self) -> bool:
        """Whether ``id`` is the table's INTEGER PRIMARY KEY (SQLite's rowid: every value an integer)."""
        row = self.db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'items'").fetchone()
        return bool(row and isinstance(row[0], str) and re.search(r"[(,]\s*id\s+INTEGER\s+PRIMARY\s+KEY\s*[,)]", row[0], re.I))

    def max_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), -1) FROM items").fetchone()[0]

    def skipped(self) -> list[tuple[str, str, Optional[int], Optional[int]]]:
        return self.db.execute("SELECT path, reason, size, mtime_ns FROM skipped ORDER BY path").fetchall()


def file_state(path: str | Path) -> tuple[Optional[int], Optional[int]]:
    """(size, mtime_ns) of a file, or (None, None) if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns

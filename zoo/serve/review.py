"""The review page's work: pages of duplicate groups with each member's facts, the pair scores and
the member to keep with its reasons; and the moves it asks for, planned (a dry run), done and
undone through zoo.dedup.quarantine, the same code as `zoo duplicates --move-to` / --undo.

Members are named by the index's own ids (sparse after `zoo index --update`); a member whose file
is gone, is a link, lies outside the index's root or in a protected folder is shown with why, and
never moves. Files are read only for members the index holds, through ZooIndex.item_file (inside
the root, links resolved). A request names at most MAX_MOVE_FILES files and runs for at most
WRITE_SECONDS; one write runs at a time. What guards the HTTP side (token, Origin, read-only) is
zoo.serve.guard.write_check.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zoo.dedup.compare import cosine_matrix
from zoo.dedup.facts import FileFacts, file_facts
from zoo.dedup.keep import DEFAULT_RULES, check_rules, choose_keep
from zoo.dedup.quarantine import check_movable, is_under, move_files, read_manifest, undo_quarantine
from zoo.errors import ZooError
from zoo.index.core import ZooIndex
from zoo.serve.duplicates import DuplicateGroups, Group

MAX_PAGE = 50  # groups per page
MAX_MEMBERS = 64  # members of one group shown (and weighed for keeping)
MAX_MOVE_FILES = 1000  # files one move request may name
WRITE_SECONDS = 60.0  # a move stops moving files after this long (the rest stay, reported)
FACTS_CACHE = 4096
BATCH_NAME = re.compile(r"\d{8}-\d{6}-\d{6}")


class ReviewError(Exception):
    """A review request the client can fix (answered as JSON with ``status``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Review:
    """Duplicate groups to review over one index, and the quarantine folder their moves go to."""

    def __init__(self, groups: DuplicateGroups, index: ZooIndex, quarantine_dir: str | Path,
                 rules: Sequence[str] = DEFAULT_RULES, protect: Sequence[str | Path] = ()):
        self.groups, self.idx = groups, index
        self.root = Path(os.path.realpath(index.root))
        self.dest = Path(os.path.abspath(quarantine_dir))
        self.rules = check_rules(rules)
        self.protect = [Path(os.path.realpath(p)) for p in protect]
        self._facts: OrderedDict[str, tuple[tuple, FileFacts]] = OrderedDict()
        self._facts_lock = threading.Lock()
        self.write_lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------------
    def facts(self, path: str) -> FileFacts:
        """The facts of a member's file, read only if the index holds it (inside its root)."""
        i = self.groups.ids.get(path)
        if i is None:
            return FileFacts(path=path, gone=not os.path.lexists(path), format=None, unindexed=True)
        try:
            real = self.idx.item_file(i)
            st = os.stat(real)
        except (ZooError, OSError):
            return FileFacts(path=path, gone=True, format=None)
        key = (str(real), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._facts_lock:
            hit = self._facts.get(path)
            if hit is not None and hit[0] == key:
                self._facts.move_to_end(path)
                return hit[1]
        facts = file_facts(real)
        facts["path"] = path
        with self._facts_lock:
            self._facts[path] = (key, facts)
            while len(self._facts) > FACTS_CACHE:
                self._facts.popitem(last=False)
        return facts

    def group(self, gid: int) -> Group:
        if not 0 <= gid < len(self.groups):
            raise ReviewError(404, f"no group {gid} in this duplicates result")
        return self.groups.groups[gid]

    def pairs(self, g: Group, paths: Sequence[str]) -> Optional[list[list]]:
        """[i, j, similarity] of the group's pairs: groups.json's own, or from the index's vectors."""
        n = len(paths)
        if g.kind == "exact":
            return [[i, j, 1.0] for i in range(n) for j in range(i + 1, n)]
        if g.pairs is not None:
            return [[i, j, s] for i, j, s in g.pairs if j < n]
        at = [(k, self.groups.ids[p]) for k, p in enumerate(paths) if p in self.groups.ids]
        if len(at) < 2:
            return None
        try:
            v = self.idx.vectors_of([i for _, i in at])
        except ZooError:  # vectors the index cannot give back by id
            return None
        sims = cosine_matrix(v, dtype=np.float64)
        return [[at[a][0], at[b][0], round(float(sims[a, b]), 6)] for a in range(len(at)) for b in range(a + 1, len(at))]

    def group_view(self, gid: int) -> dict:
        """One group as the page shows it: members (id, facts, why it cannot move), pairs, keep."""
        g = self.group(gid)
        paths = g.paths[:MAX_MEMBERS]
        facts = [self.facts(p) for p in paths]
        protected = [is_under(Path(os.path.realpath(p)), self.protect) is not None for p in paths]
        keep = choose_keep(facts, self.rules, protected)
        members = []
        for p, f, prot in zip(paths, facts, protected):
            i = self.groups.ids.get(p)
            why = "not in the index" if i is None else check_movable(p, self.root, self.protect)[1]
            shown = {k: v for k, v in f.public().items() if k not in ("path", "gone", "unindexed")} \
                if i is not None and not f.get("gone") else {}
            members.append({"id": i, "path": p, "name": Path(p).name, "folder": str(Path(p).parent),
                            "thumbnail": f"/api/items/{i}/thumbnail" if i is not None and not f.get("gone") else None,
                            "gone": bool(f.get("gone")), "protected": prot, "unmovable": why, "facts": shown})
        return {"group": gid, "kind": g.kind, "size": len(g.paths), "shown": len(paths),
                "min_similarity": g.min_similarity, "max_similarity": g.max_similarity,
                "pairs": self.pairs(g, paths), "members": members,
                "keep": None if keep is None else {"index": keep.index, "id": members[keep.index]["id"],
                                                   "reasons": list(keep.reasons)}}

    def page(self, offset: int, limit: int) -> dict:
        """Groups ``offset .. offset + limit`` in review order (largest, then most similar)."""
        limit = max(1, min(limit, MAX_PAGE))
        gids = self.groups.order[offset:offset + limit]
        return {**self.groups.about, "total": len(self.groups), "offset": offset, "limit": limit,
                "rules": list(self.rules), "protect": [str(p) for p in self.protect], "quarantine": str(self.dest),
                "groups": [self.group_view(i) for i in gids]}

    # -- planning and moving -------------------------------------------------------------------
    def plan(self, choices: Sequence[dict]) -> dict:
        """The dry run of ``choices`` (each ``{group, keep, move}``: the id to keep and the ids to
        move, default every other member): what would move and what would not, with why."""
        total = sum(len(c["move"]) if c.get("move") is not None else len(self.group(c["group"]).paths) - 1
                    for c in choices)
        if total > MAX_MOVE_FILES:
            raise ReviewError(413, f"a request may move at most {MAX_MOVE_FILES} files; this one names {total}")
        kept = {}
        for c in choices:
            g = self.group(c["group"])
            ids = {self.groups.ids.get(p): p for p in g.paths if p in self.groups.ids}
            if c["keep"] not in ids:
                raise ReviewError(404, f"item {c['keep']} is not a member of group {c['group']}")
            for i in c.get("move") or ():
                if i not in ids:
                    raise ReviewError(404, f"item {i} is not a member of group {c['group']}")
                if i == c["keep"]:
                    raise ReviewError(422, f"group {c['group']}: item {i} cannot be both kept and moved")
            kept[ids[c["keep"]]] = c["group"]
        moves, refused, seen = [], [], set()
        for c in choices:
            g = self.group(c["group"])
            ids = {self.groups.ids.get(p): p for p in g.paths if p in self.groups.ids}
            keep_path = ids[c["keep"]]
            keep_gone = check_movable(keep_path, self.root)[1] == "gone"
            move = c["move"] if c.get("move") is not None else [i for i in ids if i != c["keep"]]
            for i in move:
                p = ids[i]
                why = ("the file to keep is gone" if keep_gone else
                       f"kept in group {kept[p]}" if p in kept else
                       "named twice" if p in seen else check_movable(p, self.root, self.protect)[1])
                seen.add(p)
                entry = {"group": c["group"], "id": i, "path": p, "keep": keep_path}
                if why:
                    refused.append({**entry, "why": why})
                else:
                    moves.append({**entry, "bytes": os.path.getsize(p)})
        return {"moves": moves, "refused": refused, "files": len(moves), "bytes": sum(m["bytes"] for m in moves),
                "quarantine": str(self.dest)}

    def move(self, choices: Sequence[dict]) -> dict:
        """Move what plan(choices) allows, through zoo.dedup.quarantine.move_files."""
        if not self.write_lock.acquire(timeout=WRITE_SECONDS):
            raise ReviewError(503, "another move or undo is running; try again")
        try:
            planned = self.plan(choices)
            if not planned["moves"]:
                return {"batch": None, "moved": [], "refused": planned["refused"]}
            by_path = {m["path"]: m for m in planned["moves"]}
            try:
                done = move_files([(m["path"], m["keep"]) for m in planned["moves"]], self.dest, self.root,
                                  self.protect, deadline=time.monotonic() + WRITE_SECONDS)
            except ZooError as e:
                raise ReviewError(409, str(e)) from None
            moved = {str(Path(p)) for p in done.moved}
            real = {str(Path(os.path.realpath(os.path.dirname(p))) / os.path.basename(p)): p for p in by_path}
            return {"batch": done.batch,
                    "moved": [{"id": by_path[real[p]]["id"], "path": real[p]} for p in moved if p in real],
                    "refused": planned["refused"] + [{"path": real.get(p, p), "why": why} for p, why in done.refused]}
        finally:
            self.write_lock.release()

    # -- batches and undo ------------------------------------------------------------------------
    def batches(self, limit: int = 50) -> list[dict]:
        """The quarantine batches of this index's root in the quarantine folder, newest first."""
        if not self.dest.is_dir():
            return []
        out = []
        for m in sorted(self.dest.glob("manifest-*.json"), reverse=True)[:limit]:
            try:
                root, batch, moves = read_manifest(m)
            except ZooError:
                continue  # not this user's, or damaged: not offered
            if Path(root) != self.root or m.name != f"manifest-{batch}.json":
                continue
            held = sum(os.path.isfile(self.dest / e["to"]) and not os.path.islink(self.dest / e["to"]) for e in moves)
            out.append({"batch": batch, "files": len(moves), "in_quarantine": held})
        return out

    def undo(self, batch: str) -> dict:
        """Put batch ``batch`` back (zoo.dedup.quarantine.undo_quarantine)."""
        if not BATCH_NAME.fullmatch(batch or ""):
            raise ReviewError(422, f"{batch[:40]!r} is not a batch name")
        if batch not in {b["batch"] for b in self.batches(limit=10_000)}:
            raise ReviewError(404, f"no batch {batch} of this index in {self.dest}")
        if not self.write_lock.acquire(timeout=WRITE_SECONDS):
            raise ReviewError(503, "another move or undo is running; try again")
        try:
            restored = undo_quarantine(self.dest / f"manifest-{batch}.json")
        except ZooError as e:
            raise ReviewError(409, str(e)) from None
        finally:
            self.write_lock.release()
        return {"batch": batch, "restored": restored}

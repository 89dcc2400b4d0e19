"""A `zoo duplicates` result for ``zoo serve --duplicates``: groups.json read once (zoo.io.read_json),
checked for its shape, kept compact (a tuple of paths per group, no per-member objects), each path
mapped to its item id in the index in one query, and the groups put in review order (largest
first, then most similar). Pages of it are built on request (zoo.serve.review), so a result of
100,000 groups costs one parse at start-up and nothing per request but the page asked for.
Files of groups.json older than its per-group ``pairs`` still load (pair scores then come from
the index's vectors)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from zoo.errors import ZooError
from zoo.index.core import ZooIndex
from zoo.io import read_json


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _pairs_ok(pairs, n: int) -> bool:
    return isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in p[:2])
        and 0 <= p[0] < p[1] < n and _number(p[2]) for p in pairs)


def duplicates_problem(data) -> Optional[str]:
    """What makes ``data`` something other than a `zoo duplicates` result, or None."""
    def paths(g) -> bool:
        return isinstance(g, list) and all(isinstance(p, str) for p in g)

    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key in ("exact_groups", "near_groups"):
        if not isinstance(data.get(key), list):
            return f"{key} is missing or not a list"
    for i, g in enumerate(data["exact_groups"]):
        if not paths(g):
            return f"exact group {i} is not a list of paths"
    for i, g in enumerate(data["near_groups"]):
        if not isinstance(g, dict) or not paths(g.get("paths")) \
                or not _number(g.get("min_similarity")) or not _number(g.get("max_similarity")):
            return f"near group {i} is not {{paths: [...], min_similarity: x, max_similarity: y}}"
        if "pairs" in g and not _pairs_ok(g["pairs"], len(g["paths"])):
            return f"near group {i}: pairs is not a list of [i, j, similarity] with 0 <= i < j < its size"
    return None


@dataclass(frozen=True)
class Group:
    """One group as groups.json has it; ``gid``: its place there (exact groups first)."""
    gid: int
    kind: str  # exact | near
    paths: tuple[str, ...]
    min_similarity: float
    max_similarity: float
    pairs: Optional[tuple[tuple[int, int, float], ...]]  # None: groups.json does not say


class DuplicateGroups:
    """A checked groups.json: its groups, each path's item id, and the review order."""

    def __init__(self, data: dict, file: Path, index: ZooIndex):
        exact, near = data["exact_groups"], data["near_groups"]
        self.file = file
        self.groups = [Group(i, "exact", tuple(g), 1.0, 1.0, None) for i, g in enumerate(exact)]
        self.groups += [Group(len(exact) + i, "near", tuple(g["paths"]), float(g["min_similarity"]),
                              float(g["max_similarity"]),
                              tuple((int(a), int(b), float(s)) for a, b, s in g["pairs"]) if "pairs" in g else None)
                        for i, g in enumerate(near)]
        self.ids = index.ids_of({p for g in self.groups for p in g.paths})
        # largest groups first, then the most similar, then as groups.json has them
        self.order = sorted(range(len(self.groups)), key=lambda i: (-len(self.groups[i].paths),
                                                                      -self.groups[i].max_similarity, i))

        def scalar(key: str):
            value = data.get(key)
            return value if isinstance(value, (str, int, float)) else None

        self.about = {"source": scalar("source"), "threshold": scalar("threshold"), "model": scalar("model"),
                      "created": scalar("created"), "file": str(file.resolve())}

    def __len__(self) -> int:
        return len(self.groups)

    def member(self, p: str) -> dict:
        i = self.ids.get(p)
        return {"id": i, "path": p, "name": Path(p).name, "label": Path(p).parent.name,
                "thumbnail": f"/api/items/{i}/thumbnail" if i is not None else None}

    def view(self) -> dict:
        """Every group (GET /api/duplicates, as before the review page): built on request."""
        return {**self.about, "groups": [{"kind": g.kind, "min_similarity": g.min_similarity,
                                          "max_similarity": g.max_similarity,
                                          "items": [self.member(p) for p in g.paths]} for g in self.groups]}


def load_duplicates(path: str | Path, index: ZooIndex) -> DuplicateGroups:
    """A `zoo duplicates` groups.json (DIR or DIR/groups.json), checked, with each path mapped to
    its id in the index; one query of the index for all its paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "groups.json"
    try:
        data = read_json(path, "a `zoo duplicates` groups.json")
    except FileNotFoundError:
        raise ZooError(f"no such duplicates result: {path} (made by `zoo duplicates --out DIR`)") from None
    problem = duplicates_problem(data)
    if problem:
        raise ZooError(f"{path} is not a `zoo duplicates` groups.json ({problem})")
    return DuplicateGroups(data, path, index)

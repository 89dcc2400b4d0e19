"""A `zoo duplicates` result for ``zoo serve --duplicates``: groups.json checked for its shape,
then each path mapped to its item id in the index (one query for all of them), so the page can
show the groups with thumbnails by id."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from zoo.errors import ZooError
from zoo.index.core import ZooIndex
from zoo.io import read_json


def duplicates_problem(data) -> Optional[str]:
    """What makes ``data`` something other than a `zoo duplicates` result, or None."""
    def paths(g) -> bool:
        return isinstance(g, list) and all(isinstance(p, str) for p in g)

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

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
                or not number(g.get("min_similarity")) or not number(g.get("max_similarity")):
            return f"near group {i} is not {{paths: [...], min_similarity: x, max_similarity: y}}"
    return None


def load_duplicates(path: str | Path, index: ZooIndex) -> dict:
    """A `zoo duplicates` groups.json, with each path mapped to its id in the index (or None);
    one query of the index for all its paths."""
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
    exact, near = data["exact_groups"], data["near_groups"]
    ids = index.ids_of({p for g in exact for p in g} | {p for g in near for p in g["paths"]})

    def members(paths: list[str]) -> list[dict]:
        return [{"id": ids.get(p), "path": p, "name": Path(p).name, "label": Path(p).parent.name,
                 "thumbnail": f"/api/items/{ids[p]}/thumbnail" if p in ids else None} for p in paths]

    groups = [{"kind": "exact", "min_similarity": 1.0, "max_similarity": 1.0, "items": members(g)} for g in exact]
    groups += [{"kind": "near", "min_similarity": g["min_similarity"], "max_similarity": g["max_similarity"],
                "items": members(g["paths"])} for g in near]

    def scalar(key: str):
        value = data.get(key)
        return value if isinstance(value, (str, int, float)) else None

    return {"source": scalar("source"), "threshold": scalar("threshold"), "model": scalar("model"),
            "created": scalar("created"), "file": str(path.resolve()), "groups": groups}

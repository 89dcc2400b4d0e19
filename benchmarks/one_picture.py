"""Photos that are one picture (other crops and zooms of one photograph, frames of one video):
the listing the benchmarks read (benchmarks/food7_same_photos.txt). A line "a b" names two
photos by their paths under the image folder; "a b ?" an undecided pair; # starts a comment."""
from __future__ import annotations

from pathlib import Path


def read_listing(listing: str | None, images: str) -> list[tuple[str, str, bool]]:
    """(resolved path a, resolved path b, decided) for each listed pair; none for no listing or 'none'."""
    if not listing or listing == "none":
        return []
    pairs = []
    for line in Path(listing).read_text().splitlines():
        line = line.split("#")[0].split()
        if line:
            a, b = (str((Path(images) / p).resolve()) for p in line[:2])
            pairs.append((a, b, line[-1] != "?"))
    return pairs


def listed_pictures(listing: str | None, images: str) -> dict[str, int]:
    """Resolved path -> picture id for the photos ``listing`` names, the pairs (undecided ones
    too: they are kept apart as well) joined transitively (a video's frames are one picture);
    photos it does not name are absent."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b, _ in read_listing(listing, images):
        parent[root(a)] = root(b)
    ids = {r: k for k, r in enumerate(sorted({root(x) for x in parent}))}
    return {x: ids[root(x)] for x in parent}


def same_photos(listing: str, images: str, items, groups: list[int]) -> int:
    """Merge, in place, the groups of the items (records with a ``path``) that ``listing`` names
    as one picture (decided pairs only: an undecided pair is kept out of the unseen sets
    together, not counted as a copy); returns how many listed pairs are among the items."""
    where = {str(Path(r.path).resolve()): k for k, r in enumerate(items)}
    merged = 0
    for a, b, decided in read_listing(listing, images):
        ka, kb = where.get(a), where.get(b)
        if not decided or ka is None or kb is None:
            continue
        old, new = groups[kb], groups[ka]
        groups[:] = [new if g == old else g for g in groups]
        merged += 1
    return merged

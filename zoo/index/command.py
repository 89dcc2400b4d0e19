"""The work of ``zoo index`` and ``zoo search``: build or update an index from a folder or a
video, and print (and draw) the top k of each query."""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from zoo.errors import ZooError
from zoo.index.build import build_index
from zoo.index.core import check_k, load_index
from zoo.io import refuse_overwrite


def run_index(model, images: Optional[str] = None, out: str = "zoo.index", video: Optional[str] = None,
              every: int = 1, update: bool = False, **build_options) -> None:
    """``zoo index``: a folder (or a video's frames) into the index ``out``; ``update``: bring
    ``out`` up to date with its folder (the index's own model)."""
    if update and video is not None:
        raise ZooError("--update works on image folders; rebuild a video index with --overwrite")
    if (images is None) == (video is None) and not update:
        raise ZooError("give a folder (--images DIR) or a video (--video FILE)")
    if video is not None:
        from zoo.data.video import video_records  # PyAV, only for videos

        records = video_records(video, every=every)
    else:
        records = images
    index = build_index(records, None if update else model, out=out, update=update, **build_options)
    if index is None:  # another process of a multi-device run: the first one builds the index
        return
    print(f"zoo: indexed {len(index)} items of {index.root} with {index.describe()} -> {out}")


def run_search(index: str, query: Sequence[str], model=None, k: int = 10, as_json: bool = False,
               grid: Optional[str] = None, overwrite: bool = False, nprobe: Optional[int] = None,
               ef_search: Optional[int] = None, trainer=None) -> None:
    """``zoo search``: each query's top ``k`` as a table (or JSON) on stdout, and a PNG grid.
    ``model``: embed the queries with this model instead of the index's own."""
    check_k(k)
    if grid:
        refuse_overwrite(grid, overwrite)
    idx = load_index(index)
    idx.set_search(nprobe=nprobe, ef_search=ef_search)
    results = idx.search_many(query, k=k, model=model.build() if model is not None else None,
                              trainer=trainer)  # [(query path, hits)]
    if as_json:
        out = [{"query": q, "model": idx.meta["model"]["architecture"],
                "weights": idx.meta["model"]["weights"], "results": [h.__dict__ for h in hits]}
               for q, hits in results]
        print(json.dumps(out, indent=2))
    else:
        print(f"index: {index} ({len(idx)} items, {idx.describe()})")
        for q, hits in results:
            print(f"\nquery: {q}")
            print(f"{'rank':>4}  {'cosine':>7}  path")
            for h in hits:
                extra = f"  [frame {h.frame}, {h.time:.2f}s]" if h.frame is not None else ""
                print(f"{h.rank:>4}  {h.similarity:7.4f}  {h.path}{extra}")
    if grid:
        from zoo.report.plots import topk_grid  # matplotlib, only for pictures

        topk_grid([(q, None, hits) for q, hits in results], grid, title=f"{idx.describe()}")
        print(f"zoo: grid -> {grid}", file=sys.stderr)

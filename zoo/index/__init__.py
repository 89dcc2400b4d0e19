"""The persistent FAISS index: its folder layout and lock, item store (ids, paths, labels),
embedding shards, building, updating, opening and searching."""
from zoo.index.core import ZooIndex, build_index, load_index

__all__ = ["ZooIndex", "build_index", "load_index"]

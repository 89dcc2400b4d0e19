"""The persistent FAISS index: its folder layout and lock (folder), item store (store),
embedding shards (shards), stored vectors (vectors), the FAISS index and its search settings
(factory), meta.json and its checks (meta), writing and opening versions (persist), the index
itself (core: ZooIndex, load_index) and building and updating one (build: build_index)."""
from zoo.index.build import build_index
from zoo.index.core import ZooIndex, load_index

__all__ = ["ZooIndex", "build_index", "load_index"]

"""zoo: a PyTorch Lightning model zoo for image similarity and content-based image retrieval."""
from zoo.version import __version__  # noqa: E402,F401

from zoo.errors import ZooError  # noqa: E402
from zoo.registry import BACKBONES, HEADS, register_backbone, register_head  # noqa: E402

import zoo.backbones  # noqa: E402,F401  (registers the built-in backbones)
import zoo.heads  # noqa: E402,F401  (registers the built-in heads)
from zoo.model.module import ZooModel, load_model  # noqa: E402
from zoo.index.core import ZooIndex, build_index, load_index  # noqa: E402
from zoo import embed  # noqa: E402  (the module, callable: zoo.embed("photos/") -> array; zoo.embed.embed: records)

__all__ = [
    "ZooError", "BACKBONES", "HEADS", "register_backbone", "register_head",
    "ZooModel", "load_model", "ZooIndex", "build_index", "load_index", "embed",
]

"""zoo: a PyTorch Lightning model zoo for image similarity and content-based image retrieval."""
import zoo.backbones  # noqa: F401  (registers the built-in backbones)
import zoo.heads  # noqa: F401  (registers the built-in heads)
from zoo import embed  # the module, callable: zoo.embed("photos/") -> array; zoo.embed.embed: records
from zoo.errors import ZooError
from zoo.index import ZooIndex, build_index, load_index
from zoo.model import ZooModel, load_model
from zoo.registry import BACKBONES, HEADS, register_backbone, register_head
from zoo.version import __version__

__all__ = [
    "ZooError", "BACKBONES", "HEADS", "register_backbone", "register_head",
    "ZooModel", "load_model", "ZooIndex", "build_index", "load_index", "embed", "__version__",
]

"""Embedding: a model over a set of image files through a Lightning Trainer (predict), in
memory or streamed to shards, and the one-call Python API.

``zoo.embed`` is callable: ``zoo.embed("photos/")`` embeds image files (zoo.embed.api);
``zoo.embed.embed(model, records)`` is the record-level function used inside zoo.
"""
import sys

from zoo.embed.api import embed_images
from zoo.embed.runner import Embeddings, embed, report_skipped, require_some  # noqa: F401


class _CallableModule(sys.modules[__name__].__class__):
    """``zoo.embed(images, ...)`` embeds image files (zoo.embed.api.embed_images)."""

    def __call__(self, images, model=None, **kwargs):
        return embed_images(images, model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

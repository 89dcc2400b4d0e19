"""The Python entry points a user reaches for first.

    vectors = zoo.embed("photos/")                      # (N, D) float32, L2-normalised
    vectors = zoo.embed(["a.jpg", "b.jpg"], model=zoo.ZooModel("vgg16"))
    vectors, paths = zoo.embed("photos/", paths=True)   # which file each row is

``zoo.embed`` is the module ``zoo.embed`` made callable; its record-level function
``zoo.embed.embed(model, records)`` (used inside zoo) is unchanged.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import records_from
from zoo.embed.quiet import quiet_lightning
from zoo.embed.runner import default_trainer, embed
from zoo.errors import ZooError
from zoo.model.module import ZooModel
from zoo.model.restore import load_model

PathLike = Union[str, os.PathLike]


def embed_images(
    images: Union[PathLike, Sequence[PathLike]],
    model=None,
    *,
    backbone: str = "resnet50",
    checkpoint: Optional[str] = None,
    batch_size: int = BATCH_SIZE,
    num_workers: int = NUM_WORKERS,
    progress: bool = False,
    paths: bool = False,
):
    """Embed image files: a folder (recursive), one file, or a list of files and folders.

    model: a ZooModel (default: ``ZooModel(backbone)`` with its pretrained weights, or the
    trained ``checkpoint``). Returns (N, D) float32 L2-normalised rows in input order (a
    folder's files sorted); unreadable files are reported on stderr and skipped, so pass
    ``paths=True`` to get (vectors, paths) and know which file each row is.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if model is None:
        model = load_model(checkpoint) if checkpoint else ZooModel(backbone)
    elif checkpoint:
        raise ZooError("give a model or a checkpoint, not both")
    records = records_from(list(images))
    with quiet_lightning(banner=False):
        trainer = default_trainer(progress=progress)
        emb = embed(model, records, trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    vectors = np.asarray(emb.vectors, dtype=np.float32)
    return (vectors, [r.path for r in emb.records]) if paths else vectors

"""The Python entry points a user reaches for first.

    vectors = zoo.embed("photos/")                      # (N, D) float32, L2-normalised
    vectors = zoo.embed(["a.jpg", "b.jpg"], model=zoo.ZooModel("vgg16"))
    vectors, paths = zoo.embed("photos/", paths=True)   # which file each row is

``zoo.embed`` is the module ``zoo.embed`` made callable; its record-level function
``zoo.embed.embed(model, records)`` (used inside zoo) is unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np

from zoo.data.images import records_from
from zoo.embed.runner import default_trainer, embed
from zoo.errors import ZooError
from zoo.model.module import ZooModel
from zoo.model.restore import load_model

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def _quiet_lightning():
    """No device banner or tips from Lightning while the library embeds."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def embed_images(
    images: Union[PathLike, Sequence[PathLike]],
    model=None,
    *,
    backbone: str = "resnet50",
    checkpoint: Optional[str] = None,
    batch_size: int = 32,
    num_workers: int = 0,
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
    with _quiet_lightning():
        trainer = default_trainer(progress=progress)
        emb = embed(model, records, trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    vectors = np.asarray(emb.vectors, dtype=np.float32)
    return (vectors, [r.path for r in emb.records]) if paths else vectors

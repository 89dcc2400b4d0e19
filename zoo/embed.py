"""records -> embeddings, through ``Trainer.predict`` and a prediction writer.

Devices, precision and multi-device runs come from the Trainer's flags; every rank writes what
it embedded and rank 0 merges the parts in record order.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import lightning as L
import numpy as np
import timm
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from zoo.data import ImageDataset, Record, collate
from zoo.errors import ZooError
from zoo.model import ZooModel


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N_ok, D), float32 or float16, in record order
    records: list[Record]  # the records that embedded, aligned with vectors
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class EmbeddingWriter(BasePredictionWriter):
    """Collects each batch's embeddings (on CPU) with their dataset indices."""

    def __init__(self):
        super().__init__(write_interval="batch")
        self.indices: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []
        self.skipped: list[tuple[int, str]] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.indices.append(prediction["index"].cpu())
        self.vectors.append(prediction["embedding"].cpu())
        self.skipped += prediction["skipped"]

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:  # gather every rank's part
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (self.indices, self.vectors, self.skipped))
            self.indices = [t for p in parts for t in p[0]]
            self.vectors = [t for p in parts for t in p[1]]
            self.skipped = sorted({s for p in parts for s in p[2]})

    def result(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.indices:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        idx = torch.cat(self.indices).numpy()
        vec = torch.cat(self.vectors).numpy()
        idx, first = np.unique(idx, return_index=True)  # sorted, and drops sampler padding
        return idx, vec[first]


def default_trainer(progress: bool = True) -> L.Trainer:
    from zoo.progress import StderrProgressBar

    return L.Trainer(
        accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress, callbacks=[StderrProgressBar()] if progress else None,
    )


def ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process (which stops them), so that an
    interrupt prints one line instead of a traceback per worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def eval_transform(model: ZooModel):
    """The model's own preprocessing (timm data config -> timm transform)."""
    return timm.data.create_transform(**model.data_config, is_training=False)


def embed(
    model: ZooModel,
    records: Sequence[Record],
    trainer: Optional[L.Trainer] = None,
    batch_size: int = 32,
    num_workers: int = 0,
    report: bool = True,
) -> Embeddings:
    """Embed ``records`` with ``model``; undecodable files are skipped and reported once."""
    model.build()
    records = list(records)
    cfg = model.data_config
    draft = int(max(cfg["input_size"][1:]) / cfg.get("crop_pct", 1.0) + 1)
    dataset = ImageDataset(records, eval_transform(model), draft_size=draft)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                        persistent_workers=False, pin_memory=False,
                        worker_init_fn=ignore_sigint if num_workers > 0 else None)
    trainer = trainer or default_trainer()
    writer = EmbeddingWriter()
    trainer.callbacks.append(writer)
    try:
        trainer.predict(model, dataloaders=loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
    idx, vectors = writer.result(model.embedding_dim)
    skipped = [(records[i].path, reason) for i, reason in sorted(set(writer.skipped))]
    if report and skipped:
        report_skipped(skipped)
    return Embeddings(vectors, [records[i] for i in idx], skipped)


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    print(f"zoo: skipped {len(skipped)} file(s) that are not usable images:", file=sys.stderr)
    for path, reason in skipped:
        print(f"  {path}: {reason}", file=sys.stderr)


def require_some(emb: Embeddings, what: str) -> None:
    if len(emb.records) == 0:
        raise ZooError(f"no usable images in {what}")


class _CallableModule(sys.modules[__name__].__class__):
    """``zoo.embed(images, ...)`` embeds image files (zoo.api.embed_images); the module keeps
    ``zoo.embed.embed(model, records)`` and the rest of its names."""

    def __call__(self, images, model=None, **kwargs):
        from zoo.api import embed_images

        return embed_images(images, model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

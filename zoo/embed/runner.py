"""records -> embeddings, through ``Trainer.predict`` and a prediction writer.

Devices, precision and multi-device runs come from the Trainer's flags. Loader workers hand
over uint8 pixels (or JPEG bytes, decoded on the device: zoo.decode) and the model normalises
them on its device. ``embed`` keeps the embeddings in memory (every rank's part merged in
record order: for queries and benchmarks); ``zoo.index.shards.embed_to_shards`` streams them to disk, each rank
its own shards (zoo.index.shards: for indexes of any size).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from zoo.data.decode import resolve_decode
from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import ImageDataset, Record, collate
from zoo.data.transforms import draft_size, pixel_transform
from zoo.embed.progress import StderrProgressBar
from zoo.errors import ZooError
from zoo.model.inference import inference_setting
from zoo.model.module import ZooModel
from zoo.model.runtime import AUTO, check_runtime, runtime_of


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


def default_trainer(progress: bool = True, precision: Optional[str] = None, recorded: Optional[str] = None,
                    runtime: str = AUTO, accelerator: str = "auto") -> L.Trainer:
    """One device, at the precision zoo.model.inference decides for it (bf16 autocast on a GPU
    and, with ZOO_CPU_BF16=1, on a CPU that computes bf16 natively; zoo.cli does the same for the commands).
    ``precision``: asked for; ``recorded``: an index's own, kept where the device computes it.
    ``runtime``: of the forward (zoo.model.runtime; auto: a compiled fp32 forward on the CPU for
    big runs). ``accelerator``: Lightning's ("auto": the GPU where there is one)."""
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        precision=inference_setting(accelerator, precision, recorded=recorded).precision,
        enable_model_summary=False, enable_progress_bar=progress, callbacks=[StderrProgressBar()] if progress else None,
    )
    trainer.zoo_runtime = check_runtime(runtime)
    return trainer


def ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process (which stops them), so that an
    interrupt prints one line instead of a traceback per worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(model: ZooModel, records: Sequence[Record], trainer: L.Trainer, batch_size: int, num_workers: int,
                decode: str = "auto", indices: Optional[Sequence[int]] = None) -> tuple[DataLoader, str]:
    """A loader of uint8 pixels (or JPEG bytes, when decoding on the device) for ``records``;
    and the decode mode it uses."""
    if batch_size < 1:
        raise ZooError(f"--batch_size {batch_size}: must be 1 or more")
    if num_workers < 0:
        raise ZooError(f"--num_workers {num_workers}: must be 0 or more")
    device = trainer.strategy.root_device
    mode = resolve_decode(decode, device)
    if mode == "device" and not model.device_preprocess.can_decode:
        mode = "cpu"  # a non-square or non-centre crop: timm's transform on the CPU
    model.runtime = runtime_of(trainer, len(records) if indices is None else len(indices))
    dataset = ImageDataset(records, pixel_transform(model), draft_size=draft_size(model), indices=indices,
                           jpeg_bytes=mode == "device")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                        persistent_workers=False, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_sigint if num_workers > 0 else None)
    return loader, mode


def describe_run(trainer: L.Trainer, model: ZooModel, n: int, mode: str, batch_size: int, num_workers: int) -> str:
    device = trainer.strategy.root_device
    devices = f"{trainer.world_size} x {device.type}" if trainer.world_size > 1 else str(device)
    runtime = getattr(model, "runtime", None) or "torch"
    layout = ", channels_last" if runtime == "torch" and model.uses_channels_last(device, trainer.precision) else ""
    runs = f" with {runtime}" if runtime != "torch" else ""  # ONNX Runtime, OpenVINO: zoo.model.runtime
    return (f"zoo: embedding {n} images on {devices}{runs}, precision {trainer.precision}{layout}, "
            f"decoding on the {'device' if mode == 'device' else 'CPU'}, batch {batch_size}, {num_workers} loader workers")


def embed(
    model: ZooModel,
    records: Sequence[Record],
    trainer: Optional[L.Trainer] = None,
    batch_size: int = BATCH_SIZE,
    num_workers: int = NUM_WORKERS,
    report: bool = True,
    decode: str = "auto",
) -> Embeddings:
    """Embed ``records`` with ``model``, in memory; undecodable files are skipped and reported
    once. (``zoo index`` streams to disk instead: embed_to_shards.)"""
    model.build()
    records = list(records)
    trainer = trainer or default_trainer()
    loader, _ = make_loader(model, records, trainer, batch_size, num_workers, decode)
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

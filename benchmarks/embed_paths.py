"""The inference paths embed_throughput.py compares, and how each is timed and checked.

A path = precision x runtime x layout (zoo.model.inference, zoo.model.runtime), run the way zoo
runs it: the bare forward on random tensors, `zoo index` end to end (zoo.build_index with a
Trainer of that path), and its agreement with torch fp32 on real photos (per-image cosine,
top-10 neighbour overlap, the duplicate pairs at 0.95).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import zoo
from zoo.embed.runner import default_trainer, embed
from zoo.model.runtime import compiled_forward, installed


@dataclass(frozen=True)
class Path_:
    name: str
    precision: str = "32-true"
    runtime: str = "torch"
    channels_last: Optional[bool] = None  # None: as zoo decides (channels_last with CPU bf16)


PATHS = [
    Path_("torch fp32 (the old default)", channels_last=False),
    Path_("torch fp32 + channels_last", channels_last=True),
    Path_("torch bf16 + channels_last", "bf16-mixed"),
    Path_("onnx fp32", runtime="onnx"),
    Path_("openvino fp32", runtime="openvino"),
    Path_("openvino bf16", "bf16-mixed", runtime="openvino"),
]


def available(paths: list[Path_]) -> list[Path_]:
    """The paths this machine runs: the compiled runtimes (CPU only) where installed and there is no GPU."""
    gpu = torch.cuda.is_available()
    return [p for p in paths if p.runtime == "torch" or (not gpu and installed(p.runtime))]


def trainer_of(path: Path_):
    return default_trainer(False, precision=path.precision, runtime=path.runtime)


def forward_rate(model, path: Path_, batch: int, seconds: float) -> float:
    """Images per second of the bare forward on device-resident random tensors (on the GPU
    where there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(batch, *model.data_config["input_size"])
    model.eval()
    if path.runtime != "torch":
        fn = compiled_forward(model, path.runtime, path.precision)
    else:
        cl = path.channels_last if path.channels_last is not None else path.precision == "bf16-mixed"
        model.to(device=device, memory_format=torch.channels_last if cl else torch.contiguous_format)
        x = x.to(device)
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        dtype = torch.bfloat16 if path.precision == "bf16-mixed" else None

        def fn(_):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return model(xx)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        fn(x)  # warm-up (and compile)
        sync()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            fn(x)
            n += batch
        sync()
    model.to(device="cpu", memory_format=torch.contiguous_format)
    return n / (time.perf_counter() - t)


def index_rate(model, path: Path_, folder: Path, batch: int, workers: int) -> float:
    """Images per second of `zoo index` end to end (scan, decode, embed to shards, FAISS, save);
    the compiled forward is made before the clock starts (a long run pays it once)."""
    if path.runtime != "torch":
        compiled_forward(model, path.runtime, path.precision)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index = zoo.build_index(folder, model, out=Path(tmp) / "bench.index", trainer=trainer_of(path),
                                batch_size=batch, num_workers=workers, channels_last=path.channels_last)
        return len(index) / (time.perf_counter() - t)


def vectors(model, path: Path_, records, batch: int, workers: int) -> np.ndarray:
    model.channels_last = path.channels_last
    try:
        return embed(model, records, trainer=trainer_of(path), batch_size=batch, num_workers=workers,
                     report=False).vectors.astype(np.float32)
    finally:
        model.channels_last = None


def agreement(got: np.ndarray, ref: np.ndarray, threshold: float = 0.95) -> dict:
    """min/mean per-image cosine with ``ref``, top-10 neighbour overlap, same duplicate pairs."""
    g = got / np.linalg.norm(got, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (g * r).sum(1)

    def neighbours(v):
        s = v @ v.T
        np.fill_diagonal(s, -2)
        return np.argsort(-s, axis=1)[:, :10], {tuple(p) for p in np.argwhere(np.triu(s, 1) >= threshold)}

    (tg, pg), (tr, pr) = neighbours(g), neighbours(r)
    overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(tg, tr)]))
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "top10": overlap,
            "same_pairs": pg == pr, "pairs": len(pr)}


def meets_bar(a: dict) -> bool:
    """The agreement a default must keep: cosine >= 0.999, top-10 overlap >= 0.99, same pairs."""
    return a["cos_min"] >= 0.999 and a["top10"] >= 0.99 and a["same_pairs"]

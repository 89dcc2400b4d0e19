"""``zoo export``: the embedding model as ONNX or TorchScript, for serving without zoo.

The exported model takes a preprocessed batch (B, 3, H, W) and returns L2-normalised
embeddings (B, D). Preprocessing (resize, crop, mean/std) stays outside the model and is
written to ``OUT.json`` beside it, with the model's identity.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

from zoo.backbones.timm_backbone import check_data_config
from zoo.errors import ZooError
from zoo.io import atomic_path, read_json, refuse_overwrite, write_json
from zoo.model.graph import EmbeddingModel  # noqa: F401  (zoo.model.export.EmbeddingModel, as before)
from zoo.model.identity import model_identity
from zoo.version import __version__

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


def sidecar_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".json")


def export_info(model, fmt: str, out: Path) -> dict:
    ident = model_identity(model)
    pre = ident.pop("preprocessing")
    return {
        "format": fmt,
        "file": out.name,
        "input": {"name": "images", "shape": ["batch", 3, *pre["input_size"][1:]], "dtype": "float32",
                  "layout": "NCHW, RGB, after preprocessing"},
        "output": {"name": "embedding", "shape": ["batch", ident["dim"]], "l2_normalised": True},
        "preprocessing": {key: pre.get(key) for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")},
        "identity": ident,
        "zoo_version": __version__,
    }


def export_model(model, format: str = "onnx", out: Optional[str] = None, overwrite: bool = False,
                 opset: int = 17) -> Path:
    fmt = format.lower()
    if fmt not in FORMATS:
        raise ZooError(f"unknown export format '{format}'; use {' or '.join(FORMATS)}")
    model.build()
    model.eval()
    if out is None:  # in the current folder, named after the checkpoint file or the architecture
        checkpoint = getattr(model, "checkpoint_path", None)
        stem = Path(checkpoint).stem if checkpoint else "".join(
            ch if ch.isalnum() or ch in "-_.+" else "_" for ch in model.architecture)
        out = stem + FORMATS[fmt]
    out = Path(out)
    side = sidecar_path(out)
    refuse_overwrite(out, overwrite)
    refuse_overwrite(side, overwrite)
    info = export_info(model, fmt, out)
    _, h, w = info["preprocessing"]["input_size"]
    net = EmbeddingModel(model).eval()
    example = torch.zeros(2, 3, int(h), int(w))
    with torch.no_grad(), atomic_path(out) as tmp:
        if fmt == "onnx":
            try:
                import onnx  # noqa: F401  (the exporter writes through it)
            except ImportError:
                raise ZooError("ONNX export needs the onnx package: pip install onnx") from None
            torch.onnx.export(net, (example,), str(tmp), input_names=["images"], output_names=["embedding"],
                              dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, still widely served
                warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
                torch.jit.save(torch.jit.trace(net, example), str(tmp))
    write_json(side, info)
    print(f"zoo: exported {info['identity']['architecture']} ({info['identity']['weights']}) as {fmt} -> {out}; "
          f"preprocessing and identity -> {side}", file=sys.stderr)
    print(out)
    return out


def preprocess_transform(info: dict | str | Path):
    """The eval transform of an exported model, from its JSON (PIL image -> (3, H, W) tensor)."""
    import timm

    where = "the export's preprocessing"
    if not isinstance(info, dict):
        where = f"{info}: preprocessing"
        info = read_json(info, "the JSON of a zoo export")
    pre = check_data_config(info.get("preprocessing") if isinstance(info, dict) else None, where)
    missing = [k for k in ("input_size", "interpolation", "mean", "std", "crop_pct") if k not in pre]
    if missing:
        raise ZooError(f"{where} lacks {', '.join(missing)}")
    return timm.data.create_transform(input_size=tuple(pre["input_size"]), interpolation=pre["interpolation"],
                                      mean=tuple(pre["mean"]), std=tuple(pre["std"]), crop_pct=pre["crop_pct"],
                                      crop_mode=pre.get("crop_mode") or "center", is_training=False)

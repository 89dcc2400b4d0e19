"""A model's preprocessing, built from its own timm data config (``model.data_config``:
input size, interpolation, crop, mean/std): float tensors for eager use, uint8 for the loader
workers, and the size big JPEGs may be decoded at."""
from __future__ import annotations

import timm.data


def eval_transform(model):
    """The model's own preprocessing (timm data config -> timm transform): (3, H, W) float32,
    normalised."""
    return timm.data.create_transform(**model.data_config, is_training=False)


def pixel_transform(model):
    """The same resize and crop, handing over (3, H, W) uint8 (timm's prefetcher form); the
    model normalises on its device (ZooModel.on_after_batch_transfer)."""
    return timm.data.create_transform(**model.data_config, is_training=False, use_prefetcher=True)


def draft_size(model) -> int:
    """The size a big JPEG may be decoded at (Pillow's draft mode) and still feed the model's
    resize without loss: the shorter side before the centre crop."""
    cfg = model.data_config
    return int(max(cfg["input_size"][1:]) / cfg.get("crop_pct", 1.0) + 1)

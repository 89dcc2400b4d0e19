"""Pixels on the device: normalising uint8 batches, and decoding JPEGs where the model runs.

Loader workers hand over uint8 tensors (a quarter of the bytes of float32 through shared
memory) and the device normalises them, as timm's prefetcher does. With ``decode="device"``
workers only read file bytes; baseline JPEGs are then decoded in batches where the model runs
(nvJPEG on CUDA, through ``torchvision.io.decode_jpeg``), resized and centre-cropped there with
the model's own timm data config. Anything else (PNG, WEBP, progressive or CMYK JPEG, EXIF
rotation, truncated files) takes the CPU path in the same run, so nothing is skipped that the
CPU path would read.
"""
from __future__ import annotations

import io
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from zoo.errors import ZooError
from zoo.io import open_regular

DECODE_MODES = ("auto", "cpu", "device")


def device_decodable(data: bytes | memoryview) -> bool:
    """True for an 8-bit baseline (sequential) RGB JPEG, upright, with its end marker: what
    every device decoder reads exactly as Pillow does. Reads the header only."""
    if len(data) < 4 or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return False  # not a JPEG, or truncated
    if _frame_type(data) not in (0xC0, 0xC1):  # baseline / extended sequential Huffman only
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "JPEG" or im.mode != "RGB" or im.info.get("progressive") or im.info.get("progression"):
                    return False
                if getattr(im, "bits", 8) != 8:
                    return False
                return im.getexif().get(0x0112, 1) == 1  # EXIF orientation: upright only
    except Exception:  # anything odd: the CPU path decides, and reports it if it is unusable
        return False


def _frame_type(data: bytes | memoryview) -> Optional[int]:
    """The JPEG start-of-frame marker (0xC0 baseline, 0xC2 progressive, 0xC9 arithmetic, ...),
    found by walking the header's segments; None if there is none before the image data."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:  # image data before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def resolve_decode(decode: str, device: torch.device) -> str:
    """"auto": on the device when the model runs on CUDA, else in the CPU workers."""
    if decode not in DECODE_MODES:
        raise ZooError(f"--decode {decode}: choose one of {', '.join(DECODE_MODES)}")
    if decode == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return decode


_INTERPOLATION = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST", "lanczos": "LANCZOS",
                  "box": "BOX", "hamming": "HAMMING", "random": "BICUBIC"}


class DevicePreprocess:
    """The timm eval transform (resize shorter side to input/crop_pct, centre crop, normalise)
    applied to tensors on any device."""

    def __init__(self, data_config: dict):
        cfg = dict(data_config)
        _, self.h, self.w = cfg["input_size"]
        crop_pct = cfg.get("crop_pct") or 0.875
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255
        # the device path reproduces timm's square centre crop; other crops decode on the CPU
        self.can_decode = cfg.get("crop_mode", "center") == "center" and self.h == self.w
        self.scale = int(self.h / crop_pct)  # timm: math.floor(img_size / crop_pct)
        from torchvision.transforms import InterpolationMode

        self.interpolation = InterpolationMode[_INTERPOLATION.get(cfg.get("interpolation", "bicubic"), "BICUBIC")]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> float32, normalised with the model's mean and std."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() - mean) / std

    def decode(self, jpegs: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """JPEG byte tensors -> (B', 3, H, W) uint8 on ``device``, resized and cropped; and the
        positions among ``jpegs`` that the device decoder refused (for the CPU path)."""
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        if not jpegs:
            return torch.empty(0, 3, self.h, self.w, dtype=torch.uint8, device=device), []
        try:
            decoded: list[Optional[torch.Tensor]] = list(decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the batch: decode one by one
            decoded = []
            for data in jpegs:
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        failed = [i for i, im in enumerate(decoded) if im is None]
        # images of one size (photos from one camera) resize as one batch
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(decoded):
            if im is not None:
                by_size.setdefault(tuple(im.shape[1:]), []).append(i)
        out: list[Optional[torch.Tensor]] = [None] * len(decoded)
        for ids in by_size.values():
            batch = torch.stack([decoded[i] for i in ids])  # (b, 3, h, w) uint8
            batch = F.resize(batch, [self.scale], interpolation=self.interpolation, antialias=True)
            batch = F.center_crop(batch, [self.h, self.w])
            for j, i in enumerate(ids):
                out[i] = batch[j]
        kept = [t for t in out if t is not None]
        stacked = torch.stack(kept) if kept else torch.empty(0, 3, self.h, self.w, dtype=torch.uint8, device=device)
        return stacked, failed


def read_bytes(path: str) -> np.ndarray:
    """A regular file's bytes as a (writable) uint8 array, which torch takes without a copy
    (ValueError for a pipe or a device)."""
    with open_regular(path) as f:
        return np.fromfile(f, dtype=np.uint8)

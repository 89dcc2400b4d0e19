"""Augmentations as configuration: a preset name or a list of ``{name, args, p}`` steps.

Each step is a ``torchvision.transforms.v2`` class (``JPEG``, ``RandomResizedCrop``,
``ColorJitter``, ``RandomRotation``, ``GaussianBlur``, ...) or one of zoo's own (``Downscale``,
``SomeOf``), built with ``args``; ``p`` applies it with that probability (``RandomApply``).
An argument whose value is the string ``input`` becomes the model's input size ``[H, W]``.
After the steps, every pipeline resizes to the model's input size, converts to a float tensor
and normalises with the model's mean and std. In YAML::

    data:
      augmentations:
        - {name: RandomResizedCrop, args: {size: input, scale: [0.5, 1.0]}}
        - {name: JPEG, args: {quality: [10, 50]}, p: 0.5}

Presets: ``default`` (rotation, shifts, zoom, shear, brightness, flips: the original
positives), ``copydetect`` (the edits people make to a copied photo, in random combinations:
crop down to ~30 % of the area, mirror, rotation, colour jitter, grey, then half the time one of
overlay onto another photo, text, emoji stickers, border, aspect-ratio change, perspective or a
screenshot frame, then downscale, blur, JPEG at low quality), each edit family of
zoo.data.copyedits by its name (``overlay``, ``text``, ``heavy_crop``, ``combo``, ...) and ``copyset (a *different* family used to validate, calibrate and benchmark:
three of six edits, each with its own fixed range: crop to 75-90 %, rotation up to 15 degrees,
JPEG quality 15-35, brightness/colour jitter, mirror, half-size downscale).
"""
from __future__ import annotations

import random
from typing import Any, Sequence, Union

import torch
from PIL import Image
from torchvision.transforms import v2

from zoo.data.copyedits import FAMILIES, OWN_EDITS, walk
from zoo.errors import ZooError

Spec = Union[str, Sequence[dict]]

PRESETS: dict[str, list[dict]] = {
    "default": [
        {"name": "Resize", "args": {"size": "input"}},
        {"name": "RandomAffine", "args": {"degrees": 20, "translate": [0.1, 0.1], "scale": [0.8, 1.2], "shear": 10}},
        {"name": "ColorJitter", "args": {"brightness": 0.3}},
        {"name": "RandomHorizontalFlip"},
        {"name": "RandomVerticalFlip", "args": {"p": 0.2}},
    ],
    "copydetect": [
        {"name": "Resize", "args": {"size": "input"}},  # edit at the model's resolution: fast
        {"name": "RandomResizedCrop", "args": {"size": "input", "scale": [0.3, 1.0], "ratio": [0.75, 1.333]}, "p": 0.8},
        {"name": "RandomHorizontalFlip", "args": {"p": 0.5}},
        {"name": "RandomRotation", "args": {"degrees": 20}, "p": 0.3},
        {"name": "ColorJitter", "args": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.05}, "p": 0.8},
        {"name": "RandomGrayscale", "args": {"p": 0.05}},
        {"name": "SomeOf", "args": {"n": 1, "transforms": [  # one of the edit families beyond these
            *(FAMILIES[f][0] for f in ("overlay", "text", "emoji", "border", "aspect", "perspective", "screenshot"))]},
         "p": 0.5},
        {"name": "Downscale", "args": {"scale": [0.25, 0.7]}, "p": 0.3},
        {"name": "GaussianBlur", "args": {"kernel_size": 7, "sigma": [0.1, 2.0]}, "p": 0.2},
        {"name": "JPEG", "args": {"quality": [10, 60]}, "p": 0.5},
    ],
    "copyset": [
        {"name": "SomeOf", "args": {"n": 3, "transforms": [
            {"name": "RandomResizedCrop", "args": {"size": "input", "scale": [0.75, 0.9], "ratio": [1.0, 1.0]}},
            {"name": "RandomRotation", "args": {"degrees": 15}},
            {"name": "JPEG", "args": {"quality": [15, 35]}},
            {"name": "ColorJitter", "args": {"brightness": 0.3, "saturation": 0.3}},
            {"name": "RandomHorizontalFlip", "args": {"p": 1.0}},
            {"name": "Downscale", "args": {"scale": 0.5}},
        ]}},
    ],
    **FAMILIES,
}


class Downscale(v2.Transform):
    """Shrink by a factor (or a random one in [lo, hi]) and scale back: the detail a small
    re-upload loses. PIL images in, PIL images out."""

    def __init__(self, scale: float | Sequence[float] = 0.5):
        super().__init__()
        self.scale = (float(scale), float(scale)) if isinstance(scale, (int, float)) else tuple(map(float, scale))

    def forward(self, image):
        f = random.uniform(*self.scale) if self.scale[0] != self.scale[1] else self.scale[0]
        im = image if isinstance(image, Image.Image) else v2.functional.to_pil_image(image)
        w, h = im.size
        small = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        return small.resize((w, h), Image.BILINEAR)


class SomeOf(v2.Transform):
    """Apply ``n`` (or a random count in [lo, hi]) of ``transforms``, chosen at random, in the
    listed order."""

    def __init__(self, transforms: Sequence, n: int | Sequence[int] = 1):
        super().__init__()
        self.transforms = list(transforms)
        self.n = (int(n), int(n)) if isinstance(n, int) else tuple(map(int, n))
        if not 0 <= self.n[0] <= self.n[1] <= len(self.transforms):
            raise ZooError(f"SomeOf: n={n} must lie within 0..{len(self.transforms)} transforms")

    def forward(self, image):
        k = int(torch.randint(self.n[0], self.n[1] + 1, (1,)))
        chosen = sorted(torch.randperm(len(self.transforms))[:k].tolist())
        for i in chosen:
            image = self.transforms[i](image)
        return image


OWN = {"Downscale": Downscale, "SomeOf": SomeOf, **OWN_EDITS}


def resolve_spec(spec: Spec | None) -> list[dict]:
    """A preset name or a list of steps -> the list of steps (checked)."""
    if spec is None:
        spec = "default"
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ZooError(f"unknown augmentation preset '{spec}'; presets: {', '.join(PRESETS)} (or a list of {{name, args, p}})")
        return [dict(s) for s in PRESETS[spec]]
    steps = list(spec)
    for s in steps:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or set(s) - {"name", "args", "p"}:
            raise ZooError(f"augmentation step {s!r}: expected {{name: TRANSFORM, args: {{...}}, p: PROBABILITY}}")
    return steps


def build_step(step: dict, size: tuple[int, int]):
    name, args = step["name"], dict(step.get("args") or {})
    cls = OWN.get(name) or (getattr(v2, name, None) if name[:1].isupper() else None)
    if cls is None or not isinstance(cls, type):
        raise ZooError(f"unknown augmentation '{name}': a torchvision.transforms.v2 class or one of {', '.join(OWN)}")
    args = {k: (list(size) if v == "input" else v) for k, v in args.items()}
    if name == "SomeOf":
        args["transforms"] = [build_step(s, size) for s in resolve_spec(args.get("transforms", []))]
    try:
        t = cls(**args)
    except Exception as e:  # a bad argument: TypeError, ValueError...
        raise ZooError(f"augmentation {name}{args}: {' '.join(str(e).split())[:200]}") from None
    if step.get("p") is not None:
        p = float(step["p"])
        if not 0.0 <= p <= 1.0:
            raise ZooError(f"augmentation {name}: p={p} must lie in [0, 1]")
        t = v2.RandomApply([t], p=p)
    return t


def edits(spec: Spec | None, size: Sequence[int]) -> v2.Compose:
    """The configured steps alone: PIL image -> edited PIL image (the size may change)."""
    size = (int(size[0]), int(size[1]))
    return v2.Compose([build_step(s, size) for s in resolve_spec(spec)] or [v2.Identity()])


def build_augmentation(spec: Spec | None, data_config: dict[str, Any]) -> v2.Compose:
    """PIL image -> (3, H, W) float tensor: the steps, then resize, scale and normalise."""
    size = tuple(data_config["input_size"][1:])
    return v2.Compose([
        edits(spec, size),
        v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(data_config["mean"]), list(data_config["std"])),
    ])


def make_copy(image: Image.Image, spec: Spec, seed: int, size: Sequence[int] | None = None,
              others: Sequence[Image.Image] = ()) -> Image.Image:
    """A seeded edited copy of ``image`` (RGB PIL); ``size``: the working size of "input"
    arguments (default: the image's own, as [H, W]); ``others``: photos an ``Overlay`` may paste
    the image onto."""
    size = size or (image.size[1], image.size[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = random.getstate()
        random.seed(seed)
        try:
            pipeline = edits(spec, size)
            for step in walk(pipeline):
                for other in others if hasattr(step, "remember") else ():
                    step.remember(other)
            out = pipeline(image.convert("RGB"))
        finally:
            random.setstate(state)
    return out if isinstance(out, Image.Image) else v2.functional.to_pil_image(out)


def timm_augmentation(data_config: dict[str, Any], auto_augment: str, scale: Sequence[float] = (0.35, 1.0)):
    """PIL image -> (3, H, W) float tensor, the ImageNet training recipe of timm's
    create_transform: a random resized crop to ``scale`` of the area, a mirror half the time,
    then ``auto_augment`` (timm's policy string: "rand-m9-mstd0.5-inc1" for RandAugment,
    "original" for AutoAugment, "augmix-m5-w4-d2"), scaled and normalised as the model expects."""
    import timm.data

    if not isinstance(auto_augment, str) or not auto_augment:
        raise ZooError(f"auto_augment {auto_augment!r}: a timm policy string is expected, e.g. rand-m9-mstd0.5-inc1")
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ZooError(f"crop_scale {list(scale)}: [low, high] shares of the area in (0, 1] are expected")
    try:
        transform = timm.data.create_transform(
            input_size=tuple(data_config["input_size"]), is_training=True, scale=tuple(scale), hflip=0.5,
            auto_augment=auto_augment, interpolation=data_config.get("interpolation", "bilinear"),
            mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        raise ZooError(f"auto_augment {auto_augment!r}: not a timm policy ({type(e).__name__}: {str(e)[:100]}); "
                       f"e.g. rand-m9-mstd0.5-inc1, original, augmix-m5-w4-d2") from None
    for step in getattr(transform, "transforms", []):  # RandAugment / AutoAugment hold their ops
        for op in [*getattr(step, "ops", []), *[o for ops in getattr(step, "policy", []) for o in ops]]:
            if getattr(op, "aug_fn", None) is timm.data.auto_augment.posterize:
                op.aug_fn = posterize_at_least_one_bit
    return transform


def posterize_at_least_one_bit(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, keeping at least one bit: at full magnitude timm asks for 0 bits
    (``rand-m9-mstd0.5-inc1`` does now and then), which Pillow refuses with a ValueError in a
    loader worker, ending the training."""
    from timm.data import auto_augment as policies

    return policies.posterize(image, max(int(bits_to_keep), 1))

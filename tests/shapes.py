"""A synthetic image set whose classes differ by shape, not by colour."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")


def draw(shape: str, rng: random.Random, size: int = 48) -> Image.Image:
    # colours come from one distribution for every class, with enough contrast to see the shape
    bg = tuple(rng.randrange(256) for _ in range(3))
    fg = tuple(rng.randrange(256) for _ in range(3))
    while abs(sum(fg) - sum(bg)) < 240:
        fg = tuple(rng.randrange(256) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    else:
        w = max(2, r // 3)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    return im


def make_shapes(root: Path, per_class: int, seed: int = 0, size: int = 48, shapes=SHAPES) -> Path:
    rng = random.Random(seed)
    for shape in shapes:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(shape, rng, size).save(root / shape / f"{i:03d}.png")
    return root

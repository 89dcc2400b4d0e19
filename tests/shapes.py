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


def triplet_fit_args(data: Path, runs: Path) -> list:
    """`zoo fit` arguments of a tiny triplet run on a shapes folder (random-init test_resnet at 32
    pixels, no loader workers, logs and checkpoints under ``runs``); add the head_kwargs after."""
    return ["fit", "--data.root", data, "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", runs, "--trainer.default_root_dir", runs,
            "--model.backbone", "test_resnet", "--model.pretrained", "false", "--model.head", "triplet",
            "--model.data_config", "{image_size: 32}"]

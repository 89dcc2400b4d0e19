"""The edits people make to a copied photo, beyond crop/rotate/colour/JPEG: zoo's own
``torchvision.transforms.v2`` steps, and the named edit families of copy-detection benchmarks.

Steps (PIL image in, PIL image out; random choices from Python's ``random``, which
``zoo.data.augment.make_copy`` seeds and DataLoader workers seed per worker):

- ``Overlay``: the photo, scaled to ``scale`` of the width, pasted onto *another photo*: one of
  the last ``pool`` images the step saw (``remember`` adds some; ``make_copy(others=...)`` primes
  it), or a generated colour gradient while it has seen none;
- ``TextOverlay``: words in PIL's built-in font (``ImageFont.load_default``, no font file);
- ``EmojiOverlay``: drawn stickers (a face in a filled circle; no emoji font needed);
- ``Border``: a uniform frame of ``width`` times each side, around the whole photo;
- ``AspectRatio``: one side stretched by ``factor`` (the other kept);
- ``HeavyCrop``: a region of ``area`` of the photo (30-50 % by default), not resized;
- ``ScreenshotFrame``: the photo inside an application window: title bar with buttons and text,
  side panel, status bar, on a light or dark theme.

``FAMILIES``: each family as a list of steps (a spec of zoo.data.augment, selectable by name as
a preset): the six edits of ``copyset`` one at a time, the new ones above, ``perspective``
(torchvision's ``RandomPerspective``) and ``combo`` (two or three families together).
"""
from __future__ import annotations

import random
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms import v2

WORDS = ("SALE", "lol", "best recipe", "@foodie", "#tasty", "2026", "wow", "dinner", "Copyright", "share", "look",
         "breaking", "zoo", "yum!", "NEW", "original?")


def _pil(image) -> Image.Image:
    im = image if isinstance(image, Image.Image) else v2.functional.to_pil_image(image)
    return im.convert("RGB")


def _span(value) -> tuple[float, float]:
    return (float(value), float(value)) if isinstance(value, (int, float)) else (float(value[0]), float(value[1]))


def _colour() -> tuple[int, int, int]:
    return tuple(random.randrange(256) for _ in range(3))


class Overlay(v2.Transform):
    """The photo, ``scale`` (of the width) of it, pasted at a random place onto another photo."""

    def __init__(self, scale: float | Sequence[float] = (0.45, 0.8), pool: int = 16):
        super().__init__()
        self.scale, self.pool_size, self.pool = _span(scale), int(pool), []

    def remember(self, image) -> None:
        self.pool.append(_pil(image))
        del self.pool[:-self.pool_size]

    def forward(self, image):
        im = _pil(image)
        w, h = im.size
        if self.pool:
            back = random.choice(self.pool).resize((w, h), Image.BILINEAR)
        else:  # nothing seen yet: a colour gradient
            a, b = _colour(), _colour()
            back = Image.linear_gradient("L").resize((w, h)).convert("RGB")
            back = Image.composite(Image.new("RGB", (w, h), a), Image.new("RGB", (w, h), b), back.convert("L"))
        self.remember(im)
        f = random.uniform(*self.scale)
        small = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        x, y = random.randint(0, w - small.size[0]), random.randint(0, h - small.size[1])
        back = back.copy()
        back.paste(small, (x, y))
        return back


class TextOverlay(v2.Transform):
    """1-3 lines of words (or ``text``) in PIL's built-in font, ``size`` times the height tall,
    in one random colour (or ``colour``) with a contrasting outline when ``outline``."""

    def __init__(self, size: float | Sequence[float] = (0.08, 0.2), lines: int | Sequence[int] = (1, 3),
                 text: str | None = None, colour: Sequence[int] | None = None, outline: bool = True):
        super().__init__()
        self.size, self.text, self.outline = _span(size), text, outline
        self.lines = (int(lines), int(lines)) if isinstance(lines, int) else tuple(map(int, lines))
        self.colour = tuple(colour) if colour is not None else None

    def forward(self, image):
        im = _pil(image).copy()
        w, h = im.size
        draw = ImageDraw.Draw(im)
        for _ in range(random.randint(*self.lines)):
            font = ImageFont.load_default(size=max(6, round(h * random.uniform(*self.size))))
            text = self.text or " ".join(random.sample(WORDS, random.randint(1, 3)))
            colour = self.colour or _colour()
            x, y = random.randint(-w // 8, max(0, w * 3 // 4)), random.randint(0, max(0, h * 7 // 8))
            stroke = dict(stroke_width=max(1, font.size // 12), stroke_fill=tuple(255 - c for c in colour)) if self.outline else {}
            draw.text((x, y), text, fill=colour, font=font, **stroke)
        return im


class EmojiOverlay(v2.Transform):
    """1-4 drawn stickers, ``size`` times the shorter side across: a filled circle with two eyes
    and a smile (``colour``: the face's fill; default yellow or a random colour)."""

    def __init__(self, size: float | Sequence[float] = (0.12, 0.3), count: int | Sequence[int] = (1, 4),
                 colour: Sequence[int] | None = None):
        super().__init__()
        self.size, self.colour = _span(size), tuple(colour) if colour is not None else None
        self.count = (int(count), int(count)) if isinstance(count, int) else tuple(map(int, count))

    def forward(self, image):
        im = _pil(image).copy()
        w, h = im.size
        draw = ImageDraw.Draw(im)
        for _ in range(random.randint(*self.count)):
            d = max(4, round(min(w, h) * random.uniform(*self.size)))
            x, y = random.randint(0, max(0, w - d)), random.randint(0, max(0, h - d))
            fill = self.colour or ((255, 204, 0) if random.random() < 0.6 else _colour())
            draw.ellipse((x, y, x + d - 1, y + d - 1), fill=fill)
            e = max(1, d // 10)
            for ex in (x + d * 3 // 10, x + d * 7 // 10):
                draw.ellipse((ex - e, y + d * 35 // 100 - e, ex + e, y + d * 35 // 100 + e), fill=(20, 20, 20))
            draw.arc((x + d // 4, y + d * 4 // 10, x + d * 3 // 4, y + d * 3 // 4), 20, 160, fill=(20, 20, 20),
                     width=max(1, d // 16))
        return im


class Border(v2.Transform):
    """A uniform frame: ``width`` times the width on the left and right, times the height on top
    and bottom, in ``colour`` (default: black, white or a random colour)."""

    def __init__(self, width: float | Sequence[float] = (0.04, 0.2), colour: Sequence[int] | None = None):
        super().__init__()
        self.width, self.colour = _span(width), tuple(colour) if colour is not None else None

    def forward(self, image):
        im = _pil(image)
        w, h = im.size
        f = random.uniform(*self.width)
        px, py = round(w * f), round(h * f)
        colour = self.colour or random.choice([(0, 0, 0), (255, 255, 255), _colour()])
        out = Image.new("RGB", (w + 2 * px, h + 2 * py), colour)
        out.paste(im, (px, py))
        return out


class AspectRatio(v2.Transform):
    """The width (or, half the time, the height) stretched by a factor drawn from ``factor``
    (or its inverse range, squeezing): the aspect ratio changes, nothing is cut."""

    def __init__(self, factor: float | Sequence[float] = (1.3, 1.8)):
        super().__init__()
        self.factor = _span(factor)

    def forward(self, image):
        im = _pil(image)
        w, h = im.size
        f = random.uniform(*self.factor)
        f = f if random.random() < 0.5 else 1.0 / f
        size = (max(1, round(w * f)), h) if random.random() < 0.5 else (w, max(1, round(h * f)))
        return im.resize(size, Image.BILINEAR)


class HeavyCrop(v2.Transform):
    """A region of ``area`` (a fraction of the photo's area, 0.3-0.5 by default), of the photo's
    own aspect ratio times up to ``ratio`` either way, at a random place; not resized."""

    def __init__(self, area: float | Sequence[float] = (0.3, 0.5), ratio: float = 1.25):
        super().__init__()
        self.area, self.ratio = _span(area), float(ratio)

    def forward(self, image):
        im = _pil(image)
        w, h = im.size
        a = random.uniform(*self.area) * w * h
        r = (w / h) * self.ratio ** random.uniform(-1, 1)
        cw = min(w, max(1, round((a * r) ** 0.5)))
        ch = min(h, max(1, round(a / cw)))
        x, y = random.randint(0, w - cw), random.randint(0, h - ch)
        return im.crop((x, y, x + cw, y + ch))


class ScreenshotFrame(v2.Transform):
    """The photo inside an application window: the photo fills ``fill`` of the window's width
    (at its own size), under a title bar (three buttons, a title), beside a side panel of text
    lines, above a status bar; a light or dark theme."""

    def __init__(self, fill: float | Sequence[float] = (0.6, 0.85)):
        super().__init__()
        self.fill = _span(fill)

    def forward(self, image):
        im = _pil(image)
        w, h = im.size
        f = random.uniform(*self.fill)
        W = max(w + 4, round(w / f))
        bar, status = max(6, h // 10), max(4, h // 16)
        margin = max(2, (W - w) // 8)
        H = h + bar + status + 2 * margin
        dark = random.random() < 0.4
        back, panel, ink = ((30, 30, 34), (45, 45, 52), (200, 200, 200)) if dark else ((250, 250, 250), (232, 234, 238), (60, 60, 60))
        out = Image.new("RGB", (W, H), back)
        draw = ImageDraw.Draw(out)
        draw.rectangle((0, 0, W - 1, bar - 1), fill=panel)
        r = max(1, bar // 4)
        for k, c in enumerate(((237, 94, 87), (245, 190, 80), (98, 197, 84))):
            cx = bar // 2 + k * 3 * r
            draw.ellipse((cx - r, bar // 2 - r, cx + r, bar // 2 + r), fill=c)
        font = ImageFont.load_default(size=max(6, bar * 6 // 10))
        draw.text((bar // 2 + 9 * r, bar // 5), random.choice(WORDS) + ".jpg", fill=ink, font=font)
        left = W - w - margin if random.random() < 0.5 else margin  # the side panel on the other side
        panel_x = (0, left - margin) if left > margin else (left + w + margin, W)
        draw.rectangle((panel_x[0], bar, panel_x[1] - 1, H - status - 1), fill=panel)
        for line in range(bar + margin, H - status - bar, max(4, bar * 3 // 4)):
            draw.line((panel_x[0] + 2, line, panel_x[0] + (panel_x[1] - panel_x[0]) * random.uniform(0.3, 0.9), line),
                      fill=ink, width=max(1, bar // 8))
        draw.rectangle((0, H - status, W - 1, H - 1), fill=panel)
        out.paste(im, (left, bar + margin))
        return out


OWN_EDITS = {"Overlay": Overlay, "TextOverlay": TextOverlay, "EmojiOverlay": EmojiOverlay, "Border": Border,
             "AspectRatio": AspectRatio, "HeavyCrop": HeavyCrop, "ScreenshotFrame": ScreenshotFrame}

_NEW = {
    "overlay": [{"name": "Overlay"}],
    "text": [{"name": "TextOverlay"}],
    "emoji": [{"name": "EmojiOverlay"}],
    "border": [{"name": "Border"}],
    "aspect": [{"name": "AspectRatio"}],
    "heavy_crop": [{"name": "HeavyCrop"}],
    "perspective": [{"name": "RandomPerspective", "args": {"distortion_scale": 0.45, "p": 1.0}}],
    "screenshot": [{"name": "ScreenshotFrame"}],
}
_COPYSET = {  # copyset's six edits, one at a time (the same ranges)
    "crop": [{"name": "RandomResizedCrop", "args": {"size": "input", "scale": [0.75, 0.9], "ratio": [1.0, 1.0]}}],
    "rotation": [{"name": "RandomRotation", "args": {"degrees": 15}}],
    "jpeg": [{"name": "JPEG", "args": {"quality": [15, 35]}}],
    "colour": [{"name": "ColorJitter", "args": {"brightness": 0.3, "saturation": 0.3}}],
    "mirror": [{"name": "RandomHorizontalFlip", "args": {"p": 1.0}}],
    "downscale": [{"name": "Downscale", "args": {"scale": 0.5}}],
}
FAMILIES: dict[str, list[dict]] = {
    **_COPYSET, **_NEW,
    "combo": [{"name": "SomeOf", "args": {"n": [2, 3], "transforms": [
        _NEW["heavy_crop"][0], _COPYSET["rotation"][0], _COPYSET["colour"][0], _COPYSET["mirror"][0],
        _NEW["aspect"][0], _NEW["perspective"][0], _NEW["border"][0], _NEW["text"][0], _NEW["emoji"][0],
        _NEW["overlay"][0], _NEW["screenshot"][0], _COPYSET["jpeg"][0]]}}],
}


def walk(transform):
    """``transform`` and every step inside it (Compose, RandomApply, SomeOf)."""
    yield transform
    for child in getattr(transform, "transforms", ()) or ():
        yield from walk(child)

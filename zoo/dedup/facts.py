"""What a duplicate group's members are, as a person comparing them would ask: pixels, bytes,
format, JPEG quality (estimated from the quantisation tables), sharpness, EXIF date, path.

``file_facts`` reads a file's header (never the whole image) for everything but sharpness, which
decodes a reduced copy and is computed only when asked for (``FileFacts["sharpness"]``): the
keep-best rules (zoo.dedup.keep) reach it only when pixels and compression tie. Files are opened
with zoo.io.open_regular (regular files only, never a link); a file that is gone or not an
image has ``gone`` or ``format`` None, and loses every rule.
"""
from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from zoo.io import open_regular

LOSSLESS = {"PNG", "BMP", "TIFF", "GIF", "PPM", "TGA", "QOI"}
SHARPNESS_SIDE = 256  # sharpness is measured on copies of this longest side, so sizes compare
MAX_FACT_PIXELS = 200_000_000  # larger images get no sharpness (their header is still read)
# the IJG (libjpeg) luminance table at quality 50, against which a JPEG's own is scaled
IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)


def jpeg_quality(tables: Optional[dict]) -> Optional[int]:
    """The libjpeg quality (1..100) that most nearly makes the luminance quantisation table
    ``tables[0]`` (PIL's ``im.quantization``), or None. Order-free: the table's sum against the
    IJG table's, inverted the way libjpeg scales it (q < 50: 5000 / q %, else 200 - 2 q %)."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    scale = 100.0 * float(np.sum(tables[0])) / float(IJG_LUMA.sum())  # percent of the q=50 table
    quality = 5000.0 / scale if scale > 100.0 else (200.0 - scale) / 2.0
    return int(min(100, max(1, round(quality))))


def exif_date(im: Image.Image) -> Optional[str]:
    """The EXIF date the photo was taken (DateTimeOriginal, else DateTime) as ISO 8601, or None."""
    try:
        exif = im.getexif()
        raw = exif.get_ifd(0x8769).get(36867) or exif.get(306)
        return _dt.datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").isoformat() if raw else None
    except Exception:  # a damaged EXIF block is no date, not an error
        return None


def sharpness(path: str | Path) -> Optional[float]:
    """Variance of the Laplacian of the grey image scaled to a longest side of SHARPNESS_SIDE
    (higher: sharper); None for a file that cannot be decoded."""
    try:
        with open_regular(path, follow_links=False) as f, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                if im.width * im.height > MAX_FACT_PIXELS:
                    return None
                im.draft("L", (SHARPNESS_SIDE, SHARPNESS_SIDE))
                grey = im.convert("L")
        grey.thumbnail((SHARPNESS_SIDE, SHARPNESS_SIDE))
        a = np.asarray(grey, np.float64)
        if a.shape[0] < 3 or a.shape[1] < 3:
            return 0.0
        lap = a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4.0 * a[1:-1, 1:-1]
        return round(float(lap.var()), 3)
    except Exception:  # OSError, ValueError, Pillow's decoder errors and bomb guard
        return None


class FileFacts(dict):
    """A file's facts (a dict); ``sharpness`` is decoded on first access only."""

    def __missing__(self, key: str) -> Any:
        if key != "sharpness":
            raise KeyError(key)
        self["sharpness"] = None if self.get("gone") or self.get("format") is None else sharpness(self["path"])
        return self["sharpness"]

    def public(self) -> dict:
        """Every fact, sharpness included (decoding it now if needed), as plain JSON values."""
        self["sharpness"]  # noqa: B018 (computes it)
        return dict(self)


def file_facts(path: str | Path) -> FileFacts:
    """The facts of one file (see the module's docstring): keys path, gone, bytes, format, width,
    height, pixels, lossless, quality, date; sharpness on access."""
    path = str(path)
    facts = FileFacts(path=path, gone=False, bytes=None, format=None, width=None, height=None, pixels=None,
                      lossless=None, quality=None, date=None)
    try:
        with open_regular(path, follow_links=False) as f, warnings.catch_warnings():
            facts["bytes"] = os.fstat(f.fileno()).st_size
            warnings.simplefilter("ignore")  # the header only: a huge image is a fact, not a bomb
            with Image.open(f) as im:
                w, h = im.size
                facts.update(format=im.format, width=w, height=h, pixels=w * h, lossless=im.format in LOSSLESS,
                             quality=jpeg_quality(getattr(im, "quantization", None)) if im.format == "JPEG" else None,
                             date=exif_date(im))
    except FileNotFoundError:
        facts["gone"] = True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, OSError) and not os.path.lexists(path):
            facts["gone"] = True
        # else: not a regular file, a link, or not an image: no format, and it loses every rule
    return facts

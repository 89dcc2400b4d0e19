"""Folder -> image records -> decoded, preprocessed tensors.

Images are decoded by content (Pillow sniffs the bytes), never by extension. A file that
cannot be decoded becomes ``None`` in the dataset; the collate function drops it and carries
the reason along, so callers report each skipped file once.
"""
from __future__ import annotations

import os
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import Dataset

from zoo.data.decode import device_decodable, read_bytes
from zoo.errors import ZooError
from zoo.io import kind_of, open_regular

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is reported, not padded with grey


@dataclass(frozen=True)
class Record:
    path: str  # absolute
    label: Optional[str] = None  # parent folder's name below the root
    frame: Optional[int] = None  # video frames only
    time: Optional[float] = None  # seconds, video frames only
    image: Optional[Image.Image] = None  # already decoded (video frames)


def scan_folder(root: str | Path, recursive: bool = True, exclude: Optional[Path] = None) -> list[Record]:
    """Every regular, non-hidden file below ``root``, sorted; label = parent folder name.

    Only regular files inside the folder are listed: named pipes, devices, sockets, broken
    links and links (to files or folders) that resolve outside ``root`` are reported on stderr
    and left out, so no reader blocks on a pipe or reads outside the folder. Symbolic links to
    folders inside are followed, but each real folder is visited once (a link loop ends there).
    Paths stay under ``root`` as written (not resolved through links). File names that are not
    valid UTF-8 are reported and left out. ``exclude``: a folder below ``root`` to leave out
    (e.g. an index written inside the image folder).
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise ZooError(f"no such folder: {root}")
    if not root.is_dir():
        return [regular_record(root)]
    real_root = os.path.realpath(root)
    skip = os.path.realpath(exclude) if exclude is not None else None
    seen_dirs: set[tuple[int, int]] = set()
    bad_names: list[str] = []
    unusable: list[tuple[str, str]] = []
    records = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs or os.path.realpath(dirpath) == skip:
            dirnames[:] = []  # a folder seen before (through a link), or the excluded one
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and _utf8(d, dirpath, bad_names)
                             and _inside(os.path.join(dirpath, d), real_root, unusable, "a link to a folder outside"))
        if not recursive:
            dirnames[:] = []
        here = Path(dirpath)
        label = None if here == root else here.name
        for name in sorted(filenames):
            if name.startswith(".") or not _utf8(name, dirpath, bad_names):
                continue
            path = os.path.join(dirpath, name)
            try:
                mode = os.stat(path).st_mode
            except OSError as e:  # a broken link, or gone
                unusable.append((path, f"cannot read: {e.strerror}"))
                continue
            if not stat.S_ISREG(mode):
                unusable.append((path, kind_of(mode)))
            elif not os.path.islink(path) or _inside(path, real_root, unusable, "a link to a file outside"):
                records.append(Record(path, label))
    if bad_names:
        print(f"zoo: skipped {len(bad_names)} file(s) whose names are not valid UTF-8:", file=sys.stderr)
        for n in bad_names:
            print(f"  {n}", file=sys.stderr)
    if unusable:
        print(f"zoo: skipped {len(unusable)} entr{'y' if len(unusable) == 1 else 'ies'} that are not regular files "
              f"inside {root}:", file=sys.stderr)
        for path, reason in unusable:
            print(f"  {path} ({reason})", file=sys.stderr)
    if not records:
        raise ZooError(f"no files in {root}")
    return records


def _inside(path: str, real_root: str, unusable: list[tuple[str, str]], reason: str) -> bool:
    """``path`` resolves inside ``real_root``; else it is noted in ``unusable``."""
    if os.path.commonpath([os.path.realpath(path), real_root]) == real_root:
        return True
    unusable.append((path, f"{reason} the folder"))
    return False


def regular_record(path: Path) -> Record:
    """A file named on its own: it must be a regular file (a pipe or a device is never read)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ZooError(f"{path} is not a regular file ({kind_of(mode)}); zoo reads only regular files")
    return Record(str(path.resolve()))


def _utf8(name: str, folder: str, bad: list[str]) -> bool:
    """os.walk gives undecodable bytes as surrogates; such names cannot be stored or printed."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        bad.append(os.path.join(folder, name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
        return False


def records_from(inputs: Sequence[str | Path]) -> list[Record]:
    """Files and folders (recursive) given on the command line, in order."""
    records: list[Record] = []
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            raise ZooError(f"expected image paths, got {type(item).__name__}")
        bad: list[str] = []
        if not _utf8(str(item), "", bad):
            raise ZooError(f"file name is not valid UTF-8: {bad[0]}; rename it")
        p = Path(item).expanduser()
        if p.is_dir():
            records += scan_folder(p)
        elif p.exists():
            records.append(regular_record(p))
        else:
            raise ZooError(f"no such file or folder: {item}")
    return records


class ImageTooLarge(ValueError):
    """An image that would decode to more pixels than allowed (``max_pixels``, or Pillow's
    decompression-bomb guard)."""


def load_image(path: str | Path | bytes, draft_size: Optional[int] = None, max_pixels: Optional[int] = None) -> Image.Image:
    """Decode any image Pillow knows (a file, or its bytes) into 8-bit RGB, upright.
    ``draft_size``: the shorter side the caller will resize to; a big JPEG is decoded at a
    reduced scale (Pillow's draft mode: JPEG DCT scaling) and any other big picture is reduced on
    load by an integer factor that keeps it at least twice that size (reduce_on_load), so a
    4032 x 3024 photo or a screenshot costs little more than a small one.
    ``max_pixels``: refuse, from the header and before decoding, an image that would decode to
    more pixels (after a JPEG's draft reduction). Raises ValueError(reason), ImageTooLarge for size."""
    import io

    try:
        # a named pipe or a device is refused here, before anything waits on it
        with (io.BytesIO(path) if isinstance(path, bytes) else open_regular(path)) as f, warnings.catch_warnings():
            if not f.read(1):
                raise ValueError("empty file")
            f.seek(0)
            # Pillow's decompression-bomb guard stays on; its warning (over MAX_IMAGE_PIXELS) skips too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))  # decode big JPEGs at reduced size
                if max_pixels and im.width * im.height > max_pixels:
                    raise ImageTooLarge(f"too large ({im.width} x {im.height} pixels; the limit is {max_pixels:,})")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # no copy: to_rgb makes the one returned
                return reduce_on_load(to_rgb(im), draft_size)
    except ValueError:
        raise
    except Image.UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge("too large (decompression-bomb guard)") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"corrupt or truncated ({str(e).splitlines()[0][:80]})") from None


def reduce_on_load(im: Image.Image, size: Optional[int]) -> Image.Image:
    """``im`` reduced by the largest integer factor (a box average, Pillow's ``reduce``) that keeps
    its shorter side at least twice ``size``: the resize to ``size`` that follows then reads a
    quarter or less of the pixels, with the quality of Pillow's ``reducing_gap=2``."""
    factor = min(im.size) // (2 * size) if size else 0
    return im.reduce(factor) if factor >= 2 else im


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        top = float(a.max()) if a.size else 0.0
        if im.mode == "F" and top <= 1.0:
            hi = 1.0  # floating point in [0, 1]
        elif im.mode.startswith("I;16") or top > 255:
            hi = 65535.0
        else:
            hi = 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return background
    return im.convert("RGB")


class ImageDataset(Dataset):
    """records -> {"image": (3, H, W) tensor, "index": i}, or {"index": i, "error": reason}
    when undecodable.

    indices: the positions in ``records`` to serve (default all); "index" is the position.
    jpeg_bytes: hand over the file's bytes ({"jpeg": uint8 array}) instead of pixels when the
    file is a JPEG the device can decode (zoo.decode); other files are decoded here as usual.
    """

    def __init__(self, records: Sequence[Record], transform: Callable, draft_size: Optional[int] = None,
                 indices: Optional[Sequence[int]] = None, jpeg_bytes: bool = False):
        self.records = list(records)
        self.transform = transform
        self.draft_size = draft_size
        self.indices = list(range(len(self.records))) if indices is None else list(indices)
        self.jpeg_bytes = jpeg_bytes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, n: int):
        i = self.indices[n]
        r = self.records[i]
        if self.jpeg_bytes and r.image is None:
            try:
                data = read_bytes(r.path)
            except OSError as e:
                return {"index": i, "error": f"cannot read ({e.strerror})"}
            except ValueError as e:  # a pipe or a device swapped in since the listing
                return {"index": i, "error": str(e)}
            if device_decodable(memoryview(data)):
                return {"index": i, "jpeg": data}
        try:
            image = r.image if r.image is not None else load_image(r.path, self.draft_size)
        except ValueError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "image": self.transform(image)}


def collate(items: list[dict], pairs: bool = False) -> dict:
    """Batch the decodable items; keep (index, reason) of the others in ``skipped``.

    pairs: each item holds two views (2, ...) that become two rows of the batch.
    Items that carry JPEG bytes (ImageDataset's jpeg_bytes) go to ``jpeg`` (a list of uint8
    arrays, which stay on the CPU for the device decoder) with their ``jpeg_index``.
    """
    jpegs = [it for it in items if "jpeg" in it]
    good = [it for it in items if "error" not in it and "jpeg" not in it]
    out: dict = {"skipped": [(it["index"], it["error"]) for it in items if "error" in it]}
    if jpegs:
        out["jpeg"] = [it["jpeg"] for it in jpegs]
        out["jpeg_index"] = torch.tensor([it["index"] for it in jpegs], dtype=torch.long)
    for key in good[0].keys() if good else ("image", "index"):
        values = [torch.as_tensor(it[key]) for it in good]
        if not values:
            out[key] = torch.empty(0, dtype=torch.long)
        else:
            out[key] = torch.cat(values) if pairs else torch.stack(values)
    return out

"""The work behind ``zoo serve``: the index and its model, loaded once and shared by every request.

SearchService decodes uploads (by content, within a byte and a pixel budget), embeds them one
forward pass at a time (on the CPU, at the index's precision: zoo.model.inference), searches
the index, compares two images, reads indexed items by id (never by path) and makes their
thumbnails, and holds the duplicates result the review page works on (zoo.serve.review). It
reads the index only through ZooIndex: items, their
files and stored vectors by id. A request the client can fix is an UploadError, which the HTTP
layer (zoo.serve.app) answers as JSON.
"""
from __future__ import annotations

import io
import threading
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from zoo.data.images import ImageTooLarge, load_image
from zoo.data.transforms import draft_size, eval_transform
from zoo.dedup.compare import similarity_score
from zoo.dedup.keep import DEFAULT_RULES
from zoo.errors import ZooError
from zoo.evaluate.check import load_check, verdict
from zoo.index.core import ZooIndex
from zoo.model.inference import inference_setting
from zoo.model.runtime import check_runtime, choose_runtime, compiled_forward
from zoo.serve.duplicates import load_duplicates
from zoo.serve.review import Review

MAX_K = 200
THUMB_SIZES = (128, 256, 512)
MAX_PIXELS = 40_000_000  # an upload decodes to at most this many pixels (--max_pixels)


class UploadError(Exception):
    """A request the client can fix: answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class SearchService:
    """The loaded index and its model; thread-safe (one forward pass at a time)."""

    def __init__(self, index: ZooIndex, index_path: str | Path, duplicates: Optional[str | Path] = None,
                 max_upload_bytes: int = 20 << 20, max_pixels: int = MAX_PIXELS, precision: Optional[str] = None,
                 quarantine: Optional[str | Path] = None, keep_rules: Sequence[str] = DEFAULT_RULES,
                 protect: Sequence[str | Path] = (), calibration: Optional[str | Path] = None,
                 runtime: str = "torch"):
        self.idx = index
        self.index_path = str(Path(index_path).resolve())
        if len(index) == 0:
            raise ZooError(f"{index_path} holds no items; nothing to serve")
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.model = index.model().eval()  # the index's own model (checked against its identity)
        # its precision (zoo.model.inference): as asked, else the index's own where this CPU computes it
        self.inference = inference_setting("cpu", precision, recorded=None if precision else index.precision)
        # what runs it (zoo.model.runtime; zoo serve asks for auto: a compiled fp32 forward where installed)
        self.runtime = choose_runtime(runtime, "cpu", self.inference.precision)
        self.compiled = compiled_forward(self.model, self.runtime, self.inference.precision,
                                         explicit=check_runtime(runtime) == self.runtime)
        self.runtime = self.runtime if self.compiled is not None else "torch"
        self.uses_channels_last = self.compiled is None and self.inference.channels_last
        if self.uses_channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.transform = eval_transform(self.model)
        self.draft = draft_size(self.model)
        self.lock = threading.Lock()
        self.thumbnail = lru_cache(maxsize=1024)(self._thumbnail)
        self.duplicates = load_duplicates(duplicates, index) if duplicates else None
        # the review page's moves go to --move_to, by default a folder beside groups.json
        self.review = None if self.duplicates is None else Review(
            self.duplicates, index, quarantine or self.duplicates.file.parent / "quarantine", keep_rules, protect)
        self.copy_check, self.uncalibrated = None, "no calibration given (start with --calibration FILE)"
        if calibration:  # the upload check (zoo.evaluate.check): the threshold for this index's size
            try:
                m = index.meta["model"]
                self.copy_check = load_check(calibration, m["architecture"], m["weights"], len(index))
            except ZooError as e:
                self.uncalibrated = str(e)
        self.embed(Image.new("RGB", (32, 32), (127, 127, 127)))  # warm-up: the first forward is slow

    # -- identity --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.idx)

    def item(self, i: int) -> dict:
        """Item ``i`` by the index's own ids (after an update they have gaps); 404 if there is
        none, or if its row is damaged."""
        try:
            return self.idx.item(i)
        except ZooError as e:
            raise UploadError(404, str(e)) from None

    def item_view(self, i: int) -> dict:
        """Item ``i`` as the API shows it: its row, file name and thumbnail address."""
        it = self.item(i)
        return {"id": i, **it, "name": Path(it["path"]).name, "thumbnail": f"/api/items/{i}/thumbnail"}

    def describe(self) -> str:
        """The index's model in words."""
        return self.idx.describe()

    def info(self) -> dict:
        m = self.idx.meta["model"]
        return {
            "index": self.index_path, "count": len(self.idx), "dim": self.idx.dim,
            "factory": self.idx.meta.get("factory"), "created": self.idx.meta.get("created"),
            "architecture": m["architecture"], "weights": m["weights"], "checkpoint": m.get("checkpoint"),
            "description": self.idx.describe(), "score": "(1 + cosine) / 2",
            "duplicates": self.duplicates is not None, "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
        }

    # -- embedding -------------------------------------------------------------------------
    def decode(self, data: bytes, what: str = "upload") -> Image.Image:
        """Uploaded bytes -> RGB image, by the rules of indexed files (zoo.data.load_image), within
        the pixel budget: the header's size is checked before anything is decoded (a JPEG's after
        its draft reduction, so a big photo decodes small)."""
        if len(data) == 0:
            raise UploadError(400, f"{what} is empty")
        if len(data) > self.max_upload_bytes:
            raise UploadError(413, f"{what} is {len(data)} bytes; the limit is {self.max_upload_bytes}")
        try:  # Pillow identifies the content, whatever the name says; its bomb guard stays on
            image = load_image(data, draft_size=self.draft, max_pixels=self.max_pixels)
        except ImageTooLarge as e:
            raise UploadError(413, f"{what} is {e}") from None
        except ValueError as e:
            raise UploadError(422, f"{what} is not a usable image: {e}") from None
        return image

    def prepare(self, data: bytes, what: str = "upload") -> tuple[torch.Tensor, tuple[int, int]]:
        """Uploaded bytes -> the model's input (1, 3, H, W) and the decoded size. The decoded
        pixels are dropped here, before the request waits its turn for the model."""
        image = self.decode(data, what)
        return self.transform(image).unsqueeze(0), image.size

    def embed(self, image: Image.Image) -> np.ndarray:
        """One decoded image -> its embedding (D,), L2-normalised.

        A server calls the model directly under inference_mode with the model's eval transform,
        the preprocessing zoo.embed uses, so vectors match the index's. A Trainer per request
        (as batch runs use, through zoo.embed.embed) would cost more than the forward itself.
        """
        return self.forward(self.transform(image).unsqueeze(0))  # (1, 3, H, W), outside the lock

    def forward(self, x: torch.Tensor) -> np.ndarray:
        """The model's input (1, 3, H, W) -> its embedding (D,), one request at a time, at the
        precision and layout of ``self.inference`` (bf16 autocast on a CPU that computes it natively)."""
        if self.uses_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.lock, torch.inference_mode(), self.inference.autocast():
            v = self.compiled(x) if self.compiled is not None else self.model(x)  # (1, D)
        return v[0].float().numpy()

    def vector(self, i: int) -> np.ndarray:
        """The indexed vector of item ``i`` (D,); re-embeds the file where the index cannot read
        its vectors back by id."""
        self.item(i)
        try:
            return self.idx.vectors_of([i])[0]
        except ZooError:  # e.g. an inverted file without a direct map
            return self.embed(self.item_image(i))

    # -- searching and comparing -------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int) -> list[dict]:
        """Top ``k`` items for an embedding (D,), as the API shows them."""
        sims, ids = self.idx.search_vectors(vector[None, :], k)  # (1, k), (1, k)
        return [
            {"id": h.id, "rank": h.rank, "cosine": round(h.similarity, 6),
             "score": round(float(similarity_score(h.similarity)), 6), "path": h.path, "name": Path(h.path).name,
             "label": h.label, "frame": h.frame, "time": h.time, "thumbnail": f"/api/items/{h.id}/thumbnail"}
            for h in self.idx.hits(sims[0], ids[0])
        ]

    def similar(self, i: int, k: int) -> list[dict]:
        """More like this: top ``k`` for indexed item ``i`` (its own vector, so it comes first)."""
        return self.search(self.vector(i), k)

    def compare(self, xa: torch.Tensor, xb: torch.Tensor) -> dict:
        """Score = (1 + cosine) / 2 in [0, 1] and cosine of two prepared images, as `zoo compare`."""
        va, vb = (self.forward(x).astype(np.float64) for x in (xa, xb))
        cos = float(np.clip(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12), -1.0, 1.0))
        return {"score": round(float(similarity_score(cos)), 6), "cosine": round(cos, 6)}

    def check(self, vector: np.ndarray) -> dict:
        """The upload check for an embedding (D,): "copy" of its nearest item or "new", with the
        calibrated threshold and its expected precision; without a calibration, "calibrated":
        false with the nearest item and its score (zoo.evaluate.check)."""
        sims, ids = self.idx.search_vectors(vector[None, :], 1, hubness=False)  # the nearest by cosine
        hits = self.idx.hits(sims[0], ids[0])
        if not hits:
            return verdict(self.copy_check, None, None, self.uncalibrated)
        h = hits[0]
        near = {"id": h.id, "path": h.path, "name": Path(h.path).name, "label": h.label,
                "thumbnail": f"/api/items/{h.id}/thumbnail"}
        return verdict(self.copy_check, near, h.similarity, self.uncalibrated)

    def clamp_k(self, k: int) -> int:
        """``k`` within 1..MAX_K and the number of items."""
        return max(1, min(k, MAX_K, len(self)))

    # -- thumbnails --------------------------------------------------------------------------
    def item_image(self, i: int) -> Image.Image:
        """The picture of item ``i``, read only from a regular file inside the index's root."""
        item = self.item(i)
        try:
            path = self.idx.item_file(i)
            if item.get("frame") is not None:
                from zoo.data.video import read_frame

                return read_frame(path, item["frame"])
            return load_image(path, draft_size=2 * max(THUMB_SIZES), max_pixels=self.max_pixels)
        except (ValueError, OSError, ZooError) as e:
            raise UploadError(404, f"the file of item {i} cannot be read ({e})") from None

    def _thumbnail(self, i: int, size: int) -> bytes:
        im = self.item_image(i)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

"""``zoo serve``: one process holds the model and the index; an HTTP API and a web page use them.

FastAPI on uvicorn. The index and its model load once at start-up, so a query costs one decode,
one forward pass and one FAISS search instead of a whole ``zoo search`` process. Endpoints
(all JSON; OpenAPI docs at /docs):

    GET  /api/health                      liveness (never needs the token)
    GET  /api/info                        index and model: architecture, weights, count, ...
    POST /api/search?k=10                 top k for an uploaded image (multipart field "file")
    POST /api/compare                     score in [0, 1] and cosine of two uploads ("a", "b")
    GET  /api/items/{id}                  one indexed item
    GET  /api/items/{id}/similar?k=10     more like this: top k for an indexed item
    GET  /api/items/{id}/thumbnail        JPEG thumbnail of an indexed item (by id, never by path)
    GET  /api/duplicates                  groups of a `zoo duplicates` result (--duplicates)
    GET  /                                the web page (zoo/static)

Safe by default: it listens on 127.0.0.1 and answers only requests whose Host header names it
(HostCheck: no DNS rebinding), an optional bearer token guards the API, request bodies and uploads
are size-limited, uploads are decoded by content within a pixel budget and with Pillow's
decompression-bomb guard (zoo.data.load_image), files are reachable only as indexed items by id
and only inside the index's root (ZooIndex.item_file), clients that hold connections without
finishing a request are dropped (GuardedHTTP), and every error is a JSON ``{"error": ...}``,
never a traceback.
"""
from __future__ import annotations

import asyncio
import functools
import io
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence

import h11
import numpy as np
import torch
import uvicorn
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from zoo.data.images import load_image
from zoo.data.transforms import draft_size, eval_transform
from zoo.dedup.compare import similarity_score
from zoo.errors import ZooError
from zoo.index.core import ZooIndex, load_index
from zoo.version import __version__

STATIC = Path(__file__).parent / "static"
MAX_K = 200
THUMB_SIZES = (128, 256, 512)
MAX_PIXELS = 40_000_000  # an upload decodes to at most this many pixels (--max_pixels)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class UploadError(Exception):
    """A request the client can fix: answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- the work: model, index, thumbnails, duplicate groups ------------------------------------
class SearchService:
    """The loaded index and its model; thread-safe (one forward pass at a time)."""

    def __init__(self, index: ZooIndex, index_path: str | Path, duplicates: Optional[str | Path] = None,
                 max_upload_bytes: int = 20 << 20, max_pixels: int = MAX_PIXELS):
        self.idx = index
        self.index_path = str(Path(index_path).resolve())
        if len(index) == 0:
            raise ZooError(f"{index_path} holds no items; nothing to serve")
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.model = index.model().eval()  # the index's own model (checked against its identity)
        self.transform = eval_transform(self.model)
        self.draft = draft_size(self.model)
        self.lock = threading.Lock()
        self.thumbnail = lru_cache(maxsize=1024)(self._thumbnail)
        self.duplicates = load_duplicates(duplicates, index) if duplicates else None
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
        except ValueError as e:
            if str(e).startswith("too large"):
                raise UploadError(413, f"{what} is {e}") from None
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
        """The model's input (1, 3, H, W) -> its embedding (D,), one request at a time."""
        with self.lock, torch.inference_mode():
            v = self.model(x)  # (1, D)
        return v[0].float().numpy()

    def vector(self, i: int) -> np.ndarray:
        """The indexed vector of item ``i`` (D,); re-embeds the file where FAISS cannot reconstruct."""
        self.item(i)
        try:
            return self.idx.index.reconstruct(int(i))
        except RuntimeError:  # e.g. an IVF index without a direct map
            return self.embed(self.item_image(i))

    # -- searching -------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int) -> list[dict]:
        sims, ids = self.idx.search_vectors(vector[None, :], k)  # (1, k), (1, k)
        hits = self.idx.hits(sims[0], ids[0])
        return [
            {"id": int(i), "rank": h.rank, "cosine": round(h.similarity, 6),
             "score": round(float(similarity_score(h.similarity)), 6), "path": h.path, "name": Path(h.path).name,
             "label": h.label, "frame": h.frame, "time": h.time, "thumbnail": f"/api/items/{int(i)}/thumbnail"}
            for h, i in zip(hits, (i for i in ids[0] if i >= 0))
        ]

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


def duplicates_problem(data) -> Optional[str]:
    """What makes ``data`` something other than a `zoo duplicates` result, or None."""
    def paths(g) -> bool:
        return isinstance(g, list) and all(isinstance(p, str) for p in g)

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key in ("exact_groups", "near_groups"):
        if not isinstance(data.get(key), list):
            return f"{key} is missing or not a list"
    for i, g in enumerate(data["exact_groups"]):
        if not paths(g):
            return f"exact group {i} is not a list of paths"
    for i, g in enumerate(data["near_groups"]):
        if not isinstance(g, dict) or not paths(g.get("paths")) \
                or not number(g.get("min_similarity")) or not number(g.get("max_similarity")):
            return f"near group {i} is not {{paths: [...], min_similarity: x, max_similarity: y}}"
    return None


def load_duplicates(path: str | Path, index: ZooIndex) -> dict:
    """A `zoo duplicates` groups.json, with each path mapped to its id in the index (or None);
    one query of the index for all its paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "groups.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ZooError(f"no such duplicates result: {path} (made by `zoo duplicates --out DIR`)") from None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ZooError(f"{path} is not a `zoo duplicates` groups.json ({' '.join(str(e).split())[:100]})") from None
    problem = duplicates_problem(data)
    if problem:
        raise ZooError(f"{path} is not a `zoo duplicates` groups.json ({problem})")
    exact, near = data["exact_groups"], data["near_groups"]
    ids = index.ids_of({p for g in exact for p in g} | {p for g in near for p in g["paths"]})

    def members(paths: list[str]) -> list[dict]:
        return [{"id": ids.get(p), "path": p, "name": Path(p).name, "label": Path(p).parent.name,
                 "thumbnail": f"/api/items/{ids[p]}/thumbnail" if p in ids else None} for p in paths]

    groups = [{"kind": "exact", "min_similarity": 1.0, "max_similarity": 1.0, "items": members(g)} for g in exact]
    groups += [{"kind": "near", "min_similarity": g["min_similarity"], "max_similarity": g["max_similarity"],
                "items": members(g["paths"])} for g in near]

    def scalar(key: str):
        value = data.get(key)
        return value if isinstance(value, (str, int, float)) else None

    return {"source": scalar("source"), "threshold": scalar("threshold"), "model": scalar("model"),
            "created": scalar("created"), "file": str(path.resolve()), "groups": groups}


# ---- the HTTP layer ---------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"error": f"request body over {self.max_bytes} bytes"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, total = [], 0  # without a trustworthy length: read, counting, then replay
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def host_name(value: str) -> Optional[str]:
    """The name in a Host header or an address, lower-case, without its port; an IP address in
    one spelling ('[::1]' for IPv6); None if it is not a host name at all."""
    value = value.strip().lower()
    match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::\d{1,5})?|([0-9a-f:.]*:[0-9a-f:.]*:[0-9a-f:.]*)|([a-z0-9_.-]+)(?::\d{1,5})?",
                         value)
    if match is None:
        return None
    bracketed, bare, name = match.groups()  # [v6][:port], a bare v6 address, name-or-v4[:port]
    try:
        ip = ipaddress.ip_address(bracketed or bare or name)
    except ValueError:
        return (name.rstrip(".") or None) if name else None
    if (bracketed or bare) and ip.version != 6:
        return None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def allowed_host_names(host: str, bound: str, extra: Sequence[str] = ()) -> list[str]:
    """The names a server listening on ``host`` (bound to address ``bound``) answers to: the
    loopback names when it listens on loopback or on every interface, its own addresses, and
    ``extra`` (--allowed_hosts; '*': any)."""
    names = {host_name(host), host_name(bound)}
    wildcard = ipaddress.ip_address(bound).is_unspecified
    if wildcard or is_loopback(host):
        names.update(LOOPBACK_NAMES)
    if wildcard:  # every address of this machine, and its name
        import psutil

        names.update(host_name(a.address.split("%")[0]) for addrs in psutil.net_if_addrs().values() for a in addrs
                     if a.family in (socket.AF_INET, socket.AF_INET6))
        names.add(host_name(socket.gethostname()))
    for name in extra:
        if name != "*" and host_name(name) is None:
            raise ZooError(f"--allowed_hosts: {name!r} is not a host name")
        names.add("*" if name == "*" else host_name(name))
    return sorted(n for n in names if n)


class HostCheck:
    """ASGI middleware: 400 unless the Host header is one of ``names`` (DNS rebinding: a page of
    another site, whose name is made to resolve to this machine, sends its own name)."""

    def __init__(self, app, names: Iterable[str]):
        self.app = app
        self.names = set(names)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.names:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(host) in self.names:
            return await self.app(scope, receive, send)
        response = JSONResponse({"error": f"Host {host[:100]!r} is not a name of this server; to reach it by that "
                                          "name, start it with --allowed_hosts [NAME]"}, status_code=400)
        return await response(scope, receive, send)


def create_app(service: SearchService, token: Optional[str] = None):
    """The FastAPI application over ``service``; ``token``: require ``Authorization: Bearer TOKEN``."""

    app = FastAPI(title="zoo", version=__version__,
                  description="Content-based image retrieval over one zoo index: search by example, "
                              "compare two images, more like this, duplicate groups.")
    app.state.service = service

    def check_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "this server needs a bearer token (header `Authorization: Bearer TOKEN`)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(check_token)]
    ItemId = PathParam(..., ge=0, description="an item's id in the index (as search results give it)")

    # -- errors as JSON, never a traceback -------------------------------------------------
    @app.exception_handler(UploadError)
    async def upload_error(request, exc: UploadError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @app.exception_handler(ZooError)
    async def zoo_error(request, exc: ZooError):  # e.g. a damaged row of the index among the results
        print(f"zoo: error: {exc}", file=sys.stderr, flush=True)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        traceback.print_exception(exc, file=sys.stderr)  # for the server's log, not the client
        return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if not request.url.path.startswith(("/docs", "/redoc")):  # the page loads nothing from outside
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'")
        return response

    # -- endpoints ---------------------------------------------------------------------------
    def read_upload(upload: UploadFile, what: str) -> tuple[torch.Tensor, tuple[int, int]]:
        data = upload.file.read(service.max_upload_bytes + 1)
        return service.prepare(data, f"{what} ({upload.filename or 'unnamed'})")

    def clamp_k(k: int) -> int:
        return max(1, min(k, MAX_K, len(service)))

    @app.get("/api/health", tags=["server"])
    def health() -> dict:
        return {"status": "ok", "count": len(service)}

    @app.get("/api/info", tags=["server"], dependencies=guarded)
    def info() -> dict:
        return service.info()

    @app.post("/api/search", tags=["search"], dependencies=guarded)
    def search(file: UploadFile = File(..., description="the query image"),
               k: int = Query(10, ge=1, le=MAX_K, description="number of results")) -> dict:
        """Top k indexed items by cosine similarity to an uploaded image."""
        start = time.perf_counter()
        x, size = read_upload(file, "the upload")
        results = service.search(service.forward(x), clamp_k(k))
        return {"query": {"name": file.filename, "decoded_size": list(size)},  # big JPEGs decode reduced
                "k": len(results), "results": results, "took_ms": round(1000 * (time.perf_counter() - start), 1)}

    @app.post("/api/compare", tags=["search"], dependencies=guarded)
    def compare(a: UploadFile = File(..., description="first image"),
                b: UploadFile = File(..., description="second image")) -> dict:
        """Similarity of two uploaded images: score = (1 + cosine) / 2 in [0, 1], as `zoo compare`."""
        va, vb = (service.forward(read_upload(f, what)[0]) for f, what in ((a, "image a"), (b, "image b")))
        va, vb = va.astype(np.float64), vb.astype(np.float64)
        cos = float(np.clip(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12), -1.0, 1.0))
        return {"score": round(float(similarity_score(cos)), 6), "cosine": round(cos, 6),
                "a": a.filename, "b": b.filename, "model": service.idx.describe()}

    @app.get("/api/items/{item_id}", tags=["items"], dependencies=guarded)
    def item(item_id: int = ItemId) -> dict:
        it = service.item(item_id)
        return {"id": item_id, **it, "name": Path(it["path"]).name, "thumbnail": f"/api/items/{item_id}/thumbnail"}

    @app.get("/api/items/{item_id}/similar", tags=["search"], dependencies=guarded)
    def similar(item_id: int = ItemId, k: int = Query(10, ge=1, le=MAX_K)) -> dict:
        """More like this: top k for an indexed item (its own vector, so it comes first)."""
        start = time.perf_counter()
        results = service.search(service.vector(item_id), clamp_k(k))
        return {"query": item(item_id), "k": len(results), "results": results,
                "took_ms": round(1000 * (time.perf_counter() - start), 1)}

    @app.get("/api/items/{item_id}/thumbnail", tags=["items"], dependencies=guarded,
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: int = ItemId, size: int = Query(256, description=f"one of {THUMB_SIZES}")) -> Response:
        if size not in THUMB_SIZES:
            raise UploadError(422, f"size {size}: choose one of {', '.join(map(str, THUMB_SIZES))}")
        data = service.thumbnail(item_id, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/duplicates", tags=["items"], dependencies=guarded)
    def duplicates() -> dict:
        if service.duplicates is None:
            raise UploadError(404, "no duplicates result loaded (start with --duplicates DIR/groups.json)")
        return service.duplicates

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class GuardedHTTP(H11Protocol):
    """uvicorn's HTTP/1.1 connection, guarded against clients that hold connections without
    using them. A request's head (request line and headers) must arrive within ``head_timeout``
    seconds of the connection or of the first byte after a response (the keep-alive timeout
    covers an idle connection), and a body may pause for at most ``body_timeout`` seconds. One
    client address holds at most ``per_client`` connections: another one first closes that
    client's longest-open idle connection, or gets 503 itself when none is idle. There is no
    server-wide cap, so no client can starve the others."""

    def __init__(self, *args, head_timeout: float = 5.0, body_timeout: float = 30.0, per_client: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout, self.body_timeout, self.per_client = head_timeout, body_timeout, per_client
        self.timer: Optional[asyncio.TimerHandle] = None
        self.opened = time.monotonic()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.client is not None:
            mine = [c for c in self.connections if c is not self and isinstance(c, GuardedHTTP)
                    and c.client is not None and c.client[0] == self.client[0] and not c.transport.is_closing()]
            if len(mine) >= self.per_client:
                idle = [c for c in mine if c.idle()]
                if not idle:
                    body = json.dumps({"error": f"too many connections from {self.client[0]}"}).encode()
                    transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                    transport.close()
                    return
                min(idle, key=lambda c: c.opened).transport.close()
        self.watch()

    def idle(self) -> bool:
        """Between requests, or before the first one's head is in."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch()

    def watch(self) -> None:
        """Arm the timer for what the client owes: a head (from the first wait, not restarted by
        each byte) or the rest of a body (restarted by each piece); none while the server works."""
        state = self.conn.their_state
        if state is not h11.IDLE:
            self.stop_timer()
        if state is h11.SEND_BODY:
            self.timer = self.loop.call_later(self.body_timeout, self.too_slow)
        elif state is h11.IDLE and self.timer is None and not self.transport.is_closing():
            self.timer = self.loop.call_later(self.head_timeout, self.too_slow)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def too_slow(self) -> None:
        self.timer = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.stop_timer()
        super().connection_lost(exc)


def make_server(app, **guards) -> uvicorn.Server:
    """A uvicorn server of ``app`` on GuardedHTTP connections (``guards``: its timeouts and limit)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=5, http=functools.partial(GuardedHTTP, **guards))
    return uvicorn.Server(config)


# ---- start-up --------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a ZooError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ZooError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = " (port taken? pick another with --port)" if e.errno == 98 else ""
        raise ZooError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None
    if family in (socket.AF_INET, socket.AF_INET6):  # accepted sockets inherit it: no Nagle delay
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # between a response's head and body
    sock.listen(2048)  # from now on connections queue until uvicorn accepts them
    return sock


def run_server(index: str, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
               duplicates: Optional[str] = None, max_upload_mb: float = 20.0, threads: int = 1,
               allowed_hosts: Sequence[str] = (), max_pixels: int = MAX_PIXELS) -> None:
    """Load the index and its model once, then answer HTTP requests until interrupted."""
    token = token or os.environ.get("ZOO_TOKEN") or None
    if max_upload_mb <= 0:
        raise ZooError(f"--max_upload_mb {max_upload_mb}: must be positive")
    if threads < 1:
        raise ZooError(f"--threads {threads}: must be 1 or more")
    if max_pixels < 1:
        raise ZooError(f"--max_pixels {max_pixels}: must be 1 or more")
    allowed_host_names(host, "127.0.0.1", allowed_hosts or ())  # a bad name fails before anything slow
    # one image per forward pass: more threads than that gain little, and on a busy CPU their
    # synchronisation costs several times the forward itself; the other cores decode and serve
    torch.set_num_threads(threads)
    idx = load_index(index)  # a missing index fails before anything slow
    sock = bind(host, port)  # so does a taken port
    try:
        print(f"zoo: loading {idx.describe()} for {len(idx)} items ...", file=sys.stderr, flush=True)
        max_bytes = int(max_upload_mb * (1 << 20))
        service = SearchService(idx, index, duplicates=duplicates, max_upload_bytes=max_bytes, max_pixels=max_pixels)
        # a body holds at most two uploads (compare) plus the multipart framing
        app = BodyLimit(create_app(service, token=token), max_bytes=2 * max_bytes + (64 << 10))
        shown_host, shown_port = sock.getsockname()[:2]
        app = HostCheck(app, allowed_host_names(host, shown_host, allowed_hosts or ()))
        shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
        if not is_loopback(host) and token is None:
            print("zoo: warning: listening beyond this machine without a token; anyone who can reach "
                  "it can search (set ZOO_TOKEN or --token)", file=sys.stderr)
        print(f"zoo: serving {Path(index)} at http://{shown_host}:{shown_port}/ (API docs at /docs"
              f"{', bearer token required' if token else ''}); Ctrl-C stops", file=sys.stderr, flush=True)
        make_server(app).run(sockets=[sock])
    finally:
        sock.close()


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(socket.gethostbyname(host) if host != "::1" else host).is_loopback
    except (OSError, ValueError):
        return False



# ---- a server in a subprocess (benchmarks, browser tests, notebooks) ---------------------------------
def spawn_server(index: str | Path, *args: str, timeout: float = 180.0, env: Optional[dict] = None):
    """Start ``zoo serve --index INDEX --port 0 ARGS`` on loopback; returns (process, base URL).

    Waits until the server prints its address (it picks a free port itself, so there is no race
    for one); raises RuntimeError with the server's stderr if it exits or does not start in time.
    The caller stops it with ``process.terminate()``.
    """
    import subprocess

    cmd = [sys.executable, "-m", "zoo", "serve", "--index", str(index), "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    deadline = time.monotonic() + timeout

    def fail(why: str):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"zoo serve {why}:\n" + "".join(lines[-20:]))

    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stderr.readline()
        if not line:
            fail(f"exited with code {proc.wait()}")
        lines.append(line)
        if line.startswith("zoo: serving "):
            url = line.split(" at ", 1)[1].split()[0].rstrip("/")
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()  # keep the pipe from filling
            return proc, url
    fail(f"did not start within {timeout:.0f} s")


def _drain(stream) -> None:
    for line in stream:  # the server's own warnings and errors stay visible
        sys.stderr.write(line)

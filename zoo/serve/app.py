"""``zoo serve``'s HTTP API and web page: create_app builds the FastAPI application over a
SearchService (zoo.serve.service) and holds the routes only. Endpoints (all JSON; OpenAPI docs
at /docs):

    GET  /api/health                      liveness (never needs the token)
    GET  /api/info                        index and model: architecture, weights, count, ...
    POST /api/search?k=10                 top k for an uploaded image (multipart field "file")
    POST /api/check                       is an upload a copy of an indexed item or new ("file")
    POST /api/compare                     score in [0, 1] and cosine of two uploads ("a", "b")
    GET  /api/items/{id}                  one indexed item
    GET  /api/items/{id}/similar?k=10     more like this: top k for an indexed item
    GET  /api/items/{id}/thumbnail        JPEG thumbnail of an indexed item (by id, never by path)
    GET  /api/duplicates                  groups of a `zoo duplicates` result (--duplicates)
    /api/review...                        the review page: pages of groups, dry run, move, undo
                                          (zoo.serve.review_api; writes need the write token)
    GET  /                                the web page (zoo/serve/static)

Every error is a JSON ``{"error": ...}``, never a traceback; every response says nosniff, and all
but the API docs carry a Content-Security-Policy under which the page loads nothing from outside. What guards the server below
the routes (Host check, body limit, connection guard) is zoo.serve.guard; zoo.serve.server
starts it.
"""
from __future__ import annotations

import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from zoo.errors import ZooError
from zoo.serve.guard import bearer_check, write_check
from zoo.serve.review_api import add_review_routes
from zoo.serve.service import MAX_K, THUMB_SIZES, SearchService, UploadError
from zoo.version import __version__

STATIC = Path(__file__).parent / "static"


def create_app(service: SearchService, token: Optional[str] = None, write_token: Optional[str] = None,
               read_only: bool = False):
    """The FastAPI application over ``service``; ``token``: require ``Authorization: Bearer TOKEN``;
    ``write_token``: the token moves and undos need (default ``token``, else a random one, kept in
    ``app.state.write_token``); ``read_only``: refuse every write with 403."""

    app = FastAPI(title="zoo", version=__version__,
                  description="Content-based image retrieval over one zoo index: search by example, "
                              "compare two images, more like this, duplicate groups.")
    app.state.service = service
    app.state.write_token = write_token or token or secrets.token_urlsafe(24)

    guarded = [Depends(bearer_check(token))]
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

    @app.get("/api/health", tags=["server"])
    def health() -> dict:
        return {"status": "ok", "count": len(service)}

    @app.get("/api/info", tags=["server"], dependencies=guarded)
    def info() -> dict:
        return {**service.info(), "read_only": read_only}

    @app.post("/api/search", tags=["search"], dependencies=guarded)
    def search(file: UploadFile = File(..., description="the query image"),
               k: int = Query(10, ge=1, le=MAX_K, description="number of results")) -> dict:
        """Top k indexed items by cosine similarity to an uploaded image."""
        start = time.perf_counter()
        x, size = read_upload(file, "the upload")
        results = service.search(service.forward(x), service.clamp_k(k))
        return {"query": {"name": file.filename, "decoded_size": list(size)},  # big JPEGs decode reduced
                "k": len(results), "results": results, "took_ms": round(1000 * (time.perf_counter() - start), 1)}

    @app.post("/api/check", tags=["search"], dependencies=guarded)
    def check(file: UploadFile = File(..., description="the uploaded image")) -> dict:
        """Is the upload a copy of an indexed item ("copy", with the item) or "new"? With the cosine
        of the nearest item, the calibrated threshold for this index's size and the expected
        precision of a copy verdict; "calibrated": false when the model has no calibration."""
        start = time.perf_counter()
        x, size = read_upload(file, "the upload")
        answer = service.check(service.forward(x))
        return {"query": {"name": file.filename, "decoded_size": list(size)}, **answer,
                "took_ms": round(1000 * (time.perf_counter() - start), 1)}

    @app.post("/api/compare", tags=["search"], dependencies=guarded)
    def compare(a: UploadFile = File(..., description="first image"),
                b: UploadFile = File(..., description="second image")) -> dict:
        """Similarity of two uploaded images: score = (1 + cosine) / 2 in [0, 1], as `zoo compare`."""
        scores = service.compare(read_upload(a, "image a")[0], read_upload(b, "image b")[0])
        return {**scores, "a": a.filename, "b": b.filename, "model": service.describe()}

    @app.get("/api/items/{item_id}", tags=["items"], dependencies=guarded)
    def item(item_id: int = ItemId) -> dict:
        return service.item_view(item_id)

    @app.get("/api/items/{item_id}/similar", tags=["search"], dependencies=guarded)
    def similar(item_id: int = ItemId, k: int = Query(10, ge=1, le=MAX_K)) -> dict:
        """More like this: top k for an indexed item (its own vector, so it comes first)."""
        start = time.perf_counter()
        results = service.similar(item_id, service.clamp_k(k))
        return {"query": service.item_view(item_id), "k": len(results), "results": results,
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
        return service.duplicates.view()

    add_review_routes(app, service.review, bearer_check(token), write_check(app.state.write_token, read_only))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

"""``zoo serve``: an HTTP API and a web page over an index.

    service.py     SearchService: the index and its model held once; search, compare, items, thumbnails
    duplicates.py  a `zoo duplicates` groups.json, parsed once, checked, mapped to item ids (--duplicates)
    review.py      the review page's work: pages of groups with facts and keep-best; dry run, move, undo
    review_api.py  the review page's routes (/api/review...)
    guard.py       Host check, bearer token, write check, body limit, the connection guard (GuardedHTTP)
    app.py         create_app: the FastAPI routes
    server.py      run_server (what `zoo serve` calls), bind, make_server, spawn_server

Importing any of them pulls FastAPI and uvicorn, so other packages import zoo.serve lazily.
"""
from zoo.serve.app import STATIC, create_app
from zoo.serve.server import bind, make_server, run_server, spawn_server
from zoo.serve.service import SearchService, UploadError

__all__ = ["STATIC", "SearchService", "UploadError", "bind", "create_app", "make_server", "run_server",
           "spawn_server"]

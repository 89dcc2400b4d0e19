"""The review page's routes (zoo.serve.review does the work):

    GET  /api/review?offset=0&limit=20    a page of duplicate groups in review order
    GET  /api/review/batches              the quarantine batches of this index, newest first
    POST /api/review/plan                 dry run of a move: {"groups": [{"group", "keep", "move"?}]}
    POST /api/review/move                 the same, done (signed manifest first, then the files)
    POST /api/review/undo                 {"batch": NAME}: put a batch back

Reads take the server's read guard (the token, when one is set); the three POSTs take
zoo.serve.guard.write_check (the token always, same-origin, JSON, not --read_only)."""
from __future__ import annotations

from typing import Optional

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from zoo.serve.review import MAX_MOVE_FILES, MAX_PAGE, Review, ReviewError


class Choice(BaseModel):
    group: int = Field(..., ge=0, description="the group's number (as GET /api/review gives it)")
    keep: int = Field(..., ge=0, description="the item id to keep")
    move: Optional[list[int]] = Field(None, max_length=MAX_MOVE_FILES,
                                      description="item ids to move (default: every other member)")


class MoveRequest(BaseModel):
    groups: list[Choice] = Field(..., min_length=1, max_length=MAX_MOVE_FILES)


class UndoRequest(BaseModel):
    batch: str = Field(..., max_length=64)


def add_review_routes(app: FastAPI, review: Optional[Review], read_guard, write_guard) -> None:
    """The routes above on ``app``; each answers 404 when no duplicates result is loaded."""

    @app.exception_handler(ReviewError)
    async def review_error(request, exc: ReviewError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    def loaded() -> Review:
        if review is None:
            raise ReviewError(404, "no duplicates result loaded (start with --duplicates DIR/groups.json)")
        return review

    reads, writes = [Depends(read_guard)], [Depends(write_guard)]

    @app.get("/api/review", tags=["review"], dependencies=reads)
    def review_page(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=MAX_PAGE)) -> dict:
        """A page of duplicate groups, largest and most similar first: members with their facts,
        pair scores and the member to keep with its reasons."""
        return loaded().page(offset, limit)

    @app.get("/api/review/batches", tags=["review"], dependencies=reads)
    def review_batches() -> dict:
        return {"batches": loaded().batches()}

    @app.post("/api/review/plan", tags=["review"], dependencies=writes)
    def review_plan(body: MoveRequest) -> dict:
        """What a move would do, changing nothing."""
        return loaded().plan([c.model_dump() for c in body.groups])

    @app.post("/api/review/move", tags=["review"], dependencies=writes)
    def review_move(body: MoveRequest) -> dict:
        """Move the chosen members to the quarantine folder (the same code as `zoo duplicates --move-to`)."""
        return loaded().move([c.model_dump() for c in body.groups])

    @app.post("/api/review/undo", tags=["review"], dependencies=writes)
    def review_undo(body: UndoRequest) -> dict:
        """Put one batch back (the same code as `zoo duplicates --undo`)."""
        return loaded().undo(body.batch)

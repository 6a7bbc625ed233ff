"""HTTP routes for deep-zoom: `/slides/{slide_id}.dzi` and
`/slides/{slide_id}_files/{dz_level}/{dz_col}_{dz_row}.{jpeg|png}`.

Cache hits are answered on the event loop (a dictionary lookup); rendering a tile reads the
slide and encodes an image, so it runs in the threadpool and never blocks the loop.
`TileCacheFastPath` answers cache hits before FastAPI's routing (a viewer asks for hundreds of
tiles a second; routing and response objects cost more than the lookup itself).

Both ask `may_see(request, slide_id)` first (web/access.py: the asker's cookies name the owner):
a slide that is not the asker's is answered exactly like one that does not exist.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from omnipath.errors import NotFoundError, SlideError
from omnipath.facts import SLIDE_ID_RE
from web.slide_registry import UNKNOWN_SLIDE
from web.tiles import TILE_FORMATS, TileService

# may_see(request, slide_id): whether the asker may see the slide (web/access.py).
MaySee = Callable[[Any, str], bool]

log = logging.getLogger(__name__)

# A tile's address has one spelling: ASCII digits without leading zeros ("0" alone is fine). So
# "0009", "+9" or non-ASCII digits ("٩", "９") are not another name for tile 9, only a 404.
_NUMBER = r"(0|[1-9][0-9]{0,%d})"
_LEVEL = re.compile(_NUMBER % 3)
_TILE_NAME = re.compile(rf"{_NUMBER % 8}_{_NUMBER % 8}\.(jpeg|png)")
# The fast path splits the URL path; parse_tile_address checks the parts.
_TILE_PATH = re.compile(rf"/slides/({SLIDE_ID_RE.pattern})_files/([^/]+)/([^/]+)")
# Ids are content hashes: a tile's bytes never change, so browsers may keep them; but only the
# browser ("private"): a shared cache would hand them to people who may not see the slide.
_IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}


def parse_tile_address(dz_level: str, tile_name: str) -> tuple[int, int, int, str] | None:
    """(level, column, row, format) from the URL parts "12" and "3_4.jpeg", or None when they are
    not the one canonical spelling of a tile address (the routes answer that with a 404)."""
    level = _LEVEL.fullmatch(dz_level)
    name = _TILE_NAME.fullmatch(tile_name)
    if level is None or name is None:
        return None
    return int(dz_level), int(name[1]), int(name[2]), name[3]


def _not_found(message: str = "There is no such slide or tile.") -> JSONResponse:
    return JSONResponse({"error": message}, status_code=404)


def _slide_error(exc: SlideError) -> JSONResponse:
    log.warning("tile failed: %s (%s)", exc.message, exc.detail)
    return JSONResponse({"error": exc.message}, status_code=500)


def tile_router(service: TileService, may_see: MaySee) -> APIRouter:
    """The deep-zoom routes for `service`, to include in the app before Gradio is mounted."""
    router = APIRouter()

    async def refused(request: Request, slide_id: str) -> bool:
        return not await run_in_threadpool(may_see, request, slide_id)

    @router.get("/slides/{slide_id}.dzi")
    async def dzi(slide_id: str, request: Request) -> Response:
        if await refused(request, slide_id):
            return _not_found(UNKNOWN_SLIDE)
        try:
            xml = await run_in_threadpool(service.dzi, slide_id)
        except NotFoundError as exc:
            return _not_found(exc.message)
        except SlideError as exc:
            return _slide_error(exc)
        return Response(xml, media_type="application/xml", headers=_IMMUTABLE)

    @router.get("/slides/{slide_id}_files/{dz_level}/{tile_name}")
    async def tile(slide_id: str, dz_level: str, tile_name: str, request: Request) -> Response:
        address = parse_tile_address(dz_level, tile_name)
        if address is None:
            return _not_found()
        if await refused(request, slide_id):
            return _not_found(UNKNOWN_SLIDE)
        level, dz_col, dz_row, fmt = address
        data = service.cached_tile(slide_id, level, dz_col, dz_row, fmt)
        if data is None:
            try:
                data = await run_in_threadpool(service.tile, slide_id, level, dz_col, dz_row, fmt)
            except NotFoundError as exc:
                return _not_found(exc.message)
            except SlideError as exc:
                return _slide_error(exc)
        return Response(data, media_type=TILE_FORMATS[fmt], headers=_IMMUTABLE)

    return router


class TileCacheFastPath:
    """ASGI middleware: a GET for a tile that is in the cache is answered here; everything else
    (misses, bad addresses, tiles the asker may not see, other paths) goes on to the app, whose
    routes validate, check and render."""

    def __init__(self, app: ASGIApp, service: TileService, may_see: MaySee) -> None:
        self.app = app
        self.service = service
        self.may_see = may_see
        self._headers = [(k.lower().encode(), v.encode()) for k, v in _IMMUTABLE.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            match = _TILE_PATH.fullmatch(scope["path"])
            address = match and parse_tile_address(match[2], match[3])
            if address:
                fmt = address[3]
                data = self.service.cached_tile(match[1], *address)
                if data is not None and await run_in_threadpool(
                    self.may_see, Request(scope), match[1]
                ):
                    headers = [
                        (b"content-type", TILE_FORMATS[fmt].encode()),
                        (b"content-length", str(len(data)).encode()),
                        *self._headers,
                    ]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    body = data if scope["method"] == "GET" else b""
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

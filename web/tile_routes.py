"""HTTP routes for deep-zoom: `/slides/{slide_id}.dzi` and
`/slides/{slide_id}_files/{dz_level}/{dz_col}_{dz_row}.{jpeg|png}`.

Cache hits are answered on the event loop (a dictionary lookup); rendering a tile reads the
slide and encodes an image, so it runs in the threadpool and never blocks the loop.
`TileCacheFastPath` answers cache hits before FastAPI's routing (a viewer asks for hundreds of
tiles a second; routing and response objects cost more than the lookup itself).
"""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from omnipath.errors import NotFoundError, SlideError
from web.tiles import TILE_FORMATS, TileService

log = logging.getLogger(__name__)

_TILE_NAME = re.compile(r"(\d{1,9})_(\d{1,9})\.(jpeg|png)")
_TILE_PATH = re.compile(r"/slides/([0-9a-f]{64})_files/(\d{1,4})/(\d{1,9})_(\d{1,9})\.(jpeg|png)")
_LEVEL = re.compile(r"\d{1,4}")
# Ids are content hashes: a tile's bytes never change, so browsers may keep them.
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


def _not_found(message: str = "There is no such slide or tile.") -> JSONResponse:
    return JSONResponse({"error": message}, status_code=404)


def _slide_error(exc: SlideError) -> JSONResponse:
    log.warning("tile failed: %s (%s)", exc.message, exc.detail)
    return JSONResponse({"error": exc.message}, status_code=500)


def tile_router(service: TileService) -> APIRouter:
    """The deep-zoom routes for `service`, to include in the app before Gradio is mounted."""
    router = APIRouter()

    @router.get("/slides/{slide_id}.dzi")
    async def dzi(slide_id: str) -> Response:
        try:
            xml = await run_in_threadpool(service.dzi, slide_id)
        except NotFoundError as exc:
            return _not_found(exc.message)
        except SlideError as exc:
            return _slide_error(exc)
        return Response(xml, media_type="application/xml", headers=_IMMUTABLE)

    @router.get("/slides/{slide_id}_files/{dz_level}/{tile_name}")
    async def tile(slide_id: str, dz_level: str, tile_name: str) -> Response:
        match = _TILE_NAME.fullmatch(tile_name)
        if match is None or _LEVEL.fullmatch(dz_level) is None:
            return _not_found()
        dz_col, dz_row, fmt = int(match[1]), int(match[2]), match[3]
        level = int(dz_level)
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
    (misses, bad addresses, other paths) goes on to the app, whose routes validate and render."""

    def __init__(self, app: ASGIApp, service: TileService) -> None:
        self.app = app
        self.service = service
        self._headers = [(k.lower().encode(), v.encode()) for k, v in _IMMUTABLE.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            match = _TILE_PATH.fullmatch(scope["path"])
            if match is not None:
                fmt = match[5]
                data = self.service.cached_tile(
                    match[1], int(match[2]), int(match[3]), int(match[4]), fmt
                )
                if data is not None:
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

"""HTTP routes for deep-zoom: `/slides/{slide_id}.dzi` and
`/slides/{slide_id}_files/{dz_level}/{dz_col}_{dz_row}.{jpeg|png}`.

Cache hits are answered on the event loop (a dictionary lookup); rendering a tile reads the
slide and encodes an image, so it runs in the threadpool and never blocks the loop.
"""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from omnipath.errors import NotFoundError, SlideError
from web.tiles import TILE_FORMATS, TileService

log = logging.getLogger(__name__)

_TILE_NAME = re.compile(r"(\d{1,9})_(\d{1,9})\.(jpeg|png)")
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

"""The slide viewer as a Gradio component: OpenSeadragon (from npm) plus web/viewer/viewer.js.

Python drives it with a JSON state string (the component's value), made by `viewer_state`:
    {"dzi_url": "/slides/<id>.dzi", "meta": {...web.tiles.viewer_meta...}, "layers": {...}, "zoom_to": {...}}
Each key is optional: without "dzi_url" the open slide stays and only the layers change.
Layers are in level-0 pixels (`l0_rect` = {x, y, w, h}):
    regions: [{"l0_rect": ..., "label": "..."}]   numbered rectangles (where the model read)
    boxes:   [{"l0_rect": ..., "label": "..."}]   numbered rectangles (what it detected)
    masks:   [{"l0_rect": ..., "src": "data:image/png;base64,...", "label": "..."}]
In the browser the same is reachable as `window.omnipathViewer.open(dziUrl, meta)`,
`.setLayers(layers)`, `.zoomTo(l0Rect)` and `.setLayerVisible(name, visible)`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from omnipath.errors import OmniPathError

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
OSD_BUILD_DIR = VIEWER_DIR / "node_modules" / "openseadragon" / "build" / "openseadragon"
ASSET_PREFIX = "/omnipath-viewer"
LAYER_NAMES = ("regions", "boxes", "masks")

_TEMPLATE = '<div class="omnipath-viewer-host" data-testid="omnipath-viewer"></div>'
_ON_LOAD = """
const host = element.querySelector('.omnipath-viewer-host');
const api = window.omnipathViewer;
api.mount(host);
api.applyState(props.value);
watch('value', () => api.applyState(props.value));
"""


class ViewerAssetsMissingError(OmniPathError):
    """OpenSeadragon is not installed in web/viewer/node_modules."""


def _version(path: Path) -> str:
    # Cache-busting query: browsers reload viewer.js/css only when their content changes.
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def check_assets() -> None:
    """Raise ViewerAssetsMissingError when `npm ci` has not been run in web/viewer."""
    if not (OSD_BUILD_DIR / "openseadragon.min.js").is_file():
        raise ViewerAssetsMissingError(
            "The slide viewer's JavaScript (OpenSeadragon) is not installed. "
            "Run `bash .ci/install.sh` (or `npm ci` in web/viewer) once, then start again.",
            detail=str(OSD_BUILD_DIR),
        )


def mount_viewer_assets(app: FastAPI) -> None:
    """Serve OpenSeadragon's build and viewer.js/css under ASSET_PREFIX (before Gradio's mount)."""
    check_assets()
    app.mount(
        f"{ASSET_PREFIX}/openseadragon",
        StaticFiles(directory=OSD_BUILD_DIR),
        name="openseadragon",
    )
    for name, media_type in (("viewer.js", "text/javascript"), ("viewer.css", "text/css")):
        path = VIEWER_DIR / name

        async def serve(path: Path = path, media_type: str = media_type) -> FileResponse:
            return FileResponse(path, media_type=media_type)

        app.add_api_route(f"{ASSET_PREFIX}/{name}", serve, methods=["GET"], include_in_schema=False)


def viewer_head() -> str:
    """The <head> tags that load the viewer (OpenSeadragon, viewer.js, viewer.css)."""
    js_version = _version(VIEWER_DIR / "viewer.js")
    css_version = _version(VIEWER_DIR / "viewer.css")
    return (
        f'<link rel="stylesheet" href="{ASSET_PREFIX}/viewer.css?v={css_version}">'
        f'<script src="{ASSET_PREFIX}/openseadragon/openseadragon.min.js"></script>'
        f'<script src="{ASSET_PREFIX}/viewer.js?v={js_version}"></script>'
    )


def _rect_dict(l0_rect: Any) -> dict[str, int]:
    if isinstance(l0_rect, dict):
        return {k: int(l0_rect[k]) for k in ("x", "y", "w", "h")}
    if isinstance(l0_rect, list | tuple):
        return dict(zip(("x", "y", "w", "h"), (int(v) for v in l0_rect), strict=True))
    return {"x": int(l0_rect.x), "y": int(l0_rect.y), "w": int(l0_rect.w), "h": int(l0_rect.h)}


def rect_item(l0_rect: Any, label: str = "") -> dict[str, Any]:
    """A regions/boxes layer item from an L0Rect, an {x, y, w, h} dict or [x, y, w, h]."""
    return {"l0_rect": _rect_dict(l0_rect), "label": label}


def mask_item(
    bitmap: np.ndarray, l0_rect: Any, label: str = "", color: tuple[int, int, int] = (209, 0, 122)
) -> dict[str, Any]:
    """A masks layer item: `bitmap` (H×W bool, covering `l0_rect`) as a PNG that is `color`
    where True and transparent elsewhere (the viewer adds the overall transparency)."""
    mask = np.asarray(bitmap, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask bitmap is H×W, got shape {mask.shape}")
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (*color, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", optimize=True)
    src = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"l0_rect": _rect_dict(l0_rect), "src": src, "label": label}


def viewer_state(
    slide_id: str | None,
    meta: dict[str, Any] | None = None,
    layers: dict[str, Sequence[dict[str, Any]]] | None = None,
    zoom_to: Any = None,
) -> str:
    """The component's value: which slide to show (by id, never a path), its overlays
    (replacing the previous ones) and optionally a level-0 rectangle to zoom to."""
    state: dict[str, Any] = {}
    if slide_id is not None:
        state["dzi_url"] = f"/slides/{slide_id}.dzi"
        state["meta"] = meta or {}
    if layers is not None:
        unknown = set(layers) - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown overlay layers: {sorted(unknown)}")
        state["layers"] = {name: list(layers.get(name, [])) for name in LAYER_NAMES}
    if zoom_to is not None:
        state["zoom_to"] = _rect_dict(zoom_to)
    return json.dumps(state)


def build_viewer(state: str = "", *, elem_id: str = "omnipath-viewer"):
    """The viewer component (a gr.HTML); must be created inside a gr.Blocks context.

    Its value is a `viewer_state(...)` string; return a new one from an event to change the
    slide or the overlays. The app must also call `mount_viewer_assets(app)`."""
    import gradio as gr

    return gr.HTML(
        value=state,
        html_template=_TEMPLATE,
        js_on_load=_ON_LOAD,
        head=viewer_head(),
        apply_default_css=False,
        elem_id=elem_id,
        container=False,
        padding=False,
    )

"""Exports of one conversation: JSON (everything logged) and GeoJSON (for QuPath).

GeoJSON follows what QuPath reads with File → Import objects: a FeatureCollection in
level-0 pixel coordinates (origin at the top-left of the full-resolution image), each
Feature with a Polygon / MultiPolygon geometry and properties
{"objectType": "annotation", "name": ..., "classification": {"name": ..., "color":
[r, g, b]}, "isLocked": false}. PGDFC regions and boxes become rectangles; masks
become the traced outlines of their bitmaps stretched over their l0_rect. Extra
details (turn, rank, score, label) ride in properties["omnipath"], which QuPath ignores.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from storage.contours import bitmap_polygons
from storage.log import Store
from storage.models import LOCAL_OWNER
from storage.overlays import Overlays, mask_bitmap
from storage.rows import iso

EXPORT_FORMAT = "omnipath.conversation"
EXPORT_VERSION = 1
# Stable feature ids: the same conversation exports to the same ids every time.
_FEATURE_NAMESPACE = uuid.UUID("5f0d7a52-8c1e-4d59-9a57-0d6b3c2e4f11")

CLASSES: dict[str, tuple[str, list[int]]] = {
    "region": ("PGDFC region", [255, 153, 0]),
    "box": ("Detection box", [0, 153, 255]),
    "mask": ("Segmentation mask", [220, 0, 115]),
}


def _json_turn(turn: dict[str, Any]) -> dict[str, Any]:
    out = dict(turn)
    out["created_at"] = iso(turn["created_at"])
    out["feedback"] = [{**f, "created_at": iso(f["created_at"])} for f in turn["feedback"]]
    out["masks"] = [
        {
            "index": m["index"],
            "l0_rect": m["l0_rect"],
            "width": m["width"],
            "height": m["height"],
            "label": m["label"],
            "png_base64": base64.b64encode(m["png"]).decode("ascii"),
        }
        for m in turn["masks"]
    ]
    return out


def conversation_json(
    store: Store, conversation_id: str, *, owner: str = LOCAL_OWNER
) -> dict[str, Any]:
    """Everything logged for the conversation, JSON-safe (json.dumps works as is):

    {format, version, exported_at, conversation: {id, title, slide_id, model_id,
     created_at, updated_at}, slide: {id, size_bytes, vendor, width, height, mpp_x,
     mpp_y, objective_power, file_name, created_at}, turns: [... as
     Store.load_conversation(), masks with png_base64 instead of png bytes ...]}

    The server-side `stored_path` is left out (it says nothing about the slide and
    names a folder of the server). Raises NotFoundError for an unknown id, or one that
    is not `owner`'s.
    """
    loaded = store.load_conversation(conversation_id, owner=owner)
    slide = {k: v for k, v in loaded["slide"].items() if k != "stored_path"}
    slide["created_at"] = iso(slide["created_at"])
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": iso(datetime.now(UTC)),
        "conversation": {
            "id": loaded["id"],
            "title": loaded["title"],
            "slide_id": loaded["slide_id"],
            "model_id": loaded["model_id"],
            "created_at": iso(loaded["created_at"]),
            "updated_at": iso(loaded["updated_at"]),
        },
        "slide": slide,
        "turns": [_json_turn(t) for t in loaded["turns"]],
    }


def _decode_mask(png_or_bitmap: bytes | np.ndarray) -> np.ndarray:
    if isinstance(png_or_bitmap, bytes | bytearray | memoryview):
        return mask_bitmap(png_or_bitmap)
    return np.asarray(png_or_bitmap).astype(bool)


def mask_polygons(
    png_or_bitmap: bytes | np.ndarray,
    l0_rect: list[int] | tuple[int, int, int, int],
    *,
    l0_bounds: tuple[int, int] | None = None,
    decimals: int = 2,
) -> list[list[list[list[float]]]]:
    """The mask's outlines in level-0 pixels, as GeoJSON Polygon coordinate arrays:
    [polygon: [ring: [[x, y], ...] (closed), hole rings...], ...].

    `png_or_bitmap`: PNG bytes or an H×W array; the bitmap is stretched over
    `l0_rect` = [x, y, w, h]. `l0_bounds` = (slide width, slide height) clips the
    coordinates to the slide.
    """
    bitmap = _decode_mask(png_or_bitmap)
    height, width = bitmap.shape
    x, y, w, h = (float(v) for v in l0_rect)
    scale = np.array([w / width, h / height])
    offset = np.array([x, y])
    out = []
    for polygon in bitmap_polygons(bitmap):
        rings = []
        for ring in polygon:
            l0_ring = ring * scale + offset
            if l0_bounds is not None:
                l0_ring = np.clip(l0_ring, 0.0, np.asarray(l0_bounds, dtype=float))
            rings.append(np.round(l0_ring, decimals).tolist())
        out.append(rings)
    return out


def _rectangle(l0_rect: list[int], bounds: tuple[int, int]) -> list[list[list[float]]] | None:
    """A closed rectangle ring clipped to the slide; None when nothing is left."""
    x, y, w, h = l0_rect
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(bounds[0], x + w), min(bounds[1], y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def turn_overlays(
    turn: dict[str, Any],
    l0_width: int,
    l0_height: int,
    *,
    answer_number: int | None = None,
    regions: bool = True,
    boxes: bool = True,
    masks: bool = True,
) -> list[dict[str, Any]]:
    """What to draw for one turn (a turn dict from Store.load_conversation()), in
    level-0 pixels clipped to the slide: the same shapes, names and colours the GeoJSON
    export uses (and an HTML report can draw on a thumbnail: multiply by its scale).

    Each item: {kind: "region"|"box"|"mask", key (stable text id), name, class_name,
    color: [r, g, b], polygons: [[outer ring, hole rings...], ...] (rings closed,
    [[x, y], ...]), details: {rank, score, label, ...}}. Regions come in rank order.
    """
    bounds = (int(l0_width), int(l0_height))
    if turn["role"] == "assistant" and answer_number is not None:
        prefix = f"Answer {answer_number}"
    else:
        prefix = f"Turn {turn['index'] + 1}"
    items: list[dict[str, Any]] = []
    overlays = Overlays.of_turn(turn)

    def add(kind: str, key: str, name: str, polygons: list[Any], details: dict[str, Any]) -> None:
        class_name, color = CLASSES[kind]
        items.append({
            "kind": kind, "key": f"{turn['id']}:{key}", "name": name, "class_name": class_name,
            "color": list(color), "polygons": polygons, "details": details,
        })

    if regions:
        for region in overlays.regions:
            ring = _rectangle(region["l0_rect"], bounds)
            if ring is None:
                continue
            name = f"{prefix} · PGDFC region {region['rank']}"
            if region.get("score") is not None:
                name += f" (score {region['score']:.3f})"
            add("region", f"region:{region['rank']}", name, [ring],
                {"rank": region["rank"], "score": region.get("score")})
    if boxes:
        for i, box in enumerate(overlays.boxes):
            ring = _rectangle(box["l0_rect"], bounds)
            if ring is None:
                continue
            name = f"{prefix} · box {i + 1}" + (f": {box['label']}" if box["label"] else "")
            add("box", f"box:{i}", name, [ring],
                {"box_index": i, "label": box["label"], "rel": box["rel"]})
    if masks:
        for mask in overlays.masks:
            polygons = mask_polygons(mask.bitmap, mask.l0_rect, l0_bounds=bounds)
            if not polygons:
                continue  # an empty mask has no outline
            name = f"{prefix} · mask {mask.index + 1}" + (f": {mask.label}" if mask.label else "")
            add("mask", f"mask:{mask.index}", name, polygons,
                {"mask_index": mask.index, "label": mask.label})
    return items


def conversation_geojson(
    store: Store,
    conversation_id: str,
    *,
    regions: bool = True,
    boxes: bool = True,
    masks: bool = True,
    owner: str = LOCAL_OWNER,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the conversation's regions, boxes and masks in
    level-0 pixel coordinates, clipped to the slide, that QuPath imports (File →
    Import objects from file). Feature names say which answer they belong to
    ("Answer 2 · PGDFC region 1 (score 0.412)"); masks with several pieces are
    MultiPolygons. Raises NotFoundError for an unknown id, or one that is not `owner`'s.
    """
    loaded = store.load_conversation(conversation_id, owner=owner)
    width, height = loaded["slide"]["width"], loaded["slide"]["height"]
    features: list[dict[str, Any]] = []
    answer_number = 0
    for turn in loaded["turns"]:
        if turn["role"] == "assistant":
            answer_number += 1
        overlays = turn_overlays(turn, width, height, answer_number=answer_number,
                                 regions=regions, boxes=boxes, masks=masks)
        for item in overlays:
            polygons = item["polygons"]
            geometry = (
                {"type": "Polygon", "coordinates": polygons[0]}
                if len(polygons) == 1
                else {"type": "MultiPolygon", "coordinates": polygons}
            )
            features.append({
                "type": "Feature",
                "id": str(uuid.uuid5(_FEATURE_NAMESPACE, item["key"])),
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": item["name"],
                    "classification": {"name": item["class_name"], "color": item["color"]},
                    "isLocked": False,
                    "omnipath": {
                        "kind": item["kind"], "conversation_id": loaded["id"],
                        "turn_id": turn["id"], "turn_index": turn["index"], **item["details"],
                    },
                },
            })
    return {"type": "FeatureCollection", "features": features}


def export_files(store: Store, conversation_id: str, folder: str | Path) -> dict[str, Path]:
    """Writes the JSON and GeoJSON exports into `folder` (created if needed) for a
    download button: {"json": .../omnipath-<id>.json, "geojson": .../omnipath-<id>.geojson}.
    Each file is written to a temporary name and renamed, so a reader never sees half."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    documents = {
        "json": conversation_json(store, conversation_id),
        "geojson": conversation_geojson(store, conversation_id),
    }
    paths = {}
    for kind, document in documents.items():
        path = folder / f"omnipath-{conversation_id}.{kind}"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        partial.replace(path)
        paths[kind] = path
    return paths

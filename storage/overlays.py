"""One answer's overlays, built once: the PGDFC regions it read, the boxes it drew and its
masks, in level-0 pixels. Made from the engine's Answer in memory (`Overlays.of_answer`, when
an answer ends) or from a logged turn (`Overlays.of_turn`, when a conversation is reopened or
exported). The viewer's layers (web/messages.py), the GeoJSON (storage/export.py) and the HTML
report (web/report.py, through storage.export.turn_overlays) are all drawn from it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from storage import shapes


def mask_bitmap(png: bytes) -> np.ndarray:
    """A logged mask PNG as an H×W bool array."""
    with Image.open(io.BytesIO(bytes(png))) as image:
        return np.asarray(image.convert("L")) > 127


@dataclass(frozen=True)
class OverlayMask:
    index: int
    l0_rect: list[int]  # [x, y, w, h] the bitmap is stretched over
    bitmap: np.ndarray  # H×W bool
    label: str | None = None


@dataclass(frozen=True)
class Overlays:
    """regions: [{rank, score (None when unknown), l0_rect: [x, y, w, h]}] in rank order;
    boxes: [{rel: [x0, y0, x1, y1] | None, l0_rect, label}]; masks: [OverlayMask]."""

    regions: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    masks: list[OverlayMask] = field(default_factory=list)

    @classmethod
    def of_answer(cls, answer: Any) -> Overlays:
        """From the engine's Answer as it ended (its masks' bitmaps as they are, not PNGs)."""
        data = answer.to_dict()  # JSON-safe regions and boxes (a non-finite score is None)
        masks = [
            OverlayMask(i, shapes.l0_rect(m.l0_rect, f"Mask {i + 1}"), np.asarray(m.bitmap, bool))
            for i, m in enumerate(answer.masks)
        ]
        return cls._sorted(shapes.regions(data["regions"]), shapes.boxes(data["boxes"]), masks)

    @classmethod
    def of_turn(cls, turn: dict[str, Any]) -> Overlays:
        """From a logged turn (Store.load_conversation()'s turn dict; its mask PNGs decoded)."""
        masks = [
            OverlayMask(m["index"], list(m["l0_rect"]), mask_bitmap(m["png"]), m.get("label"))
            for m in turn.get("masks") or []
        ]
        return cls._sorted(list(turn.get("regions") or []), list(turn.get("boxes") or []), masks)

    @classmethod
    def _sorted(cls, regions: list, boxes: list, masks: list) -> Overlays:
        return cls(sorted(regions, key=lambda r: r["rank"]), boxes, masks)

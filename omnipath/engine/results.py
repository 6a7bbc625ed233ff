"""What one answer carries: text, regions read, boxes, masks, timings, token counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from omnipath.boxes import Box
from omnipath.coords import L0Rect

__all__ = ["Answer", "Box", "MaskResult", "Queued", "Region", "bitmap_rle", "rect_dict"]


def rect_dict(rect: L0Rect) -> dict[str, int]:
    return {"x": int(rect.x), "y": int(rect.y), "w": int(rect.w), "h": int(rect.h)}


def bitmap_rle(bitmap: np.ndarray) -> list[int]:
    """Row-major run lengths of a bool bitmap, starting with a run of False (may be 0)."""
    flat = np.asarray(bitmap, dtype=bool).reshape(-1)
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


@dataclass(frozen=True)
class Region:
    """A region PGDFC read at high resolution: `rank` 1 = highest probe score; `score` = Ψ
    (the last input token's layer-0 attention on that cell, head mean); `l0_rect` the level-0
    rectangle read (cell plus context, clipped to the slide)."""

    rank: int
    score: float
    l0_rect: L0Rect

    def to_dict(self) -> dict:
        score = self.score if math.isfinite(self.score) else None
        return {"rank": self.rank, "score": score, "l0_rect": rect_dict(self.l0_rect)}


@dataclass(frozen=True)
class Queued:
    """Yielded by `Engine.answer(..., queue_updates=True)` while the answer waits for a batch:
    `ahead` questions wait before it (0: its batch is starting)."""

    ahead: int


@dataclass(frozen=True)
class MaskResult:
    """A mask the model segmented: `bitmap` H×W bool, stretched over `l0_rect` (level 0)."""

    bitmap: np.ndarray
    l0_rect: L0Rect

    def to_dict(self) -> dict:
        height, width = self.bitmap.shape
        return {
            "l0_rect": rect_dict(self.l0_rect),
            "shape": [int(height), int(width)],
            "rle": bitmap_rle(self.bitmap),
        }


@dataclass
class Answer:
    """The last item `Engine.answer` yields. `timings` in seconds per stage; `error` is a
    sentence for a person when part of the answer is missing (e.g. masks unavailable)."""

    text: str
    regions: list[Region] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    masks: list[MaskResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    model_id: str = ""
    revision: str | None = None
    stopped: bool = False
    timed_out: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "regions": [r.to_dict() for r in self.regions],
            "boxes": [b.to_dict() for b in self.boxes],
            "masks": [m.to_dict() for m in self.masks],
            "timings": {k: float(v) for k, v in self.timings.items()},
            "tokens": {k: int(v) for k, v in self.tokens.items()},
            "model_id": self.model_id,
            "revision": self.revision,
            "stopped": self.stopped,
            "timed_out": self.timed_out,
            "error": self.error,
        }

"""The per-slide work done once and reused by every question about the slide: the padded
square thumbnail, its tissue grid and its vision features (an LRU cache)."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from omnipath.coords import ThumbFrame
from omnipath.engine.slide_lru import SlideLRU, slide_key


@dataclass
class ThumbFeatures:
    """frame: the square thumbnail's geometry; image: the side×side RGB input (PIL);
    tissue: grid×grid float32 tissue fraction (padding = background);
    tokens: N×D_llm projected image tokens (e_v); feature_map: C_v×g×g (mask decoder input)."""

    frame: ThumbFrame
    image: Image.Image
    tissue: np.ndarray
    tokens: torch.Tensor
    feature_map: torch.Tensor


class ThumbnailCache(SlideLRU[ThumbFeatures]):
    """LRU of ThumbFeatures keyed by (slide identity, thumb side). Thread-safe; entries of
    slides known only by object identity go when the object is collected (see SlideLRU)."""

    def __init__(self, max_entries: int = 8) -> None:
        super().__init__(max_entries)

    def key(self, slide: Any, side: int) -> Hashable:
        return (slide_key(slide), int(side))

    def get(self, slide: Any, side: int) -> ThumbFeatures | None:
        return self._lookup(self.key(slide, side))

    def put(self, slide: Any, side: int, entry: ThumbFeatures) -> None:
        self._store(slide, self.key(slide, side), entry)


@dataclass
class Look:
    """A slide's square thumbnail and its tissue grid (grid×grid tissue fraction), made when
    a question is asked so S is checked then; `features` when the vision features are
    cached already, else `seconds` it took to render."""

    frame: ThumbFrame
    image: Image.Image
    tissue: np.ndarray
    seconds: float = 0.0
    features: ThumbFeatures | None = None


def look_at(
    slide: Any,
    key: Any,
    cache: ThumbnailCache,
    side: int,
    grid: int,
    pad_fill: tuple[int, int, int] | None = None,
) -> Look:
    """The cached ThumbFeatures of `key` when the slide was seen, else the thumbnail and its
    tissue grid rendered now (no model call). pad_fill: the model's padding colour (LLaVA's
    mean colour); tissue is always measured on white padding (glass)."""
    cached = cache.get(key, side)
    if cached is not None:
        return Look(cached.frame, cached.image, cached.tissue, features=cached)
    from omnipath.slide.tissue import tissue_fraction

    started = time.perf_counter()
    frame = ThumbFrame(int(slide.l0_width), int(slide.l0_height), side)
    thumbnail = slide.thumbnail(side)
    image = frame.render(thumbnail)
    tissue = np.asarray(tissue_fraction(image, (grid, grid)), dtype=np.float32)
    if pad_fill is not None:
        image = frame.render(thumbnail, fill=tuple(pad_fill))
    return Look(frame, image, tissue, seconds=time.perf_counter() - started)

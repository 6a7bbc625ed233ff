"""The per-slide work done once and reused by every question about the slide: the padded
square thumbnail, its tissue grid and its vision features (an LRU cache)."""

from __future__ import annotations

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

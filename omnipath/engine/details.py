"""LRU cache of encoded detail patches, so follow-up questions that attend to the same cells
do not read and encode them again.

Key: (slide identity, level-0 read rectangle, read side in px, tokens per patch); value: the
patch's P×D_llm tokens as the model produced them. The model is fixed per engine, so its
weights and detail scales need no place in the key.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from omnipath.coords import L0Rect
from omnipath.engine.slide_lru import SlideLRU, slide_key


class DetailCache(SlideLRU[torch.Tensor]):
    """Bounded LRU of encoded detail patches (P×D tensors). Thread-safe; entries of slides
    known only by object identity go when the object is collected (see SlideLRU)."""

    def __init__(self, max_entries: int = 256) -> None:
        super().__init__(max_entries)

    @staticmethod
    def key(slide: Any, read_rect: L0Rect, out_side: int, tokens_per_patch: int) -> Hashable:
        rect = (read_rect.x, read_rect.y, read_rect.w, read_rect.h)
        return (slide_key(slide), rect, int(out_side), int(tokens_per_patch))

    def get(self, key: Hashable) -> torch.Tensor | None:
        return self._lookup(key)

    def put(self, slide: Any, key: Hashable, tokens: torch.Tensor) -> None:
        self._store(slide, key, tokens)

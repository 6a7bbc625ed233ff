"""LRU cache of encoded detail patches, so follow-up questions that attend to the same cells
do not read and encode them again.

Key: (slide identity, level-0 read rectangle, read side in px, tokens per patch); value: the
patch's P×D_llm tokens as the model produced them. The model is fixed per engine, so its
weights and detail scales need no place in the key.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch

from omnipath.coords import L0Rect
from omnipath.engine.thumbs import slide_key


class DetailCache:
    """Bounded LRU of encoded detail patches (P×D tensors). Thread-safe.

    Entries of slides known only by object identity are dropped when the object is collected
    (as in ThumbnailCache), so a reused memory address never returns another slide's patch.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max(0, int(max_entries))
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(slide: Any, read_rect: L0Rect, out_side: int, tokens_per_patch: int) -> Hashable:
        rect = (read_rect.x, read_rect.y, read_rect.w, read_rect.h)
        return (slide_key(slide), rect, int(out_side), int(tokens_per_patch))

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, slide: Any, key: Hashable, tokens: torch.Tensor) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = tokens
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        if key[0][0] == "object":
            try:
                weakref.finalize(slide, self._discard, key)
            except TypeError:  # not weak-referenceable: forget it at once rather than risk reuse
                self._discard(key)

    def _discard(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

"""The per-slide work done once and reused by every question about the slide: the padded
square thumbnail, its tissue grid and its vision features (an LRU cache)."""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from omnipath.coords import ThumbFrame


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


def slide_key(slide: Any) -> Hashable:
    """Identity of a slide for caching: its content hash or id when it has one, else its file
    (path, size, mtime), else the object itself (weakly, see ThumbnailCache)."""
    for name in ("slide_id", "content_hash", "sha256"):
        value = getattr(slide, name, None)
        if isinstance(value, str) and value:
            return (name, value)
    path = getattr(slide, "path", None)
    if path is not None:
        try:
            stat = os.stat(path)
            return ("path", os.fspath(path), stat.st_size, stat.st_mtime_ns)
        except OSError:
            pass
    return ("object", id(slide))


class ThumbnailCache:
    """LRU of ThumbFeatures keyed by (slide identity, thumb side). Thread-safe.

    Slides known only by object identity are dropped when the object is collected, so a new
    slide that happens to reuse a memory address never gets an old slide's features."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max(0, int(max_entries))
        self._entries: OrderedDict[Hashable, ThumbFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, slide: Any, side: int) -> Hashable:
        return (slide_key(slide), int(side))

    def get(self, slide: Any, side: int) -> ThumbFeatures | None:
        key = self.key(slide, side)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, slide: Any, side: int, entry: ThumbFeatures) -> None:
        if self.max_entries == 0:
            return
        key = self.key(slide, side)
        with self._lock:
            self._entries[key] = entry
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

"""A bounded, thread-safe LRU keyed by slide identity (the slide id, or the slide object while
it lives): the base of the thumbnail cache and the detail-patch cache."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

Value = TypeVar("Value")


def slide_key(slide: Any) -> Hashable:
    """Identity of a slide for caching: the slide id the caller passed (a str), else the slide
    object itself (weakly, see SlideLRU)."""
    if isinstance(slide, str):
        return ("id", slide)
    return ("object", id(slide))


class SlideLRU(Generic[Value]):
    """LRU of values whose keys start with `slide_key(slide)`. Thread-safe.

    Entries of slides known only by object identity are dropped when the object is collected,
    so a new slide that happens to reuse a memory address never gets an old slide's entry."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(0, int(max_entries))
        self._entries: OrderedDict[Hashable, Value] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _lookup(self, key: Hashable) -> Value | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def _store(self, slide: Any, key: Hashable, value: Value) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = value
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

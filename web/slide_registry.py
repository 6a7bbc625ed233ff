"""Slide ids → files, and the few slides kept open at once.

The browser only ever sees an opaque slide id (the file's content hash); the path stays on the
server. At most `max_open` slides are open; opening one more closes the least recently used.
A slide that is being read when it is evicted is closed when its last reader lets go, so
concurrent tile requests never read a closed handle.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from omnipath.errors import NotFoundError
from omnipath.facts import is_slide_id

T = TypeVar("T")


# What an unknown slide id is told; a slide of someone else is told the same.
UNKNOWN_SLIDE = "This slide is not known to the server."


class OpenedSlide:
    """One open slide and what other layers attach to it (built once, reused while open)."""

    def __init__(self, slide_id: str, slide: Any) -> None:
        self.slide_id = slide_id
        self.slide = slide
        self._attachments: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._readers = 0
        self._evicted = False

    def attachment(self, name: str, build: Callable[[Any], T]) -> T:
        """The object `build(slide)` made the first time `name` was asked for (one build per
        open slide, e.g. its deep-zoom generator and ICC transform)."""
        with self._lock:
            if name not in self._attachments:
                self._attachments[name] = build(self.slide)
            return self._attachments[name]

    def _close(self) -> None:
        self._attachments.clear()
        self.slide.close()


def _default_opener(path: Path) -> Any:
    from omnipath.slide import open_slide  # imported late: no slide libraries at web import

    return open_slide(path)


def _default_hasher(path: Path) -> str:
    from omnipath.slide import content_hash

    return content_hash(path)


class SlideRegistry:
    """Maps slide ids to files and keeps at most `max_open` slides open (LRU). Thread-safe."""

    def __init__(
        self,
        max_open: int = 8,
        *,
        opener: Callable[[Path], Any] = _default_opener,
        hasher: Callable[[Path], str] = _default_hasher,
    ) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self.max_open = max_open
        self._opener = opener
        self._hasher = hasher
        self._paths: dict[str, Path] = {}
        self._open: OrderedDict[str, OpenedSlide] = OrderedDict()
        self._lock = threading.Lock()
        # One lock per id while it is being opened, so two requests do not open it twice.
        self._opening: dict[str, threading.Lock] = {}

    def register(self, path: str | Path, slide_id: str | None = None) -> str:
        """Remember `path` under its content hash (computed unless given) and return the id."""
        path = Path(path).resolve()
        if not path.is_file():
            raise NotFoundError(f"There is no slide file at {path.name!r}.")
        slide_id = self._hasher(path) if slide_id is None else slide_id
        if not is_slide_id(slide_id):
            raise ValueError(f"not a slide id (sha256 hex expected): {slide_id!r}")
        with self._lock:
            self._paths[slide_id] = path
        return slide_id

    def is_registered(self, slide_id: str) -> bool:
        with self._lock:
            return slide_id in self._paths

    def path_of(self, slide_id: str) -> Path:
        with self._lock:
            path = self._paths.get(slide_id)
        if path is None:
            raise NotFoundError("This slide is not known to the server (it may have been removed).")
        return path

    def open_ids(self) -> list[str]:
        """Ids of the slides open now, least recently used first."""
        with self._lock:
            return list(self._open)

    @contextmanager
    def lease(self, slide_id: str) -> Iterator[OpenedSlide]:
        """The open slide for `slide_id`, opened if needed, guaranteed open until the block ends.

        Raises NotFoundError for an unknown id and the slide layer's SlideError when the file
        cannot be opened."""
        opened = self._acquire(slide_id)
        try:
            yield opened
        finally:
            self._release(opened)

    def _acquire(self, slide_id: str) -> OpenedSlide:
        with self._lock:
            opened = self._read_open_locked(slide_id)
            if opened is not None:
                return opened
            if slide_id not in self._paths:
                raise NotFoundError(UNKNOWN_SLIDE)
            opening = self._opening.setdefault(slide_id, threading.Lock())
        with opening:
            with self._lock:  # someone else may have opened it while we waited
                opened = self._read_open_locked(slide_id)
                if opened is not None:
                    return opened
                path = self._paths[slide_id]
            if not path.is_file():
                raise NotFoundError("This slide's file is no longer on the server.")
            opened = OpenedSlide(slide_id, self._opener(path))  # slow part, outside the lock
            with self._lock:
                self._opening.pop(slide_id, None)
                # A request that came after our opening lock was dropped (the slide evicted
                # meanwhile) may have opened it too: keep theirs, close ours.
                existing = self._read_open_locked(slide_id)
                if existing is not None:
                    opened, to_close = existing, [opened]
                else:
                    opened._readers += 1
                    self._open[slide_id] = opened
                    to_close = self._evict_locked()
        for victim in to_close:
            victim._close()
        return opened

    def _read_open_locked(self, slide_id: str) -> OpenedSlide | None:
        """The slide if it is open, with one more reader and now the most recently used;
        None when it is not open. Call with self._lock held."""
        opened = self._open.get(slide_id)
        if opened is not None:
            self._open.move_to_end(slide_id)
            opened._readers += 1
        return opened

    def _evict_locked(self) -> list[OpenedSlide]:
        to_close = []
        while len(self._open) > self.max_open:
            _, victim = self._open.popitem(last=False)
            victim._evicted = True
            if victim._readers == 0:
                to_close.append(victim)
        return to_close

    def _release(self, opened: OpenedSlide) -> None:
        with self._lock:
            opened._readers -= 1
            close_now = opened._evicted and opened._readers == 0
        if close_now:
            opened._close()

    def unregister(self, slide_id: str) -> None:
        """Forget the id altogether (an upload that was refused or could not be recorded)."""
        self.forget(slide_id)
        with self._lock:
            self._paths.pop(slide_id, None)

    def forget(self, slide_id: str) -> None:
        """Drop an open handle (e.g. after the slide layer reported damage); reopened on next use."""
        with self._lock:
            opened = self._open.pop(slide_id, None)
            if opened is None:
                return
            opened._evicted = True
            close_now = opened._readers == 0
        if close_now:
            opened._close()

    def close(self) -> None:
        """Close every open slide (at shutdown)."""
        with self._lock:
            victims = list(self._open.values())
            self._open.clear()
            for victim in victims:
                victim._evicted = True
        for victim in victims:
            if victim._readers == 0:
                victim._close()

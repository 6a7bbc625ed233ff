"""Taking an uploaded slide: size check, content hash, copy into the slide store, a first
thumbnail (does it decode?), its row, and a new conversation about it. Plain functions over
ChatServices, like web/handlers.py; errors are typed and carry a sentence."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnipath.errors import NotFoundError, SlideError, UploadTooLargeError
from omnipath.slide import content_hash
from web.chat_services import ChatServices
from web.handlers import empty_layers
from web.viewer_component import viewer_state

# progress(fraction 0..1, description) — gr.Progress fits, so does a test's list.append.
ProgressFn = Callable[[float, str], None]
_CHUNK = 8 * 1024 * 1024
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")
# The side of the thumbnail made at upload (checks that the slide decodes; cached by the slide).
UPLOAD_THUMBNAIL_SIDE = 512


def _no_progress(fraction: float, description: str) -> None:
    pass


def _store_copy(source: Path, target: Path, size: int, progress: ProgressFn) -> None:
    """Put the upload at `target`: a hard link when on the same disk (instant), else a copy
    written under a temporary name and renamed, so a half-copied file is never used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        os.link(source, partial)
    except OSError:
        done = 0
        with open(source, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                done += len(chunk)
                progress(0.5 + 0.3 * done / max(size, 1), "Copying the slide")
    partial.replace(target)


def _stored_name(slide_id: str, file_name: str | None) -> str:
    # The format is sniffed from the content; the suffix is kept only because OpenSlide and
    # the MIRAX zip reader look at it. Nothing else of the user's file name reaches the disk.
    suffix = Path(file_name or "").suffix.lower()
    return slide_id + (suffix if _SUFFIX.fullmatch(suffix) else "")


def upload_slide(
    services: ChatServices,
    path: str | os.PathLike[str],
    *,
    file_name: str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Take an uploaded file: size check (before anything is read), hash, copy into the slide
    store, open it and make a thumbnail, record it, and start a new conversation about it.

    Returns {slide_id, conversation_id, meta (web.tiles.viewer_meta), viewer_state (JSON string)}.
    Raises UploadTooLargeError, NotFoundError (no file), SlideError subclasses (not a slide,
    damaged, ...)."""
    progress = progress or _no_progress
    source = Path(path)
    if not source.is_file():
        raise NotFoundError("The uploaded file did not arrive; please upload it again.")
    size = source.stat().st_size
    limit = services.settings.max_upload_bytes
    if size > limit:
        raise UploadTooLargeError(
            f"The file is {_human_bytes(size)}, more than this server accepts "
            f"({_human_bytes(limit)}).",
            detail=f"{size} > {limit}",
        )
    if size == 0:
        from omnipath.errors import EmptySlideError

        raise EmptySlideError("The uploaded file is empty.")
    progress(0.0, "Hashing the slide")
    slide_id = content_hash(source, lambda done: progress(0.5 * done / size, "Hashing the slide"))
    target = services.settings.uploads_dir / _stored_name(slide_id, file_name or source.name)
    created = False
    if not target.is_file():
        progress(0.5, "Copying the slide")
        _store_copy(source, target, size, progress)
        created = True
    progress(0.8, "Making the thumbnail")
    registry = services.registry
    registry.register(target, slide_id=slide_id)
    try:
        with registry.lease(slide_id) as opened:
            opened.slide.thumbnail(UPLOAD_THUMBNAIL_SIDE)
            info = opened.slide.info
    except SlideError:
        registry.forget(slide_id)
        if created:
            target.unlink(missing_ok=True)
        raise
    services.store.record_slide_info(
        slide_id, info, size_bytes=size, stored_path=target, file_name=file_name
    )
    conversation_id = services.store.start_conversation(
        slide_id, services.engine.info.get("model_id")
    )
    meta = services.web.tiles.meta(slide_id)
    progress(1.0, "Ready")
    return {
        "slide_id": slide_id,
        "conversation_id": conversation_id,
        "meta": meta,
        "viewer_state": viewer_state(slide_id, meta, empty_layers()),
    }


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"

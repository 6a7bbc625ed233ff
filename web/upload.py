"""Taking an uploaded slide: size check, one pass that stores and hashes it, a first look at
its smallest pyramid level (does it decode?), its row, and a new conversation about it. Plain
functions over ChatServices, like web/handlers.py; errors are typed and carry a sentence.

Nothing of a refused upload stays behind: not the stored file, not what opening it created
beside it (SQLite's -wal/-shm, a MIRAX zip's extracted folder), not its registry entry, and
not Gradio's received copy."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnipath.errors import EmptySlideError, NotFoundError, OmniPathError, UploadTooLargeError
from omnipath.slide import content_hash
from storage.models import LOCAL_OWNER
from web.chat_services import ChatServices
from web.handlers import empty_layers
from web.slide_files import FILES_LOCK, remove_stored
from web.viewer_component import viewer_state

# progress(fraction 0..1, description) — gr.Progress fits, so does a test's list.append.
ProgressFn = Callable[[float, str], None]
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")
# The longest side of the look at the slide taken at upload (its smallest level, at most this).
UPLOAD_THUMBNAIL_SIDE = 512
STORED_FRACTION = 0.8  # of the progress bar: storing and hashing; the rest is the first look


def _no_progress(fraction: float, description: str) -> None:
    pass


def gradio_upload_dir() -> Path:
    """The folder where Gradio puts the files it receives (GRADIO_TEMP_DIR or its default)."""
    from gradio.utils import get_upload_folder  # late: no Gradio needed to import this module

    return Path(get_upload_folder()).resolve()


def _received_by_gradio(path: Path) -> bool:
    """True when `path` is a file Gradio received for this upload (inside its upload folder):
    then the upload owns it, moves it into the store and deletes it when refused. A file
    anywhere else (a --slide from the command line, a test fixture) is only ever read."""
    folder = gradio_upload_dir()
    resolved = path.resolve()
    return resolved != folder and resolved.is_relative_to(folder)


def _drop_received(path: Path) -> None:
    """Delete Gradio's received file and the folder Gradio made for it, if now empty."""
    path.unlink(missing_ok=True)
    if path.parent != gradio_upload_dir():
        try:
            path.parent.rmdir()
        except OSError:
            pass  # not empty: another upload of the same bytes


def _stored_name(slide_id: str, file_name: str | None) -> str:
    # The format is sniffed from the content; the suffix is kept only because OpenSlide and
    # the MIRAX zip reader look at it. Nothing else of the user's file name reaches the disk.
    suffix = Path(file_name or "").suffix.lower()
    return slide_id + (suffix if _SUFFIX.fullmatch(suffix) else "")


def _receive(
    source: Path, store_dir: Path, size: int, progress: ProgressFn, move: bool
) -> tuple[Path, str]:
    """Bring the upload into the store under a temporary name with one pass over its bytes:
    moved (a rename) and hashed when `move` and on the same disk, else copied and hashed at
    once. Returns (temporary path, slide id); the caller deletes the temporary path."""
    store_dir.mkdir(parents=True, exist_ok=True)
    partial = store_dir / f".{uuid.uuid4().hex}.partial"  # never a slide id: ids are hex only

    def hashed(done: int) -> None:
        progress(STORED_FRACTION * done / size, "Storing the slide")

    try:
        progress(0.0, "Storing the slide")
        if move and _renamed(source, partial):
            return partial, content_hash(partial, hashed)
        return partial, content_hash(source, hashed, copy_to=partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _place(partial: Path, slide_id: str, file_name: str) -> tuple[Path, bool]:
    """Name the received file `<sha256><suffix>`; when those bytes are already stored the
    new copy is left to be dropped. Returns (stored path, whether this call created it).
    Call with FILES_LOCK held."""
    target = partial.parent / _stored_name(slide_id, file_name)
    if target.is_file():
        return target, False
    partial.replace(target)
    return target, True


def _renamed(source: Path, target: Path) -> bool:
    """os.replace(source, target); False when it cannot be (another disk: then copy)."""
    try:
        os.replace(source, target)
    except OSError:
        return False
    return True


def upload_slide(
    services: ChatServices,
    path: str | os.PathLike[str],
    *,
    file_name: str | None = None,
    progress: ProgressFn | None = None,
    owner: str = LOCAL_OWNER,
) -> dict[str, Any]:
    """Take an uploaded file: size check (before anything is read), store and hash it in one
    pass, open it and look at its smallest level, record it, and start a new conversation of
    `owner` (the slide is granted to them; the same bytes uploaded by two are stored once).
    A file Gradio received is moved into the store (deleted if refused); any other file is
    copied and left where it is.

    Returns {slide_id, conversation_id, meta (web.tiles.viewer_meta), viewer_state (JSON string)}.
    Raises UploadTooLargeError, NotFoundError (no file), SlideError subclasses (not a slide,
    damaged, ...), storage's DatabaseError (the log cannot record it now)."""
    source = Path(path)
    received = _received_by_gradio(source)
    if received:  # ours: moved into the store, or deleted when refused
        source = source.resolve()
    try:
        return _take(services, source, file_name, progress, move=received, owner=owner)
    finally:
        if received:
            _drop_received(source)


def _take(
    services: ChatServices,
    source: Path,
    file_name: str | None,
    progress: ProgressFn | None,
    *,
    move: bool,
    owner: str,
) -> dict[str, Any]:
    progress = progress or _no_progress
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
        raise EmptySlideError("The uploaded file is empty.")
    partial, slide_id = _receive(source, services.settings.uploads_dir, size, progress, move)
    try:
        with FILES_LOCK:  # no deletion of these bytes between storing them and granting them
            conversation_id = _record(
                services, partial, slide_id, file_name or source.name, file_name, owner, progress
            )
    finally:
        partial.unlink(missing_ok=True)
    meta = services.web.tiles.meta(slide_id)
    progress(1.0, "Ready")
    return {
        "slide_id": slide_id,
        "conversation_id": conversation_id,
        "meta": meta,
        "viewer_state": viewer_state(slide_id, meta, empty_layers()),
    }


def _record(
    services: ChatServices,
    partial: Path,
    slide_id: str,
    stored_name: str,
    file_name: str | None,
    owner: str,
    progress: ProgressFn,
) -> str:
    """Store the received file, look at it, record it and start `owner`'s conversation about
    it (which grants it); a refused file leaves nothing behind. Returns the conversation id."""
    target, created = _place(partial, slide_id, stored_name)
    progress(STORED_FRACTION, "Making the thumbnail")
    registry = services.registry
    before = registry.path_of(slide_id) if registry.is_registered(slide_id) else None
    registry.register(target, slide_id=slide_id)
    try:
        with registry.lease(slide_id) as opened:
            opened.slide.overview(UPLOAD_THUMBNAIL_SIDE)
            info = opened.slide.info
        services.store.record_slide_info(
            slide_id,
            info,
            size_bytes=target.stat().st_size,
            stored_path=target,
            file_name=file_name,
        )
        return services.store.start_conversation(
            slide_id, services.engine.info.get("model_id"), owner=owner
        )
    except OmniPathError:
        registry.forget(slide_id)  # close it: a file that failed may be removed next
        if created:
            registry.unregister(slide_id)
            remove_stored(target)
            if before is not None:  # the same bytes known from elsewhere stay known
                registry.register(before, slide_id=slide_id)
        raise


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"

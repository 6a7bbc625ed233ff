"""Exports of a conversation (json, geojson, the html report) and the private folder where
they wait for the browser.

Export files are made 0600 (tempfile.mkstemp) and renamed into place, so a half-written one
is never served. The download folder is made 0700 by tempfile.mkdtemp on the first export, so
nobody else can have made it or look into it; each export removes the files there older than
DOWNLOAD_KEEP_S. Gradio serves a copy from its own cache, which the Blocks clear on their own
schedule (GRADIO_CACHE_CLEANUP in web/chat_app.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from omnipath.errors import OmniPathError, OptionsError, echo
from storage.models import LOCAL_OWNER
from web.chat_services import ChatServices
from web.handlers import _ensure_registered, _load

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("json", "geojson", "html")
# An export's file name; Gradio's file route serves it to its owner only (web/access.py).
EXPORT_NAME = re.compile(r"omnipath-([0-9a-f]{32})\.(json|geojson|html)")
# Seconds an export waits in the download folder before the next export removes it.
DOWNLOAD_KEEP_S = 10 * 60


def export_conversation(
    services: ChatServices,
    conversation_id: str,
    fmt: str,
    folder: str | os.PathLike[str] | None = None,
    *,
    owner: str = LOCAL_OWNER,
) -> Path:
    """Write one export of the conversation (readable by this user only) and return its path:
    "json" (everything logged), "geojson" (regions, boxes, masks in level-0 pixels, for
    QuPath) or "html" (the self-contained report with a snapshot of each answer's overlays)."""
    from storage import conversation_geojson, conversation_json

    if fmt not in EXPORT_FORMATS:
        raise OptionsError(f"Export as one of {', '.join(EXPORT_FORMATS)}, not {echo(fmt)}.")
    conversation = _load(services, conversation_id, owner)
    conversation_id = conversation["id"]
    folder = Path(folder) if folder is not None else services.settings.exports_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if fmt == "json":
        content = json.dumps(
            conversation_json(services.store, conversation_id, owner=owner), ensure_ascii=False
        )
    elif fmt == "geojson":
        content = json.dumps(conversation_geojson(services.store, conversation_id, owner=owner))
    else:
        from web.report import conversation_report

        content = conversation_report(
            conversation,
            _report_thumbnail(services, conversation["slide"]),
            model=services.model_banner(),
        )
    path = folder / f"omnipath-{conversation_id}.{fmt}"  # EXPORT_NAME
    _write_private(path, content)
    return path


def _write_private(path: Path, text: str) -> None:
    """`text` at `path`, mode 0600 from its creation, renamed into place when complete."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _report_thumbnail(services: ChatServices, slide: dict[str, Any]) -> Image.Image | None:
    """The slide's thumbnail for the report, or None when the file is gone or unreadable."""
    from web.report import REPORT_THUMBNAIL_SIDE

    try:
        _ensure_registered(services, slide)
        with services.registry.lease(slide["id"]) as opened:
            return opened.slide.thumbnail(REPORT_THUMBNAIL_SIDE)
    except OmniPathError:
        log.warning("no thumbnail for the report of slide %s", slide["id"][:12], exc_info=True)
        return None


def sweep(folder: Path, max_age_s: float) -> int:
    """Remove the files in `folder` last changed more than `max_age_s` ago; returns how many."""
    removed = 0
    cutoff = time.time() - max_age_s
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # another sweep got there first
            continue
    return removed


class DownloadFolder:
    """Where exports wait for the browser: a private folder, made on first use, swept of
    exports older than `keep_s` each time one is written. Thread-safe."""

    def __init__(self, keep_s: float = DOWNLOAD_KEEP_S) -> None:
        self.keep_s = keep_s
        self._path: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None or not self._path.is_dir():
                self._path = Path(tempfile.mkdtemp(prefix="omnipath-downloads-"))
            return self._path

    def export(
        self, services: ChatServices, conversation_id: str, fmt: str, *, owner: str = LOCAL_OWNER
    ) -> Path:
        """export_conversation() into this folder, then the sweep."""
        folder = self.path
        path = export_conversation(services, conversation_id, fmt, folder, owner=owner)
        sweep(folder, self.keep_s)
        return path

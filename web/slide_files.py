"""Deleting a stored slide file once nobody holds it (Store.delete_conversation says when: an
owner's grant goes with their last conversation about the slide, by UI delete, owner purge or
visitor expiry). The slide shown at start is everyone's and is never deleted; only files in
the uploads folder are.

FILES_LOCK is held around "check the grants → delete the file" here and around "store the
file → grant it" in web/upload.py, so an upload of the same bytes never loses its file to a
concurrent delete. It is a lock of this process: enough for one server. With several replicas
over one database and one uploads folder, a deletion can still race an upload on another
replica (that upload then fails to open the slide and asks for it again); a database advisory
lock would be the way to close that."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from web.chat_services import ChatServices

log = logging.getLogger(__name__)

FILES_LOCK = threading.RLock()


def remove_stored(target: Path) -> None:
    """Delete a stored file and whatever opening it made beside it, named after it: SQLite's
    `-wal`/`-shm`/`-journal`, a zip's `.extracted` folder (`<hash>.tif` never matches
    `<hash>.tiff`: a sibling's name continues with '-' or '.')."""
    target.unlink(missing_ok=True)
    for sibling in target.parent.iterdir():
        rest = sibling.name[len(target.name) :]
        if sibling.name.startswith(target.name) and rest[:1] in ("-", "."):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def release_unheld(services: ChatServices, slide_ids: list[str]) -> list[str]:
    """Delete the stored files of those slides nobody holds any more (checked again under
    FILES_LOCK), close them and forget their paths; their rows keep their metadata with
    `stored_path` cleared. Returns the ids whose files were deleted."""
    uploads = services.settings.uploads_dir.resolve()
    deleted = []
    for slide_id in slide_ids:
        if slide_id == services.web.initial_slide_id:
            continue
        with FILES_LOCK:
            path = services.store.drop_stored_path(slide_id)
            if path is None:
                continue
            services.registry.unregister(slide_id)
            target = Path(path)
            if target.resolve().parent == uploads:
                remove_stored(target)
                deleted.append(slide_id)
    if deleted:
        log.info("deleted %d slide file(s) nobody holds any more", len(deleted))
    return deleted


def delete_unheld_files(services: ChatServices) -> None:
    """From now on, slides that lose their last grant in `services.store` lose their file."""
    services.store.on_unheld = lambda slide_ids: release_unheld(services, slide_ids)

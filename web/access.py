"""What each may see outside Gradio's handlers (which pass the owner to web/handlers.py):

- slides (SlideAccess): the one shown at start (the sample slide, --slide) to all, any other
  only to the owners it was granted to (Store.grant_slide, on upload). The tile routes ask for
  every request, so positive answers are remembered; refusals are asked again. A live share
  link (`?share=TOKEN`, web/share.py) opens its slide to anyone, asked at every request so
  that revoking it counts at once;
- exports served by Gradio's file route (ExportFileGuard): to the conversation's owner only;
- public demo visitors' spaces expire (expire_visitors, keep_expiring_visitors).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from gradio.route_utils import API_PREFIX
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from web.chat_services import ChatServices
from web.exports import EXPORT_NAME
from web.identity import VISITOR_PREFIX
from web.share import may_see_shared

log = logging.getLogger(__name__)

# Remembered (owner, slide id) grants; beyond this many, the memory starts over.
MAX_REMEMBERED = 10_000


class SlideAccess:
    """may_see(request, slide_id): may the asker of this HTTP request see the slide?"""

    def __init__(self, chat: ChatServices) -> None:
        self.chat = chat
        self._granted: set[tuple[str, str]] = set()
        self._version = chat.store.grants_dropped
        self._lock = threading.Lock()

    def may_see(self, request: Any, slide_id: str) -> bool:
        if may_see_shared(self.chat, request, slide_id):  # a live share link, never remembered
            return True
        owner = self.chat.identity.owner_of(request)  # type: ignore[union-attr]
        if owner is None:
            return False
        if slide_id == self.chat.web.initial_slide_id:
            return True
        key = (owner, slide_id)
        with self._lock:
            if self._version != self.chat.store.grants_dropped:  # a grant went: forget all
                self._granted.clear()
                self._version = self.chat.store.grants_dropped
            if key in self._granted:
                return True
        if not self.chat.store.may_see_slide(slide_id, owner):
            return False
        with self._lock:
            if len(self._granted) >= MAX_REMEMBERED:
                self._granted.clear()
            self._granted.add(key)
        return True


# How often the server looks for expired visitor spaces, in seconds.
EXPIRY_CHECK_S = 3600


def expire_visitors(chat: ChatServices) -> int:
    """Delete the spaces of public demo visitors idle for longer than anonymous_keep_days."""
    idle_s = chat.settings.anonymous_keep_days * 24 * 3600
    return chat.store.purge_idle_owners(VISITOR_PREFIX, idle_s)


def keep_expiring_visitors(chat: ChatServices) -> threading.Event:
    """expire_visitors now and then every EXPIRY_CHECK_S in a daemon thread; set the returned
    event to stop it."""
    stop = threading.Event()

    def run() -> None:
        while True:
            try:
                purged = expire_visitors(chat)
                if purged:
                    log.info("deleted the spaces of %d idle public demo visitor(s)", purged)
            except Exception:  # the database may be down for a while: try again later
                log.exception("could not delete idle visitors' spaces")
            if stop.wait(EXPIRY_CHECK_S):
                return

    threading.Thread(target=run, name="omnipath-visitor-expiry", daemon=True).start()
    return stop


class ExportFileGuard:
    """ASGI middleware: Gradio's file route serves an export (omnipath-<conversation id>.<fmt>)
    only to the owner of that conversation; anyone else gets Gradio's 404 for a missing file."""

    def __init__(self, app: ASGIApp, chat: ChatServices) -> None:
        self.app = app
        self.chat = chat
        self._route = f"{API_PREFIX}/file="

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._route):
            name = EXPORT_NAME.fullmatch(scope["path"].rsplit("/", 1)[-1])
            if name is not None and not await run_in_threadpool(self._owns, scope, name[1]):
                response = JSONResponse({"detail": "File not found"}, status_code=404)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _owns(self, scope: Scope, conversation_id: str) -> bool:
        owner = self.chat.identity.owner_of(Request(scope))  # type: ignore[union-attr]
        return owner is not None and self.chat.store.owns_conversation(conversation_id, owner)

"""What each may see of the slides: the one shown at start (the sample slide, --slide) to all,
any other only to the owners it was granted to (Store.grant_slide, on upload). The tile routes
ask here for every request, so positive answers are remembered (a grant is never taken back
while the server runs); refusals are asked again.
"""

from __future__ import annotations

import threading
from typing import Any

from web.chat_services import ChatServices

# Remembered (owner, slide id) grants; beyond this many, the memory starts over.
MAX_REMEMBERED = 10_000


class SlideAccess:
    """may_see(request, slide_id): may the asker of this HTTP request see the slide?"""

    def __init__(self, chat: ChatServices) -> None:
        self.chat = chat
        self._granted: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def may_see(self, request: Any, slide_id: str) -> bool:
        owner = self.chat.identity.owner_of(request)  # type: ignore[union-attr]
        if owner is None:
            return False
        if slide_id == self.chat.web.initial_slide_id:
            return True
        key = (owner, slide_id)
        with self._lock:
            if key in self._granted:
                return True
        if not self.chat.store.may_see_slide(slide_id, owner):
            return False
        with self._lock:
            if len(self._granted) >= MAX_REMEMBERED:
                self._granted.clear()
            self._granted.add(key)
        return True

"""Read-only share links (issue 12, "sharing a case"): GET /share/{token} opens one
conversation for whoever holds the link: the slide in a pannable, zoomable viewer, the turns,
and a snapshot of every answer's overlays; a "Present" button shows the slide at full width
and steps through the answers one at a time. Nothing on the page asks the model: the token
is not an owner, so Gradio's events and named API refuse it like any stranger.

The token also opens the shared slide's deep-zoom routes (`?share=TOKEN` on the .dzi URL;
OpenSeadragon carries it to every tile URL), and that slide only (web/access.py). A revoked,
expired or unknown token is one 404 with one sentence (storage.log.NO_SHARE).
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from omnipath.errors import NotFoundError, OmniPathError
from web.chat_services import ChatServices
from web.exports import _report_thumbnail
from web.report import conversation_report
from web.viewer_component import ASSET_PREFIX

log = logging.getLogger(__name__)

# The query parameter that carries a share token to the deep-zoom routes.
SHARE_PARAM = "share"
# How long a new link lasts, as offered in the UI (seconds; None: until revoked).
SHARE_EXPIRIES: dict[str, int | None] = {
    "1 day": 24 * 3600,
    "7 days": 7 * 24 * 3600,
    "Never (until revoked)": None,
}
# The page holds a secret in its URL: not cached, not sent on as a Referer, not indexed.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}

_HEAD = f"""<style>
#share-viewer {{ width: 100%; height: 60vh; background: #111; border-radius: 6px; }}
.share-bar {{ margin: .6em 0; }} .share-bar button {{ font-size: 15px; margin-right: .5em; }}
body.presenting {{ max-width: none; margin: 0 1em; }}
body.presenting #share-viewer {{ height: 72vh; }}
body.presenting header, body.presenting .step-hidden {{ display: none; }}
body.presenting figure {{ display: flex; gap: 1em; align-items: flex-start; }}
body.presenting figure img {{ max-height: 24vh; }}
</style>
<script src="../{ASSET_PREFIX.lstrip("/")}/openseadragon/openseadragon.min.js"></script>"""

# Present mode: each step is one question with its answer and the answer's overlays.
_SCRIPT = """<script>
(function () {
  var config = JSON.parse(document.getElementById("share-config").textContent);
  window.omnipathShare = OpenSeadragon({id: "share-viewer", prefixUrl: config.images,
                                        tileSources: config.dzi, showNavigator: true});
  var steps = [], step = -1;
  document.querySelectorAll(".turn, figure").forEach(function (el) {
    if (el.classList.contains("user") || step < 0) { step += 1; steps.push([]); }
    steps[step].push(el);
  });
  var current = 0, bar = document.getElementById("share-steps");
  function show() {
    steps.forEach(function (els, i) {
      els.forEach(function (el) { el.classList.toggle("step-hidden", i !== current); });
    });
    bar.textContent = steps.length ? "Step " + (current + 1) + " of " + steps.length : "";
  }
  function go(delta) {
    current = Math.max(0, Math.min(steps.length - 1, current + delta)); show();
  }
  document.getElementById("share-present").onclick = function () {
    var on = document.body.classList.toggle("presenting");
    document.getElementById("share-prev").hidden = !on;
    document.getElementById("share-next").hidden = !on;
    this.textContent = on ? "Stop presenting" : "Present";
    if (on) { current = 0; show(); } else {
      document.querySelectorAll(".step-hidden").forEach(function (el) {
        el.classList.remove("step-hidden");
      });
      bar.textContent = "";
    }
  };
  document.getElementById("share-prev").onclick = function () { go(-1); };
  document.getElementById("share-next").onclick = function () { go(1); };
  document.addEventListener("keydown", function (event) {
    if (!document.body.classList.contains("presenting")) return;
    if (event.key === "ArrowRight" || event.key === "PageDown") go(1);
    if (event.key === "ArrowLeft" || event.key === "PageUp") go(-1);
  });
})();
</script>"""


def share_path(token: str) -> str:
    """The page of a link, relative to the app's root (the UI shows it as a link)."""
    return f"share/{token}"


def _viewer(slide_id: str, token: str) -> str:
    config = {
        "dzi": f"../slides/{slide_id}.dzi?{SHARE_PARAM}={token}",
        "images": f"../{ASSET_PREFIX.lstrip('/')}/openseadragon/images/",
    }
    # JSON inside <script>: "</" would end the element early, so it is escaped.
    data = json.dumps(config).replace("</", "<\\/")
    return (
        '<p class="share-bar"><b>Read-only link.</b> '
        '<button id="share-present" type="button">Present</button>'
        '<button id="share-prev" type="button" hidden>◀ Previous</button>'
        '<button id="share-next" type="button" hidden>Next ▶</button>'
        '<span id="share-steps"></span></p>'
        '<div id="share-viewer" role="img" aria-label="The shared slide"></div>'
        f'<script type="application/json" id="share-config">{data}</script>'
    )


def share_page(chat: ChatServices, token: str) -> str:
    """The read-only page of a live link (NotFoundError with one sentence otherwise)."""
    conversation = chat.store.load_shared(token)
    return conversation_report(
        conversation,
        _report_thumbnail(chat, conversation["slide"]),
        model=chat.model_banner(),
        head=_HEAD,
        top=_viewer(conversation["slide"]["id"], token),
    ).replace("</body>", _SCRIPT + "</body>")


def _sentence_page(message: str, status: int) -> HTMLResponse:
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>OmniPath</title>'
        f"</head><body><p>{html.escape(message)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def share_router(chat: ChatServices) -> APIRouter:
    """GET /share/{token}: the read-only page. Include before Gradio is mounted at "/"."""
    router = APIRouter()

    @router.get("/share/{token}", include_in_schema=False)
    async def shared(token: str) -> Any:
        try:
            page = await run_in_threadpool(share_page, chat, token)
        except NotFoundError as exc:
            return _sentence_page(exc.message, 404)
        except OmniPathError as exc:  # the database is down, say
            log.warning("share page failed: %s", exc.message)
            return _sentence_page(exc.message, 503)
        return HTMLResponse(page, headers=_HEADERS)

    return router


def may_see_shared(chat: ChatServices, request: Any, slide_id: str) -> bool:
    """Whether the request carries a live share token of this slide (`?share=TOKEN`)."""
    params = getattr(request, "query_params", None)
    token = params.get(SHARE_PARAM) if params is not None else None
    if not token:
        return False
    try:
        return chat.store.shared_slide_id(token) == slide_id
    except NotFoundError:
        return False

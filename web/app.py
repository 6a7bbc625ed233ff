"""The OmniPath app: a FastAPI server with the deep-zoom routes and viewer assets, and the
Gradio UI (the slide viewer with the chat beside it, web/chat_app.py) mounted at "/".

`build_demo(config)` is the UI; `create_app(config)` the whole server; `python -m web` runs it.
"""

from __future__ import annotations

import logging

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from gradio.route_utils import API_PREFIX
from starlette.requests import Request
from starlette.routing import Mount

from web.access import ExportFileGuard, SlideAccess, keep_expiring_visitors
from web.chat_app import build_chat_demo
from web.chat_services import ChatServices, build_chat_services
from web.config import WebConfig
from web.identity import VisitorCookie, check_exposure
from web.services import WebServices, build_services, register_initial_slide
from web.share import share_router
from web.slide_files import release_unheld
from web.tile_routes import TileCacheFastPath, tile_router
from web.upload_guard import UploadGuard, enable_gradio_upload_check
from web.viewer_component import mount_viewer_assets

# Gradio's pages that need no login and that the app does not need: the API schema and the
# queue's monitoring; served only with --expose-api-docs.
GRADIO_EXTRAS = (
    "/openapi.json",
    f"{API_PREFIX}/openapi.json",
    "/monitoring",
    "/monitoring/{rest:path}",
)
log = logging.getLogger(__name__)


def app_services(
    config: WebConfig, services: ChatServices | WebServices | None = None
) -> ChatServices:
    """Everything the app serves with. `services`: ChatServices as they are (tests inject a
    tiny engine and a temporary log), the viewer's WebServices (the engine and the log are
    built around them), or None (all built from `config`). The slide to show at start
    (--slide or the sample slide, generated on first start) is registered either way, and
    answers left in progress by a crash are marked interrupted (their text kept; Retry
    answers again), and uploaded files nobody holds any more (an operator's purge while the
    server was down) are deleted."""
    if isinstance(services, ChatServices):
        chat = services
    else:
        web = build_services(config) if services is None else services
        chat = build_chat_services(config, web=web)
    register_initial_slide(chat.web, config)
    release_unheld(chat, chat.store.unheld_stored_slides())  # an offline purge's files
    interrupted = chat.store.interrupt_answers_in_progress()
    if interrupted:
        log.warning(
            "%d answer(s) were cut off when the server stopped; marked interrupted", interrupted
        )
    return chat


def build_demo(config: WebConfig, services: ChatServices | WebServices | None = None) -> gr.Blocks:
    """The Gradio UI: the slide viewer, the chat beside it and the model banner."""
    return build_chat_demo(app_services(config, services))


def add_viewer_routes(app: FastAPI, chat: ChatServices) -> None:
    """Everything the viewer needs from the server: the deep-zoom routes (for slides the asker
    may see), the read-only share pages, the tile-cache fast path and the viewer's JavaScript/CSS. Call before Gradio is
    mounted at "/"."""
    may_see = SlideAccess(chat).may_see
    tiles = chat.web.tiles
    app.include_router(tile_router(tiles, may_see))
    app.include_router(share_router(chat))
    app.add_middleware(TileCacheFastPath, service=tiles, may_see=may_see)
    mount_viewer_assets(app)


def hide_gradio_extras(app: FastAPI) -> None:
    """Answer GRADIO_EXTRAS with a 404 before Gradio sees them. Call before Gradio is mounted."""

    async def not_found(request: Request) -> JSONResponse:
        return JSONResponse({"error": "Not found."}, status_code=404)

    for path in GRADIO_EXTRAS:
        app.add_route(path, not_found, methods=["GET", "HEAD"], include_in_schema=False)


def share_oauth_session(app: FastAPI, gradio_app: FastAPI) -> None:
    """Hugging Face sign-in: Gradio attaches its OAuth routes and session middleware to its own
    app (the UI has a gr.LoginButton); the same middleware, with Gradio's key, goes around the
    whole server so the routes outside Gradio (tiles, exports) see the signed-in user too."""
    from starlette.middleware.sessions import SessionMiddleware  # needs itsdangerous

    for middleware in gradio_app.user_middleware:
        if middleware.cls is SessionMiddleware:
            app.add_middleware(middleware.cls, *middleware.args, **middleware.kwargs)


def create_app(config: WebConfig, services: ChatServices | WebServices | None = None) -> FastAPI:
    """The whole server: tile routes and viewer assets first, then the UI mounted at "/"
    (uploads above max_upload_bytes are refused by Gradio before they are stored). Events
    take only files uploaded to this server (web/upload_guard.py). Who is asking
    (web/identity.py): logins with --auth-file, Hugging Face sign-in with --auth hf, a visitor
    cookie with --public-demo; a
    non-loopback address needs one of them (ConfigError otherwise)."""
    check_exposure(config)
    chat = app_services(config, services)
    identity = chat.identity
    app = FastAPI(title="OmniPath", docs_url=None, redoc_url=None, openapi_url=None)
    add_viewer_routes(app, chat)
    if not config.expose_api_docs:
        hide_gradio_extras(app)
    app.add_middleware(UploadGuard, received=chat.received)
    app.add_middleware(ExportFileGuard, chat=chat)
    if identity.mode == "public-demo":  # outermost: every request has its visitor
        max_age_s = config.anonymous_keep_days * 24 * 3600
        app.add_middleware(VisitorCookie, identity=identity, max_age_s=max_age_s)
        app.state.visitor_expiry = keep_expiring_visitors(chat)
    app.state.services = chat.web
    app.state.chat_services = chat
    demo = build_chat_demo(chat)
    app.state.demo = demo
    mounted = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        server_name=config.host,
        server_port=config.port,
        max_file_size=config.max_upload_bytes,
        # Gradio's run history keeps every call's inputs (the questions) in the browser and
        # offers to copy them to a Hugging Face bucket: questions stay in our log only.
        run_history=False,
        auth=identity.check_password if identity.mode == "users" else None,
        auth_message="Sign in to OmniPath (users are added with python -m web.users add NAME).",
    )
    identity.gradio_app = next(
        r.app for r in mounted.routes if isinstance(r, Mount) and hasattr(r.app, "tokens")
    )
    if identity.mode == "hf":
        share_oauth_session(mounted, identity.gradio_app)
    enable_gradio_upload_check(demo)
    return mounted

"""The OmniPath app: a FastAPI server with the deep-zoom routes and viewer assets, and the
Gradio UI (the slide viewer with the chat beside it, web/chat_app.py) mounted at "/".

`build_demo(config)` is the UI; `create_app(config)` the whole server; `python -m web` runs it.
"""

from __future__ import annotations

import logging

import gradio as gr
from fastapi import FastAPI

from web.chat_app import build_chat_demo
from web.chat_services import ChatServices, build_chat_services
from web.config import WebConfig
from web.services import WebServices, build_services, register_initial_slide
from web.tile_routes import TileCacheFastPath, tile_router
from web.viewer_component import mount_viewer_assets

log = logging.getLogger(__name__)


def app_services(
    config: WebConfig, services: ChatServices | WebServices | None = None
) -> ChatServices:
    """Everything the app serves with. `services`: ChatServices as they are (tests inject a
    tiny engine and a temporary log), the viewer's WebServices (the engine and the log are
    built around them), or None (all built from `config`). The slide to show at start
    (--slide or the sample slide, generated on first start) is registered either way, and
    answers left in progress by a crash are marked interrupted (their text kept; Retry
    answers again)."""
    if isinstance(services, ChatServices):
        chat = services
    else:
        web = build_services(config) if services is None else services
        chat = build_chat_services(config, web=web)
    register_initial_slide(chat.web, config)
    interrupted = chat.store.interrupt_answers_in_progress()
    if interrupted:
        log.warning(
            "%d answer(s) were cut off when the server stopped; marked interrupted", interrupted
        )
    return chat


def build_demo(config: WebConfig, services: ChatServices | WebServices | None = None) -> gr.Blocks:
    """The Gradio UI: the slide viewer, the chat beside it and the model banner."""
    return build_chat_demo(app_services(config, services))


def add_viewer_routes(app: FastAPI, services: WebServices) -> None:
    """Everything the viewer needs from the server: the deep-zoom routes, the tile-cache fast
    path and the viewer's JavaScript/CSS. Call before Gradio is mounted at "/"."""
    app.include_router(tile_router(services.tiles))
    app.add_middleware(TileCacheFastPath, service=services.tiles)
    mount_viewer_assets(app)


def create_app(config: WebConfig, services: ChatServices | WebServices | None = None) -> FastAPI:
    """The whole server: tile routes and viewer assets first, then the UI mounted at "/"
    (uploads above max_upload_bytes are refused by Gradio before they are stored)."""
    chat = app_services(config, services)
    app = FastAPI(title="OmniPath", docs_url=None, redoc_url=None, openapi_url=None)
    add_viewer_routes(app, chat.web)
    app.state.services = chat.web
    app.state.chat_services = chat
    return gr.mount_gradio_app(
        app,
        build_chat_demo(chat),
        path="/",
        server_name=config.host,
        server_port=config.port,
        max_file_size=config.max_upload_bytes,
    )

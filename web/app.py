"""The OmniPath app: a FastAPI server with the deep-zoom routes and the Gradio UI mounted on it."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from omnipath.errors import OmniPathError
from web.config import WebConfig
from web.services import WebServices, build_services, open_slide_file, register_initial_slide
from web.tile_routes import TileCacheFastPath, tile_router
from web.viewer_component import build_viewer, mount_viewer_assets, viewer_state

NOT_CONNECTED = (
    "The model is not connected yet: you can open and explore slides; "
    "questions will be answered once the chat lands."
)


def initial_viewer_state(services: WebServices) -> str:
    slide_id = services.initial_slide_id
    if slide_id is None:
        return viewer_state(None)
    return viewer_state(slide_id, services.tiles.meta(slide_id).to_dict())


def build_demo(config: WebConfig, services: WebServices | None = None) -> gr.Blocks:
    """The Gradio UI. `services` defaults to fresh ones; the initial slide (--slide or the
    sample slide) is registered in them if it is not yet."""
    services = build_services(config) if services is None else services
    register_initial_slide(services, config)
    with gr.Blocks(title="OmniPath") as demo:
        gr.Markdown("## OmniPath — whole-slide viewer")
        gr.Markdown(NOT_CONNECTED, elem_id="omnipath-model-status")
        viewer = build_viewer(initial_viewer_state(services))
        upload = gr.File(
            label="Open a slide (OpenSlide formats, PNG, JPEG, TIFF; MIRAX as a .zip)",
            file_count="single",
            type="filepath",
            elem_id="omnipath-open-slide",
        )

        def open_upload(path: str | None, current: str) -> str:
            if path is None:
                return current
            try:
                slide_id, meta = open_slide_file(services, path)
            except OmniPathError as exc:
                gr.Warning(exc.message)
                return current
            return viewer_state(slide_id, meta.to_dict(), layers={})  # old overlays go

        upload.upload(open_upload, inputs=[upload, viewer], outputs=[viewer])
    return demo


def add_viewer_routes(app: FastAPI, services: WebServices) -> None:
    """Everything the viewer needs from the server: the deep-zoom routes, the tile-cache fast
    path and the viewer's JavaScript/CSS. Call before Gradio is mounted at "/"."""
    app.include_router(tile_router(services.tiles))
    app.add_middleware(TileCacheFastPath, service=services.tiles)
    mount_viewer_assets(app)


def create_app(config: WebConfig, services: WebServices | None = None) -> FastAPI:
    """The whole server: tile routes and viewer assets first, then Gradio mounted at "/"."""
    services = build_services(config) if services is None else services
    register_initial_slide(services, config)
    app = FastAPI(title="OmniPath", docs_url=None, redoc_url=None, openapi_url=None)
    add_viewer_routes(app, services)
    app.state.services = services
    demo = build_demo(config, services)
    return gr.mount_gradio_app(
        app, demo, path="/", server_name=config.host, server_port=config.port
    )

"""The server-side parts the web layer shares (built once per app, injected into handlers)."""

from __future__ import annotations

from dataclasses import dataclass

from web.config import WebConfig
from web.slide_registry import SlideRegistry
from web.tile_cache import TileCache
from web.tiles import TileService


@dataclass
class WebServices:
    registry: SlideRegistry
    tiles: TileService
    # The slide shown when a page opens (the sample slide or --slide), or None.
    initial_slide_id: str | None = None


def build_services(config: WebConfig) -> WebServices:
    registry = SlideRegistry(max_open=config.max_open_slides)
    tiles = TileService(
        registry, TileCache(config.tile_cache_bytes), jpeg_quality=config.jpeg_quality
    )
    return WebServices(registry=registry, tiles=tiles)


def register_initial_slide(services: WebServices, config: WebConfig) -> str | None:
    """Register the slide to show at start: --slide when given, else the sample slide
    (generated into the data dir on first start). Returns its id. Idempotent."""
    if services.initial_slide_id is not None:
        return services.initial_slide_id
    if config.slide is not None:
        path = config.slide
    elif config.sample_slide:
        from web.sample import ensure_sample_slide

        path = ensure_sample_slide(
            config.data_dir, config.sample_width, config.sample_height, config.sample_seed
        )
    else:
        return None
    services.initial_slide_id = services.registry.register(path)
    return services.initial_slide_id

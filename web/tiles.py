"""Deep-zoom descriptors and tiles for registered slides, in sRGB, through a byte-bounded cache.

Frames: `dz_level`, `dz_col`, `dz_row` address a deep-zoom tile (level 0 = 1×1 pixel, the last
level = the slide's level 0). Everything is keyed by the opaque slide id; an id, level or
address that does not exist raises NotFoundError (the routes answer 404).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any

from openslide import OpenSlideError
from PIL import Image, ImageCms

from omnipath.errors import DamagedSlideError, NotFoundError, SlideError, echo
from omnipath.facts import is_slide_id
from web.slide_registry import OpenedSlide, SlideRegistry
from web.tile_cache import TileCache

TILE_FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}


@dataclass(frozen=True)
class TileSource:
    """What rendering tiles of one open slide needs, built once per open slide."""

    deepzoom: Any  # openslide.deepzoom.DeepZoomGenerator
    # slide colour → sRGB; None when the slide carries no ICC profile (assumed sRGB then)
    to_srgb: ImageCms.ImageCmsTransform | None


def srgb_transform(icc_profile: bytes | None) -> ImageCms.ImageCmsTransform | None:
    """A transform from the slide's ICC profile to sRGB (perceptual intent), or None."""
    if not icc_profile:
        return None
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
    return ImageCms.buildTransform(
        source,
        ImageCms.createProfile("sRGB"),
        "RGB",
        "RGB",
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
    )


def _tile_source_builder(tile_size: int, overlap: int):
    def build(slide: Any) -> TileSource:
        return TileSource(
            deepzoom=slide.deepzoom(tile_size=tile_size, overlap=overlap),
            to_srgb=srgb_transform(slide.icc_profile),
        )

    return build


# What the viewer needs besides the DZI: level 0's size and physical scale, as SlideInfo
# (omnipath.slide) states them.
VIEWER_META_FIELDS = ("l0_width", "l0_height", "mpp_x", "mpp_y", "objective_power", "vendor")


def viewer_meta(slide_id: str, info: Any) -> dict[str, Any]:
    """{slide_id, l0_width, l0_height, mpp_x, mpp_y, objective_power, vendor} of a SlideInfo."""
    return {"slide_id": slide_id, **{name: getattr(info, name) for name in VIEWER_META_FIELDS}}


class TileService:
    """Renders DZI descriptors and tiles for the slides in `registry`. Thread-safe."""

    def __init__(
        self,
        registry: SlideRegistry,
        cache: TileCache,
        *,
        tile_size: int = 254,
        overlap: int = 1,
        jpeg_quality: int = 80,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.tile_size = tile_size
        self.overlap = overlap
        self.jpeg_quality = jpeg_quality
        self._build_source = _tile_source_builder(tile_size, overlap)
        self._attachment = f"tiles:{tile_size}:{overlap}"
        self._dzi_lock = threading.Lock()
        self._dzi: dict[tuple[str, str], str] = {}

    def _check_id(self, slide_id: str) -> None:
        if not is_slide_id(slide_id) or not self.registry.is_registered(slide_id):
            raise NotFoundError("This slide is not known to the server.")

    def _source(self, opened: OpenedSlide) -> TileSource:
        return opened.attachment(self._attachment, self._build_source)

    def dzi(self, slide_id: str, fmt: str = "jpeg") -> str:
        """The Deep Zoom Image XML descriptor of the slide."""
        self._check_id(slide_id)
        if fmt not in TILE_FORMATS:
            raise NotFoundError(f"Tiles come as jpeg or png, not {echo(fmt)}.")
        with self._dzi_lock:
            cached = self._dzi.get((slide_id, fmt))
        if cached is not None:
            return cached
        with self.registry.lease(slide_id) as opened:
            xml = self._source(opened).deepzoom.get_dzi(fmt)
        with self._dzi_lock:
            self._dzi[(slide_id, fmt)] = xml
        return xml

    def meta(self, slide_id: str) -> dict[str, Any]:
        """viewer_meta() of a registered slide."""
        self._check_id(slide_id)
        with self.registry.lease(slide_id) as opened:
            return viewer_meta(slide_id, opened.slide.info)

    def cached_tile(
        self, slide_id: str, dz_level: int, dz_col: int, dz_row: int, fmt: str
    ) -> bytes | None:
        """The tile's bytes if the cache has them (no rendering, no slide access: quick enough
        for the event loop). Only valid tiles are ever cached, so a hit needs no validation."""
        return self.cache.get(
            (slide_id, self.tile_size, self.overlap, dz_level, dz_col, dz_row, fmt)
        )

    def tile(self, slide_id: str, dz_level: int, dz_col: int, dz_row: int, fmt: str) -> bytes:
        """The encoded tile (JPEG or PNG, sRGB), from the cache or rendered. Blocking."""
        self._check_id(slide_id)
        if fmt not in TILE_FORMATS:
            raise NotFoundError(f"Tiles come as jpeg or png, not {echo(fmt)}.")
        key = (slide_id, self.tile_size, self.overlap, dz_level, dz_col, dz_row, fmt)
        data = self.cache.get(key)
        if data is not None:
            return data
        try:
            with self.registry.lease(slide_id) as opened:
                source = self._source(opened)
                dz = source.deepzoom
                if not 0 <= dz_level < dz.level_count:
                    raise NotFoundError(
                        f"Deep-zoom level {dz_level} does not exist (0..{dz.level_count - 1})."
                    )
                dz_cols, dz_rows = dz.level_tiles[dz_level]
                if not (0 <= dz_col < dz_cols and 0 <= dz_row < dz_rows):
                    raise NotFoundError(
                        f"Tile ({dz_col}, {dz_row}) does not exist at deep-zoom level {dz_level}."
                    )
                image = dz.get_tile(dz_level, (dz_col, dz_row))
                data = self._encode(image, source.to_srgb, fmt)
        except SlideError:
            # The slide layer already reopened its handle (OpenSlide errors are sticky); the
            # other tiles keep working, and nothing is cached for this one.
            raise
        except OpenSlideError as exc:  # not translated by the slide layer: reopen to be safe
            self.registry.forget(slide_id)
            raise DamagedSlideError(
                "Part of this slide could not be decoded; the file may be damaged.",
                detail=f"tile {dz_level}/{dz_col}_{dz_row}: {exc}",
            ) from exc
        self.cache.put(key, data)
        return data

    def _encode(
        self, image: Image.Image, to_srgb: ImageCms.ImageCmsTransform | None, fmt: str
    ) -> bytes:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if to_srgb is not None:
            image = ImageCms.applyTransform(image, to_srgb)
        image.info.pop("icc_profile", None)  # pixels are sRGB now; browsers assume sRGB
        buffer = io.BytesIO()
        if fmt == "jpeg":
            image.save(buffer, "JPEG", quality=self.jpeg_quality)
        else:
            image.save(buffer, "PNG", compress_level=1)
        return buffer.getvalue()

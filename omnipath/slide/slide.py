"""Open any slide or plain image, read it safely from many threads, fail with typed errors.

Frames: every rectangle here is in level-0 pixels (`l0_`); see omnipath.coords.

Failure policy (each raises an omnipath.errors.SlideError subclass with a sentence for a
person; technical context goes to `detail`, and file names never go into messages because
they can identify patients):
- 0-byte file -> EmptySlideError; no pixels -> EmptySlideError
- not a format we read (decided from content) -> UnsupportedSlideError
- data past the end of the file -> TruncatedSlideError
- a tile that does not decode -> DamagedSlideError (OpenSlide's errors are sticky, so the
  handle is replaced by a fresh one and later reads work again)
- a read that would need more memory than SlideLimits allows -> SlideTooLargeError,
  decided from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from omnipath.coords import L0Rect
from omnipath.errors import (
    DamagedSlideError,
    EmptySlideError,
    SlideError,
    SlideTooLargeError,
    TruncatedSlideError,
    UnsupportedSlideError,
)
from omnipath.slide.limits import SlideLimits
from omnipath.slide.mirax import extract_mirax_zip
from omnipath.slide.sniff import container_of, read_magic, tiff_is_truncated
from omnipath.slide.tissue import tissue_fraction

PILLOW_FORMATS = ("PNG", "JPEG", "TIFF")
MAX_PLAUSIBLE_MPP = 100.0  # µm/px; a 72-dpi TIFF claims 352 (a print size, not a microscope)
THUMBNAIL_CACHE_SIZE = 4
TILE_CACHE_BYTES = 64 * 1024 * 1024  # decoded tiles, shared by a slide's handles
UNSUPPORTED_MESSAGE = (
    "This file is not a slide or image that OmniPath can read. It reads the whole-slide "
    "formats OpenSlide supports (Aperio, Hamamatsu, Leica, MIRAX as a .zip, Philips, "
    "Sakura, Ventana, DICOM, tiled TIFF) and PNG, JPEG and TIFF images."
)
TRUNCATED_MESSAGE = (
    "The file ends before its image data does: the upload or copy was probably "
    "interrupted. Please upload it again."
)


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is. Sizes in level-0 pixels; mpp in µm per level-0 pixel."""

    vendor: str  # OpenSlide's vendor ("aperio", "generic-tiff", "dicom", "mirax", ...) or "image"
    l0_width: int
    l0_height: int
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    has_icc: bool
    image_format: str | None = None  # Pillow's format name for plain images ("PNG", ...)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["level_dimensions"] = [list(d) for d in self.level_dimensions]
        data["level_downsamples"] = list(self.level_downsamples)
        return data


def _positive_float(value: str | None, upper: float | None = None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    if number is None or not math.isfinite(number) or number <= 0:
        return None
    if upper is not None and number > upper:
        return None
    return number


def _readable_properties(osr: openslide.AbstractSlide) -> dict[str, str]:
    """The slide's properties, skipping any whose value OpenSlide cannot return (damaged
    metadata must not stop a slide from opening)."""
    readable: dict[str, str] = {}
    try:
        names = list(osr.properties)
    except (openslide.OpenSlideError, KeyError, UnicodeDecodeError):
        return readable
    for name in names:
        try:
            readable[name] = osr.properties[name]
        except (openslide.OpenSlideError, KeyError, UnicodeDecodeError):
            continue
    return readable


def _valid_icc(profile: bytes | None) -> bytes | None:
    """The ICC profile if littleCMS can parse it, else None (a broken profile is ignored
    rather than making every colour conversion downstream fail)."""
    if not profile:
        return None
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError):
        return None
    return bytes(profile)


def _objective_power(properties: Mapping[str, str]) -> float | None:
    power = _positive_float(properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    if power is not None:
        return power
    # Our synthetic slides (generic TIFF) carry it in a JSON ImageDescription.
    description = properties.get("tiff.ImageDescription", "")
    if description.startswith("{") and "omnipath_synthetic" in description:
        try:
            meta = json.loads(description)["omnipath_synthetic"]
            return _positive_float(str(meta.get("objective_power")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
    return None


class _GuardedSlide(openslide.AbstractSlide):
    """The AbstractSlide face of a Slide for DeepZoomGenerator: reads go through the
    Slide's error handling (DamagedSlideError, handle reopened) instead of a raw handle
    that would stay broken after one bad tile."""

    def __init__(self, slide: Slide) -> None:
        super().__init__()
        self._slide = slide

    @classmethod
    def detect_format(cls, filename: object) -> str | None:
        return None

    def close(self) -> None:  # the Slide owns the handle
        return None

    @property
    def level_count(self) -> int:
        return self._slide.info.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._slide.info.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._slide.info.level_downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return self._slide._properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return self._slide.best_level_for_downsample(downsample)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        return self._slide._read_region(location, level, size)


class Slide:
    """An open slide. Thread-safe for reads; a context manager; close() when done.

    Do not construct directly: use open_slide()."""

    def __init__(
        self,
        path: Path,
        opener: Callable[[], openslide.AbstractSlide],
        info: SlideInfo,
        *,
        icc_profile: bytes | None,
        associated_images: dict[str, Image.Image],
        limits: SlideLimits,
        serialize_reads: bool,
        handle: openslide.AbstractSlide | None = None,
    ) -> None:
        self.path = path
        self.info = info
        self.icc_profile = icc_profile
        self.associated_images = associated_images
        self.limits = limits
        self._opener = opener
        # A pool of handles, each used by one read at a time. OpenSlide's errors are sticky
        # (after one failed read every later call on that handle fails), so a handle whose
        # read failed is closed and never returned to the pool: a damaged tile read by one
        # thread cannot break the reads of the others. The handles share one tile cache.
        self._tile_cache = openslide.OpenSlideCache(TILE_CACHE_BYTES)
        first = handle if handle is not None else opener()
        first.set_cache(self._tile_cache)
        self._properties: Mapping[str, str] = _readable_properties(first)
        self._idle: list[openslide.AbstractSlide] = [first]
        self._closed = False
        self._state = threading.Condition()
        self._reads_in_flight = 0
        # openslide's C library is thread-safe; Pillow images behind ImageSlide are not
        # documented to be, so those reads take turns.
        self._read_lock = threading.Lock() if serialize_reads else None
        self._thumbnails: OrderedDict[int, Image.Image] = OrderedDict()

    # --- plumbing ---------------------------------------------------------------------

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide(vendor={self.info.vendor!r}, l0={self.l0_width}x{self.l0_height}, "
            f"levels={self.info.level_count})"
        )

    @property
    def l0_width(self) -> int:
        return self.info.l0_width

    @property
    def l0_height(self) -> int:
        return self.info.l0_height

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the slide after the reads in flight finish. Idempotent."""
        with self._state:
            while self._reads_in_flight:
                self._state.wait()
            self._closed = True
            handles, self._idle = self._idle, []
        for handle in handles:
            handle.close()

    def _checkout(self) -> openslide.AbstractSlide:
        with self._state:
            if self._closed:
                raise SlideError("This slide has been closed; open it again to read it.")
            self._reads_in_flight += 1
            if self._idle:
                return self._idle.pop()
        try:
            fresh = self._opener()
        except (openslide.OpenSlideError, OSError) as error:
            self._checkin(None)
            raise DamagedSlideError(
                "The slide file can no longer be opened (was it changed or removed?).",
                detail=str(error),
            ) from error
        fresh.set_cache(self._tile_cache)
        return fresh

    def _checkin(self, handle: openslide.AbstractSlide | None) -> None:
        """Return a healthy handle to the pool (None: the read's handle was discarded)."""
        with self._state:
            if handle is not None:
                self._idle.append(handle)
            self._reads_in_flight -= 1
            if not self._reads_in_flight:
                self._state.notify_all()

    def _read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """openslide's read_region (RGBA, transparent outside the slide) with the error
        policy applied."""
        handle = self._checkout()
        healthy: openslide.AbstractSlide | None = handle
        try:
            if self._read_lock is not None:
                with self._read_lock:
                    return handle.read_region(location, level, size)
            return handle.read_region(location, level, size)
        except openslide.OpenSlideError as error:
            healthy = None
            handle.close()  # sticky: useless now, and no other read holds it
            raise DamagedSlideError(
                "Part of this slide cannot be decoded: the file has a damaged tile. Other "
                "regions may still display.",
                detail=f"read_region({location}, level {level}, {size}): {error}",
            ) from error
        finally:
            self._checkin(healthy)

    # --- public reads -----------------------------------------------------------------

    def best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample ≤ `downsample` (level 0 at worst)."""
        best = 0
        for level, level_downsample in enumerate(self.info.level_downsamples):
            if level_downsample <= downsample * (1 + 1e-6):
                best = level
        return best

    def _check_read_size(self, level_w: int, level_h: int, *, detail: str) -> None:
        """SlideTooLargeError when one read of level_w × level_h pixels exceeds the limits."""
        if level_w * level_h > self.limits.max_read_pixels:
            raise SlideTooLargeError(
                f"Reading this region needs {level_w}×{level_h} pixels at once, more than the "
                f"{self.limits.max_read_pixels / 1e6:.0f} million this server allows; ask for "
                "a smaller region or a smaller output.",
                detail=detail,
            )

    def _read_rgb(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """RGB read of one level (`location` in level-0 pixels); outside the slide is white."""
        region = self._read_region(location, level, size)
        piece = Image.new("RGB", region.size, (255, 255, 255))
        piece.paste(region, mask=region.getchannel("A"))
        return piece

    def read_l0_region(self, rect: L0Rect, out_size: tuple[int, int]) -> Image.Image:
        """RGB image of level-0 rectangle `rect`, resized to out_size = (width, height).

        Reads from the best level (largest downsample ≤ rect size / out size); area outside
        the slide is white. SlideTooLargeError if that read exceeds limits.max_read_pixels."""
        out_w, out_h = out_size
        if rect.w <= 0 or rect.h <= 0 or out_w <= 0 or out_h <= 0:
            raise ValueError(f"empty region {rect} or output size {out_size}")
        if out_w * out_h > self.limits.max_read_pixels:
            raise SlideTooLargeError(
                f"An output of {out_w}×{out_h} pixels is more than the "
                f"{self.limits.max_read_pixels / 1e6:.0f} million this server allows; ask "
                "for a smaller output.",
                detail=f"rect={rect} out={out_size}",
            )
        canvas = Image.new("RGB", (out_w, out_h), (255, 255, 255))
        inside = rect.clip(self.l0_width, self.l0_height)
        if inside.w == 0 or inside.h == 0:
            return canvas
        scale_x, scale_y = out_w / rect.w, out_h / rect.h
        level = self.best_level_for_downsample(min(rect.w / out_w, rect.h / out_h))
        level_downsample = self.info.level_downsamples[level]
        level_w = max(1, math.ceil(inside.w / level_downsample))
        level_h = max(1, math.ceil(inside.h / level_downsample))
        self._check_read_size(level_w, level_h, detail=f"rect={rect} out={out_size} level={level}")
        piece = self._read_rgb((inside.x, inside.y), level, (level_w, level_h))
        if inside == rect:
            return piece.resize((out_w, out_h), Image.Resampling.BILINEAR)
        left = round((inside.x - rect.x) * scale_x)
        top = round((inside.y - rect.y) * scale_y)
        right = round((inside.x1 - rect.x) * scale_x)
        bottom = round((inside.y1 - rect.y) * scale_y)
        if right > left and bottom > top:
            canvas.paste(
                piece.resize((right - left, bottom - top), Image.Resampling.BILINEAR),
                (left, top),
            )
        return canvas

    def thumbnail(self, max_side: int) -> Image.Image:
        """RGB image of the whole slide, aspect kept, longest side max_side (never
        enlarged beyond level 0). Cached per max_side; returns a copy."""
        if max_side <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        with self._state:
            cached = self._thumbnails.get(max_side)
            if cached is not None:
                self._thumbnails.move_to_end(max_side)
                return cached.copy()
        downsample = max(1.0, max(self.l0_width, self.l0_height) / max_side)
        out_size = (
            max(1, round(self.l0_width / downsample)),
            max(1, round(self.l0_height / downsample)),
        )
        image = self.read_l0_region(L0Rect(0, 0, self.l0_width, self.l0_height), out_size)
        with self._state:
            self._thumbnails[max_side] = image
            while len(self._thumbnails) > THUMBNAIL_CACHE_SIZE:
                self._thumbnails.popitem(last=False)
        return image.copy()

    def overview(self, max_side: int) -> Image.Image:
        """RGB image of the whole slide read from its smallest pyramid level (the cheapest
        whole view, a few tiles: an upload's check that the pixels decode), shrunk with
        its aspect kept when that level is longer than max_side, never enlarged. Its size
        follows that level's own size; thumbnail() gives exact sizes (and is cached)."""
        if max_side <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        dims = self.info.level_dimensions
        level = min(range(len(dims)), key=lambda i: dims[i][0] * dims[i][1])
        self._check_read_size(*dims[level], detail=f"overview of level {level}")
        image = self._read_rgb((0, 0), level, dims[level])
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return image

    def tissue_mask(self, grid_rows: int, grid_cols: int) -> np.ndarray:
        """float32 grid_rows×grid_cols: tissue fraction of each cell of a grid over the
        slide's own extent (level-0 width split in grid_cols, height in grid_rows)."""
        if grid_rows <= 0 or grid_cols <= 0:
            raise ValueError(f"grid must be positive, got {grid_rows}x{grid_cols}")
        # ~8×8 pixels per cell, at most ~16 Mpx in all.
        per_cell = max(1, min(8, int(math.sqrt(16e6 / (grid_rows * grid_cols)))))
        image = self.read_l0_region(
            L0Rect(0, 0, self.l0_width, self.l0_height),
            (grid_cols * per_cell, grid_rows * per_cell),
        )
        return tissue_fraction(image, (grid_rows, grid_cols))

    def deepzoom(self, tile_size: int = 254, overlap: int = 1) -> DeepZoomGenerator:
        """A DeepZoomGenerator over this slide (plain images included). Its get_tile raises
        DamagedSlideError for a damaged tile, and the next tiles still work."""
        return DeepZoomGenerator(_GuardedSlide(self), tile_size, overlap, limit_bounds=False)


# --- opening ------------------------------------------------------------------------------


def open_slide(
    path: str | os.PathLike[str],
    *,
    limits: SlideLimits = SlideLimits(),  # noqa: B008 - frozen dataclass, never mutated
    expose_associated: bool = False,
) -> Slide:
    """Open a slide or an image; the format comes from the content, never the name.

    Order: a zip (MIRAX: one .mrxs with its folder, extracted safely next to the zip);
    OpenSlide's detection; Pillow limited to PNG, JPEG and TIFF. Label and macro images
    (which can show patient names) are only read when expose_associated is True.
    Raises only SlideError subclasses."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise SlideError("The slide file cannot be found or read.", detail=str(error)) from error
    if not path.is_file():
        raise UnsupportedSlideError(UNSUPPORTED_MESSAGE, detail="not a regular file")
    if stat.st_size == 0:
        raise EmptySlideError(
            "The file is empty (0 bytes): the upload or copy probably failed. Please upload "
            "it again."
        )
    try:
        container = container_of(read_magic(path))
    except OSError as error:
        raise SlideError("The slide file cannot be read.", detail=str(error)) from error
    if container == "zip":
        mrxs = extract_mirax_zip(path, limits)
        if _detect_openslide(mrxs) != "mirax":
            raise UnsupportedSlideError(
                "The zip archive holds a .mrxs file, but it is not a MIRAX slide OpenSlide "
                "can read (is its data folder complete?)."
            )
        return _open_with_openslide(mrxs, None, limits, expose_associated)
    vendor = _detect_openslide(path)
    if vendor is not None:
        return _open_with_openslide(path, container, limits, expose_associated)
    return _open_with_pillow(path, container, limits)


def _detect_openslide(path: Path) -> str | None:
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None


def _raise_too_large_single_level(width: int, height: int, limits: SlideLimits) -> None:
    gigabytes = width * height * 4 / 1e9
    raise SlideTooLargeError(
        f"This slide is {width}×{height} pixels with no smaller pyramid level; even a "
        f"thumbnail would need about {gigabytes:.0f} GB of memory, more than this server "
        f"allows ({limits.max_read_pixels / 1e6:.0f} million pixels per read). Save it as a "
        "pyramidal (tiled, multi-resolution) TIFF and upload it again."
    )


def _open_with_openslide(
    path: Path, container: str | None, limits: SlideLimits, expose_associated: bool
) -> Slide:
    def opener() -> openslide.AbstractSlide:
        return openslide.OpenSlide(str(path))

    try:
        osr = opener()
    except openslide.OpenSlideUnsupportedFormatError as error:
        raise UnsupportedSlideError(UNSUPPORTED_MESSAGE, detail=str(error)) from error
    except openslide.OpenSlideError as error:
        if container == "tiff" and tiff_is_truncated(path):
            raise TruncatedSlideError(TRUNCATED_MESSAGE, detail=str(error)) from error
        raise DamagedSlideError(
            "The slide file is damaged: its structure cannot be read.", detail=str(error)
        ) from error
    handed_over = False
    try:
        dims = tuple(tuple(int(v) for v in d) for d in osr.level_dimensions)
        l0_width, l0_height = dims[0]
        if l0_width <= 0 or l0_height <= 0:
            raise EmptySlideError("The slide has no pixels (its size is 0).")
        smallest_w, smallest_h = min(dims, key=lambda d: d[0] * d[1])
        if smallest_w * smallest_h > limits.max_read_pixels:
            _raise_too_large_single_level(smallest_w, smallest_h, limits)
        if container == "tiff" and tiff_is_truncated(path):
            raise TruncatedSlideError(TRUNCATED_MESSAGE)
        # One small read proves the pixel data decodes at all.
        last = len(dims) - 1
        probe = (min(512, dims[last][0]), min(512, dims[last][1]))
        try:
            osr.read_region((0, 0), last, probe)
        except openslide.OpenSlideError as error:
            raise DamagedSlideError(
                "The slide file is damaged: its image data cannot be decoded.",
                detail=str(error),
            ) from error
        properties = _readable_properties(osr)
        try:
            profile = osr.color_profile
            icc = profile.tobytes() if profile is not None else None
        except (OSError, ImageCms.PyCMSError, openslide.OpenSlideError):
            icc = None  # a broken profile is ignored, not fatal
        associated: dict[str, Image.Image] = {}
        handle_is_clean = True
        if expose_associated:
            for name in list(osr.associated_images):
                try:
                    associated[name] = osr.associated_images[name].convert("RGB")
                except openslide.OpenSlideError:
                    handle_is_clean = False  # sticky: the Slide must open a fresh handle
                    continue
        info = SlideInfo(
            vendor=properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
            l0_width=l0_width,
            l0_height=l0_height,
            level_count=len(dims),
            level_dimensions=dims,
            level_downsamples=tuple(float(d) for d in osr.level_downsamples),
            mpp_x=_positive_float(properties.get(openslide.PROPERTY_NAME_MPP_X), MAX_PLAUSIBLE_MPP),
            mpp_y=_positive_float(properties.get(openslide.PROPERTY_NAME_MPP_Y), MAX_PLAUSIBLE_MPP),
            objective_power=_objective_power(properties),
            has_icc=icc is not None,
        )
        try:
            slide = Slide(
                path,
                opener,
                info,
                icc_profile=icc,
                associated_images=associated,
                limits=limits,
                serialize_reads=False,
                handle=osr if handle_is_clean else None,
            )
        except openslide.OpenSlideError as error:
            raise DamagedSlideError(
                "The slide file is damaged: it could not be opened a second time.",
                detail=str(error),
            ) from error
        handed_over = handle_is_clean
        return slide
    finally:
        if not handed_over:
            osr.close()


def _bomb_message(error: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)) / 1e6:,.0f} million pixels" if found else "too many pixels"
    return (
        f"This image claims {size}, too many to open safely (it may be a decompression "
        "bomb). Large slides must be pyramidal (tiled, multi-resolution) files."
    )


def _says_truncated(error: BaseException) -> bool:
    """Pillow reports missing bytes as EOFError or in words ("image file is truncated",
    "Truncated File Read")."""
    text = str(error).lower()
    return isinstance(error, EOFError) or "truncat" in text or "end of file" in text


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited on white; 16-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size else 1.0
        scaled = np.clip(values * (255.0 / top if top > 0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")


def _open_with_pillow(path: Path, container: str | None, limits: SlideLimits) -> Slide:
    try:
        image = Image.open(path, formats=PILLOW_FORMATS)
    except Image.DecompressionBombError as error:
        raise SlideTooLargeError(_bomb_message(error), detail=str(error)) from error
    except UnidentifiedImageError as error:
        if container == "tiff" and tiff_is_truncated(path):
            raise TruncatedSlideError(TRUNCATED_MESSAGE, detail=str(error)) from error
        if container in ("png", "jpeg", "tiff"):
            raise DamagedSlideError(
                f"The file looks like a {container.upper()} image but its header cannot be "
                "read: it is damaged or incomplete.",
                detail=str(error),
            ) from error
        raise UnsupportedSlideError(UNSUPPORTED_MESSAGE, detail=str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if _says_truncated(error):
            raise TruncatedSlideError(TRUNCATED_MESSAGE, detail=str(error)) from error
        raise DamagedSlideError(
            "The image file is damaged: its header cannot be read.", detail=str(error)
        ) from error
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise EmptySlideError("The image has no pixels (its size is 0).")
        if width * height > limits.max_image_pixels:
            raise SlideTooLargeError(
                f"This image is {width}×{height} pixels; plain images are decoded whole, and "
                f"this server allows at most {limits.max_image_pixels / 1e6:.0f} million "
                "pixels. Save it as a pyramidal (tiled, multi-resolution) TIFF instead."
            )
        # Size first (from the header alone), then completeness: a TIFF whose later pages
        # or tiles lie past the end must not pass because its first page happens to load.
        if container == "tiff" and tiff_is_truncated(path):
            raise TruncatedSlideError(TRUNCATED_MESSAGE)
        image_format = image.format
        icc = _valid_icc(image.info.get("icc_profile"))
        try:
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
        except Image.DecompressionBombError as error:
            raise SlideTooLargeError(
                "This image has too many pixels to open safely.", detail=str(error)
            ) from error
        except (OSError, EOFError, SyntaxError, ValueError) as error:
            if _says_truncated(error):
                raise TruncatedSlideError(TRUNCATED_MESSAGE, detail=str(error)) from error
            raise DamagedSlideError(
                "The image file is damaged: its pixels cannot be decoded.", detail=str(error)
            ) from error
    rgb.info.pop("icc_profile", None)
    if icc:
        rgb.info["icc_profile"] = icc
    info = SlideInfo(
        vendor="image",
        l0_width=rgb.width,
        l0_height=rgb.height,
        level_count=1,
        level_dimensions=((rgb.width, rgb.height),),
        level_downsamples=(1.0,),
        mpp_x=None,
        mpp_y=None,
        objective_power=None,
        has_icc=bool(icc),
        image_format=image_format,
    )
    return Slide(
        path,
        lambda: openslide.ImageSlide(rgb),
        info,
        icc_profile=icc or None,
        associated_images={},
        limits=limits,
        serialize_reads=True,
    )

"""Write a synthetic H&E whole-slide image as a pyramidal tiled TIFF, tile by tile.

Layout of the file (what OpenSlide's generic-tiff driver needs): one page per pyramid
level, level 0 first, the others with NewSubfileType = 1 (reduced resolution); RGB
(photometric RGB, not YCbCr) JPEG or deflate tiles; X/YResolution in pixels per centimetre
so OpenSlide reports openslide.mpp-x/y. The level-0 ImageDescription is a small JSON object
with the seed, mpp and objective power.

Speed: a tile is a crop of its class's periodic texture at (x mod P, y mod P) (boundary
tiles compose several classes by label), recoloured by a stain-gain lookup table and
encoded; glass tiles repeat exactly and are encoded once. Nothing larger than the
textures is held in memory, and tiles are rendered a few rows ahead on a thread pool.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from omnipath.coords import L0Rect
from omnipath.synth.layout import FIRST_LESION_LABEL, Layout
from omnipath.synth.texture import (
    halve,
    periodic_noise,
    render_background,
    render_lesion,
    render_stroma,
)

MASK_MAX_SIDE = 2048
BACKGROUND_TEXTURE = 0
MOTTLE_AMPLITUDE = 0.12  # relative stain gain of the mid-scale mottle
GAIN_MIN, GAIN_MAX, GAIN_STEPS = 0.5, 1.5, 201  # quantized optical-density gains
# ln(I / 255) for every 8-bit intensity (0 taken as 0.5 so the log stays finite).
_LOG_INTENSITY = np.log(np.maximum(np.arange(256, dtype=np.float32), 0.5) / 255.0)
# _GAIN_TABLE[step * 256 + I] = 255·(I/255)^gain(step): the stained intensity.
_GAIN_TABLE = (
    (
        np.exp(
            np.linspace(GAIN_MIN, GAIN_MAX, GAIN_STEPS, dtype=np.float32)[:, None] * _LOG_INTENSITY
        )
        * 255.0
        + 0.5
    )
    .astype(np.uint8)
    .ravel()
)
COMPRESSIONS = ("jpeg", "deflate")


@dataclass(frozen=True)
class Lesion:
    """Ground truth for one lesion: its level-0 bounding rectangle, grade (1..3) and kind
    ("carcinoma" or "inflammation"); `mask_value` is its value in the label-map PNG."""

    l0_rect: L0Rect
    grade: int
    kind: str
    mask_value: int = 0


@dataclass
class SyntheticSlide:
    """A written synthetic slide and where its ground truth lies.

    masks_path: PNG label map (mode L) at 1/`mask_downsample` of level 0: 0 = glass,
    1 = normal tissue, lesion.mask_value = that lesion. labels_path: JSON with the same
    facts as this object."""

    path: Path
    width: int
    height: int
    mpp: float
    lesions: list[Lesion]
    masks_path: Path
    labels_path: Path
    objective_power: float = 40.0
    mask_downsample: int = 1
    seed: int = 0
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "slide": self.path.name,
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "objective_power": self.objective_power,
            "seed": self.seed,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "mask": {
                "path": self.masks_path.name,
                "downsample": self.mask_downsample,
                "values": {"0": "background", "1": "tissue"}
                | {str(les.mask_value): f"lesion {i}" for i, les in enumerate(self.lesions)},
            },
            "lesions": [
                {
                    "id": i,
                    "kind": les.kind,
                    "grade": les.grade,
                    "l0_rect": [les.l0_rect.x, les.l0_rect.y, les.l0_rect.w, les.l0_rect.h],
                    "mask_value": les.mask_value,
                }
                for i, les in enumerate(self.lesions)
            ],
        }


def labels_path_for(slide_path: str | os.PathLike[str]) -> Path:
    slide_path = Path(slide_path)
    return slide_path.with_name(slide_path.stem + ".labels.json")


def masks_path_for(slide_path: str | os.PathLike[str]) -> Path:
    slide_path = Path(slide_path)
    return slide_path.with_name(slide_path.stem + ".mask.png")


def read_synthetic_labels(slide_path: str | os.PathLike[str]) -> SyntheticSlide:
    """Load the ground truth written beside a synthetic slide."""
    slide_path = Path(slide_path)
    data = json.loads(labels_path_for(slide_path).read_text())
    lesions = [
        Lesion(L0Rect(*item["l0_rect"]), item["grade"], item["kind"], item["mask_value"])
        for item in data["lesions"]
    ]
    return SyntheticSlide(
        path=slide_path,
        width=data["width"],
        height=data["height"],
        mpp=data["mpp"],
        lesions=lesions,
        masks_path=slide_path.with_name(data["mask"]["path"]),
        labels_path=labels_path_for(slide_path),
        objective_power=data["objective_power"],
        mask_downsample=data["mask"]["downsample"],
        seed=data["seed"],
        level_dimensions=[tuple(d) for d in data["level_dimensions"]],
    )


def _pad_periodic(texture: np.ndarray, extra: int) -> np.ndarray:
    """Repeat a periodic texture so that any crop [y:y+extra, x:x+extra] with 0 ≤ x, y < P
    is a plain slice."""
    period = texture.shape[0]
    reps = math.ceil((period + extra) / period)
    tiled = np.tile(texture, (reps, reps) + (1,) * (texture.ndim - 2))
    return np.ascontiguousarray(tiled[: period + extra, : period + extra])


class _LevelTextures:
    """The class textures, the edge jitter and the stain mottle at one pyramid level,
    padded for slicing. The mottle has its own period (1.5× the textures'), so the
    product repeats only every 3 texture periods."""

    def __init__(
        self,
        textures: list[np.ndarray],
        jitter: np.ndarray,
        mottle: np.ndarray | None,
        tile_size: int,
    ) -> None:
        self.period = textures[0].shape[0]
        self.raw_textures = textures
        self.raw_jitter = jitter
        self.raw_mottle = mottle
        self.textures = [_pad_periodic(t, tile_size) for t in textures]
        self.jitter = _pad_periodic(jitter, tile_size)
        self.mottle_period = mottle.shape[0] if mottle is not None else 0
        self.mottle = _pad_periodic(mottle, tile_size) if mottle is not None else None

    def halved(self, tile_size: int) -> _LevelTextures:
        mottle = self.raw_mottle
        if mottle is not None:
            # Finer than a pixel once it cannot be halved any more: it averages out.
            mottle = halve(mottle) if mottle.shape[0] % 2 == 0 and mottle.shape[0] >= 4 else None
        if self.period < 4:
            return _LevelTextures(self.raw_textures, self.raw_jitter, mottle, tile_size)
        return _LevelTextures(
            [halve(t) for t in self.raw_textures], halve(self.raw_jitter), mottle, tile_size
        )


def _pyramid_dimensions(width: int, height: int, tile_size: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) > tile_size:
        level = len(dims)
        dims.append((math.ceil(width / 2**level), math.ceil(height / 2**level)))
    return dims


class _TileRenderer:
    def __init__(
        self,
        layout: Layout,
        label_texture: np.ndarray,
        compression: str,
        quality: int,
        tile_size: int,
    ) -> None:
        self.layout = layout
        self.label_texture = label_texture  # label -> texture index
        self.compression = compression
        self.quality = quality
        self.tile_size = tile_size
        self.cache: dict[tuple[int, int, int], bytes] = {}

    def stained(
        self, tile: np.ndarray, level: int, level_tex: _LevelTextures, x0: int, y0: int
    ) -> np.ndarray:
        """Apply the slide's stain variation: I' = 255·(I/255)^gain per channel, i.e. the
        optical density scaled by a gain field: a smooth slide-wide part (layout, in level-0
        coordinates) times a periodic mottle of its own period (breaks up the textures'
        repetition). Gains are quantized so one table lookup replaces an exp per pixel."""
        downsample = 2**level
        ts = self.tile_size
        gains = self.layout.stain_gains(x0 * downsample, y0 * downsample, downsample, ts, ts)
        if gains is None:
            return tile
        if level_tex.mottle is not None:
            mx, my = x0 % level_tex.mottle_period, y0 % level_tex.mottle_period
            gains = (
                gains
                * (1.0 + MOTTLE_AMPLITUDE * level_tex.mottle[my : my + ts, mx : mx + ts])[..., None]
            )
        steps = np.clip(
            np.rint((gains - GAIN_MIN) * ((GAIN_STEPS - 1) / (GAIN_MAX - GAIN_MIN))),
            0,
            GAIN_STEPS - 1,
        ).astype(np.int32)
        return _GAIN_TABLE[steps * 256 + tile]

    def encode(self, tile: np.ndarray) -> bytes:
        if self.compression == "jpeg":
            return imagecodecs.jpeg_encode(
                tile, level=self.quality, colorspace="RGB", outcolorspace="RGB"
            )
        return imagecodecs.deflate_encode(np.ascontiguousarray(tile).tobytes(), level=6)

    def render(self, level: int, level_tex: _LevelTextures, tile_col: int, tile_row: int) -> bytes:
        ts = self.tile_size
        downsample = 2**level
        period = level_tex.period
        x0, y0 = tile_col * ts, tile_row * ts
        wrap_x, wrap_y = x0 % period, y0 % period
        jitter = level_tex.jitter[wrap_y : wrap_y + ts, wrap_x : wrap_x + ts]
        coarse_step = 8
        coarse = self.layout.labels(
            x0 * downsample,
            y0 * downsample,
            coarse_step * downsample,
            ts // coarse_step,
            ts // coarse_step,
            jitter[::coarse_step, ::coarse_step],
        )
        first = int(coarse.flat[0])
        if (coarse == first).all():
            texture_index = int(self.label_texture[first])
            crop = level_tex.textures[texture_index][wrap_y : wrap_y + ts, wrap_x : wrap_x + ts]
            if texture_index != BACKGROUND_TEXTURE:
                return self.encode(self.stained(crop, level, level_tex, x0, y0))
            # Glass barely absorbs, so stain variation cannot show on it: its tiles repeat
            # exactly and are encoded once.
            key = (level, wrap_x, wrap_y)
            encoded = self.cache.get(key)
            if encoded is None:
                encoded = self.encode(crop)
                self.cache[key] = encoded
            return encoded
        labels = self.layout.labels(x0 * downsample, y0 * downsample, downsample, ts, ts, jitter)
        tile = np.empty((ts, ts, 3), dtype=np.uint8)
        for label in np.flatnonzero(np.bincount(labels.ravel())):
            texture = level_tex.textures[int(self.label_texture[label])]
            where = labels == label
            tile[where] = texture[wrap_y : wrap_y + ts, wrap_x : wrap_x + ts][where]
        return self.encode(self.stained(tile, level, level_tex, x0, y0))


def _tiles_in_order(
    renderer: _TileRenderer,
    level: int,
    level_tex: _LevelTextures,
    cols: int,
    rows: int,
    pool: ThreadPoolExecutor | None,
) -> Iterator[bytes]:
    """Encoded tiles of one level in TIFF order (row-major), rendered a few rows ahead on
    the pool so memory stays bounded."""

    def render_row(row: int) -> list[bytes]:
        return [renderer.render(level, level_tex, col, row) for col in range(cols)]

    if pool is None:
        for row in range(rows):
            yield from render_row(row)
        return
    ahead = 8
    pending: dict[int, Future[list[bytes]]] = {}
    for row in range(rows):
        for future_row in range(row, min(rows, row + ahead)):
            if future_row not in pending:
                pending[future_row] = pool.submit(render_row, future_row)
        yield from pending.pop(row).result()


def write_synthetic_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    seed: int = 0,
    tile_size: int = 256,
    compression: str = "jpeg",
    n_lesions: int = 3,
    mpp: float = 0.25,
    quality: int = 85,
    workers: int | None = None,
) -> SyntheticSlide:
    """Write a synthetic H&E slide to `path` (pyramidal tiled TIFF) and its ground truth
    beside it (`<stem>.mask.png`, `<stem>.labels.json`). Deterministic for a seed.

    width, height: level-0 pixels (any size from a few hundred to 100k+ per side).
    mpp: microns per level-0 pixel (0.25 ≈ 40×). compression: "jpeg" or "deflate".
    n_lesions: how many lesions to place; fewer when the tissue has no room for them
    (the returned SyntheticSlide lists the ones placed). workers: rendering threads.
    """
    if width < 64 or height < 64:
        raise ValueError(f"a synthetic slide needs at least 64×64 pixels, got {width}×{height}")
    if tile_size % 16 or tile_size < 16:
        raise ValueError(f"tile_size must be a positive multiple of 16, got {tile_size}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if n_lesions < 0 or n_lesions > 250:
        raise ValueError(f"n_lesions must be in 0..250, got {n_lesions}")
    path = Path(path)
    streams = np.random.SeedSequence(seed).spawn(5)
    layout = Layout(
        width,
        height,
        np.random.default_rng(streams[0]),
        n_lesions,
        stain_rng=np.random.default_rng(streams[4]),
    )

    # Texture period: a power of two, ≥ 2 tiles; bigger for big slides (less repetition).
    period = 512 if max(width, height) <= 2048 else 1024 if max(width, height) <= 16384 else 2048
    while period < 2 * tile_size:
        period *= 2
    px_per_um = 1.0 / mpp
    texture_rng = np.random.default_rng(streams[1])
    textures = [
        render_background(texture_rng, period),
        render_stroma(texture_rng, period, px_per_um),
    ]
    label_texture = [0, 1]
    # Grades of one kind share their mean colour (the grade-2 texture's), so a thumbnail
    # cannot tell them apart; each (kind, grade) pair is rendered once.
    lesion_texture_index: dict[tuple[str, int], int] = {}
    reference_rgb: dict[str, np.ndarray] = {}
    for lesion in layout.lesions:
        key = (lesion.kind, lesion.grade)
        if key not in lesion_texture_index:
            if lesion.kind not in reference_rgb:
                kind_rng = np.random.default_rng([seed, 7, len(lesion.kind)])
                _, reference_rgb[lesion.kind] = render_lesion(
                    kind_rng, min(period, 512), px_per_um, lesion.kind, 2
                )
            grade_rng = np.random.default_rng([seed, 11, len(lesion.kind), lesion.grade])
            rgb, _ = render_lesion(
                grade_rng, period, px_per_um, lesion.kind, lesion.grade, reference_rgb[lesion.kind]
            )
            lesion_texture_index[key] = len(textures)
            textures.append(rgb)
        label_texture.append(lesion_texture_index[key])
    jitter0 = periodic_noise(np.random.default_rng(streams[2]), period, 20.0 * px_per_um)
    mottle0 = np.tanh(
        periodic_noise(np.random.default_rng(streams[3]), period * 3 // 2, 40.0 * px_per_um)
    )

    dims = _pyramid_dimensions(width, height, tile_size)
    objective_power = round(10.0 / mpp, 2)
    description = json.dumps(
        {"omnipath_synthetic": {"seed": seed, "mpp": mpp, "objective_power": objective_power}}
    )
    renderer = _TileRenderer(layout, np.asarray(label_texture), compression, quality, tile_size)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    partial = path.with_name(path.name + ".partial")
    bigtiff = width * height * 3 > 2**31
    level_tex = _LevelTextures(textures, jitter0, mottle0, tile_size)
    with ThreadPoolExecutor(workers) if workers > 1 else _NoPool() as pool:
        with tifffile.TiffWriter(partial, bigtiff=bigtiff) as tiff:
            for level, (level_w, level_h) in enumerate(dims):
                if level > 0:
                    level_tex = level_tex.halved(tile_size)
                cols, rows = math.ceil(level_w / tile_size), math.ceil(level_h / tile_size)
                pixels_per_cm = 1e4 / (mpp * 2**level)
                tiff.write(
                    _tiles_in_order(renderer, level, level_tex, cols, rows, pool),
                    shape=(level_h, level_w, 3),
                    dtype=np.uint8,
                    tile=(tile_size, tile_size),
                    photometric="rgb",
                    compression="jpeg" if compression == "jpeg" else "zlib",
                    compressionargs={"outcolorspace": "RGB"} if compression == "jpeg" else None,
                    subsampling=(1, 1) if compression == "jpeg" else None,
                    resolution=(pixels_per_cm, pixels_per_cm),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,
                    description=description if level == 0 else None,
                    software="omnipath.synth",
                    metadata=None,
                )
    os.replace(partial, path)

    mask_downsample = max(1, math.ceil(max(width, height) / MASK_MAX_SIDE))
    mask_w, mask_h = math.ceil(width / mask_downsample), math.ceil(height / mask_downsample)
    mask_xs = ((np.arange(mask_w) + 0.5) * mask_downsample).astype(np.int64) % period
    mask_ys = ((np.arange(mask_h) + 0.5) * mask_downsample).astype(np.int64) % period
    mask = layout.labels(0, 0, mask_downsample, mask_w, mask_h, jitter0[np.ix_(mask_ys, mask_xs)])
    masks_path = masks_path_for(path)
    Image.fromarray(mask).save(masks_path)

    lesions = [
        Lesion(shape.l0_rect(width, height), shape.grade, shape.kind, FIRST_LESION_LABEL + i)
        for i, shape in enumerate(layout.lesions)
    ]
    slide = SyntheticSlide(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        lesions=lesions,
        masks_path=masks_path,
        labels_path=labels_path_for(path),
        objective_power=objective_power,
        mask_downsample=mask_downsample,
        seed=seed,
        level_dimensions=dims,
    )
    slide.labels_path.write_text(json.dumps(slide.to_json(), indent=1))
    return slide


class _NoPool:
    """Stands in for a thread pool when workers == 1 (render on the writer's thread)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

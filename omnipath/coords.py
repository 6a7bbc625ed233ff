"""Coordinate frames and the conversions between them (the only place they live).

Frames (prefix every variable with its frame):
- `l0_`    slide level-0 pixels, x right, y down. Everything stored, logged and drawn.
- `rel_`   fractions 0..1 of the level-0 width / height (what the model writes for boxes).
- `thumb_` pixels of the square model input: the slide scaled uniformly to fit side×side,
           centred and padded with white (LLaVA's expand2square).
- `grid_`  (row, col) of a vision-token cell; the thumb square is cut into grid×grid cells.
- `dz_`    deep-zoom (level, col, row), exactly as openslide's DeepZoomGenerator numbers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class L0Rect:
    """A rectangle in level-0 pixels: top-left (x, y), size (w, h)."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x1(self) -> int:
        """Exclusive right edge."""
        return self.x + self.w

    @property
    def y1(self) -> int:
        """Exclusive bottom edge."""
        return self.y + self.h

    def clip(self, l0_width: int, l0_height: int) -> L0Rect:
        """The part of this rectangle inside the slide (may be empty: w or h == 0)."""
        x0 = min(max(self.x, 0), l0_width)
        y0 = min(max(self.y, 0), l0_height)
        x1 = min(max(self.x1, 0), l0_width)
        y1 = min(max(self.y1, 0), l0_height)
        return L0Rect(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


@dataclass(frozen=True)
class RelBox:
    """A box as fractions 0..1 of the level-0 width (x) and height (y)."""

    x0: float
    y0: float
    x1: float
    y1: float


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def rel_to_l0(box: RelBox, l0_width: int, l0_height: int) -> L0Rect:
    """Relative box -> level-0 rectangle, clipped to the slide.

    Corners may come in either order (models sometimes swap them); the result covers every
    level-0 pixel the box touches (edges rounded outwards).
    """
    rel_x0, rel_x1 = sorted((box.x0, box.x1))
    rel_y0, rel_y1 = sorted((box.y0, box.y1))
    l0_x0 = math.floor(_clamp(rel_x0, 0.0, 1.0) * l0_width)
    l0_y0 = math.floor(_clamp(rel_y0, 0.0, 1.0) * l0_height)
    l0_x1 = math.ceil(_clamp(rel_x1, 0.0, 1.0) * l0_width)
    l0_y1 = math.ceil(_clamp(rel_y1, 0.0, 1.0) * l0_height)
    return L0Rect(l0_x0, l0_y0, l0_x1 - l0_x0, l0_y1 - l0_y0)


def l0_to_rel(rect: L0Rect, l0_width: int, l0_height: int) -> RelBox:
    """Level-0 rectangle -> relative box (not clipped)."""
    return RelBox(
        rect.x / l0_width,
        rect.y / l0_height,
        rect.x1 / l0_width,
        rect.y1 / l0_height,
    )


@dataclass(frozen=True)
class ThumbFrame:
    """The square model input ("thumb" frame): the slide scaled uniformly to fit side×side,
    CENTERED, padded (like LLaVA's expand2square; white unless the model asks for its colour)."""

    l0_width: int
    l0_height: int
    side: int

    def __post_init__(self) -> None:
        if self.l0_width <= 0 or self.l0_height <= 0 or self.side <= 0:
            raise ValueError(
                f"ThumbFrame needs positive sizes, got {self.l0_width}x{self.l0_height} "
                f"in a {self.side} px square"
            )

    @property
    def scale(self) -> float:
        """Thumb pixels per level-0 pixel."""
        return self.side / max(self.l0_width, self.l0_height)

    @property
    def pad_x(self) -> float:
        """White padding left of the slide, in thumb pixels (same on the right)."""
        return (self.side - self.l0_width * self.scale) / 2.0

    @property
    def pad_y(self) -> float:
        """White padding above the slide, in thumb pixels (same below)."""
        return (self.side - self.l0_height * self.scale) / 2.0

    def l0_to_thumb(self, l0_x: float, l0_y: float) -> tuple[float, float]:
        return l0_x * self.scale + self.pad_x, l0_y * self.scale + self.pad_y

    def thumb_to_l0(self, thumb_x: float, thumb_y: float) -> tuple[float, float]:
        return (thumb_x - self.pad_x) / self.scale, (thumb_y - self.pad_y) / self.scale

    def grid_cell_centre_l0(self, grid_row: int, grid_col: int, grid: int) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of cell (grid_row, grid_col) of a grid×grid tiling."""
        thumb_cell = self.side / grid
        return self.thumb_to_l0((grid_col + 0.5) * thumb_cell, (grid_row + 0.5) * thumb_cell)

    def grid_cell_l0_side(self, grid: int) -> float:
        """Level-0 side of one cell of a grid×grid tiling of the thumb square."""
        return self.side / grid / self.scale

    def grid_cell_to_l0(
        self, grid_row: int, grid_col: int, grid: int, context: float = 0.0
    ) -> L0Rect | None:
        """The level-0 rectangle under vision-token cell (grid_row, grid_col) of a grid×grid
        tiling of the thumb square.

        Returns None when the cell lies entirely in the white padding. `context` widens the
        cell by that fraction of the cell size on every side (before clipping to the slide).
        """
        if not (0 <= grid_row < grid and 0 <= grid_col < grid):
            raise ValueError(f"grid cell ({grid_row}, {grid_col}) is outside a {grid}x{grid} grid")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        l0_cx, l0_cy = self.grid_cell_centre_l0(grid_row, grid_col, grid)
        half = self.grid_cell_l0_side(grid) / 2
        l0_x0, l0_y0, l0_x1, l0_y1 = l0_cx - half, l0_cy - half, l0_cx + half, l0_cy + half
        thumb_cell = self.side / grid
        # Entirely in the padding: the bare cell does not overlap the slide (touching an edge
        # within float noise does not count).
        eps = 1e-6
        if (
            l0_x1 <= eps
            or l0_y1 <= eps
            or l0_x0 >= self.l0_width - eps
            or l0_y0 >= self.l0_height - eps
        ):
            return None
        l0_margin = context * thumb_cell / self.scale
        l0_x0 = math.floor(_clamp(l0_x0 - l0_margin, 0, self.l0_width) + eps)
        l0_y0 = math.floor(_clamp(l0_y0 - l0_margin, 0, self.l0_height) + eps)
        l0_x1 = math.ceil(_clamp(l0_x1 + l0_margin, 0, self.l0_width) - eps)
        l0_y1 = math.ceil(_clamp(l0_y1 + l0_margin, 0, self.l0_height) - eps)
        return L0Rect(l0_x0, l0_y0, max(1, l0_x1 - l0_x0), max(1, l0_y1 - l0_y0))

    def grid_cell_of_l0(self, l0_x: float, l0_y: float, grid: int) -> tuple[int, int]:
        """(grid_row, grid_col) of the cell holding level-0 point (l0_x, l0_y); clamped."""
        thumb_x, thumb_y = self.l0_to_thumb(l0_x, l0_y)
        thumb_cell = self.side / grid
        grid_col = int(_clamp(math.floor(thumb_x / thumb_cell), 0, grid - 1))
        grid_row = int(_clamp(math.floor(thumb_y / thumb_cell), 0, grid - 1))
        return grid_row, grid_col

    def content_size(self) -> tuple[int, int]:
        """(width, height) in thumb pixels of the slide inside the square (≥ 1 each)."""
        return (
            max(1, round(self.l0_width * self.scale)),
            max(1, round(self.l0_height * self.scale)),
        )

    def render(
        self, slide_thumbnail: Image.Image, fill: tuple[int, int, int] = (255, 255, 255)
    ) -> Image.Image:
        """The side×side RGB model input: `slide_thumbnail` (any size, the whole slide)
        resized to the content size and pasted centred on `fill` (white by default; LLaVA
        pads with its mean colour)."""
        from PIL import Image

        content_w, content_h = self.content_size()
        content = slide_thumbnail.convert("RGB")
        if content.size != (content_w, content_h):
            content = content.resize((content_w, content_h), Image.Resampling.BILINEAR)
        square = Image.new("RGB", (self.side, self.side), fill)
        square.paste(content, ((self.side - content_w) // 2, (self.side - content_h) // 2))
        return square


def dz_level_dimensions(l0_width: int, l0_height: int) -> list[tuple[int, int]]:
    """(width, height) of every deep-zoom level, level 0 = 1×1-ish, last = level 0 of the
    slide; the same halving (ceil) as openslide's DeepZoomGenerator without limit_bounds."""
    dz_size = (l0_width, l0_height)
    sizes = [dz_size]
    while dz_size[0] > 1 or dz_size[1] > 1:
        dz_size = (max(1, math.ceil(dz_size[0] / 2)), max(1, math.ceil(dz_size[1] / 2)))
        sizes.append(dz_size)
    return list(reversed(sizes))


def dz_tile_to_l0(
    dz_level: int,
    dz_col: int,
    dz_row: int,
    *,
    l0_width: int,
    l0_height: int,
    tile_size: int = 254,
    overlap: int = 1,
) -> L0Rect:
    """The level-0 rectangle that deep-zoom tile (dz_level, dz_col, dz_row) shows, overlap
    included, clipped to the slide. Raises ValueError for a level or address that does not
    exist (the tile server turns that into a 404)."""
    levels = dz_level_dimensions(l0_width, l0_height)
    if not 0 <= dz_level < len(levels):
        raise ValueError(f"deep-zoom level {dz_level} does not exist (0..{len(levels) - 1})")
    dz_w, dz_h = levels[dz_level]
    dz_cols, dz_rows = math.ceil(dz_w / tile_size), math.ceil(dz_h / tile_size)
    if not (0 <= dz_col < dz_cols and 0 <= dz_row < dz_rows):
        raise ValueError(
            f"deep-zoom tile ({dz_col}, {dz_row}) does not exist at level {dz_level} "
            f"({dz_cols}x{dz_rows} tiles)"
        )
    l0_per_dz = 2 ** (len(levels) - 1 - dz_level)

    def span(index: int, count: int, dz_limit: int, l0_limit: int) -> tuple[int, int]:
        dz_start = index * tile_size - (overlap if index > 0 else 0)
        dz_end = min(dz_limit, (index + 1) * tile_size + (overlap if index < count - 1 else 0))
        l0_start = dz_start * l0_per_dz
        l0_end = min(l0_limit, dz_end * l0_per_dz)
        return l0_start, l0_end - l0_start

    l0_x, l0_w = span(dz_col, dz_cols, dz_w, l0_width)
    l0_y, l0_h = span(dz_row, dz_rows, dz_h, l0_height)
    return L0Rect(l0_x, l0_y, l0_w, l0_h)

"""Coordinate frames: rel <-> l0, the padded square thumb frame, grid cells, deep zoom."""

from __future__ import annotations

import itertools

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from omnipath.coords import (
    L0Rect,
    RelBox,
    ThumbFrame,
    dz_level_dimensions,
    dz_tile_to_l0,
    l0_to_rel,
    rel_to_l0,
)


def test_rel_l0_round_trip_on_exact_pixels():
    rect = L0Rect(100, 50, 300, 200)
    box = l0_to_rel(rect, 1000, 500)
    assert box == RelBox(0.1, 0.1, 0.4, 0.5)
    assert rel_to_l0(box, 1000, 500) == rect


def test_rel_to_l0_clips_to_slide_and_sorts_corners():
    # A model wrote the corners swapped and past the edge.
    rect = rel_to_l0(RelBox(1.2, 0.5, 0.75, -0.1), 400, 200)
    assert rect == L0Rect(300, 0, 100, 100)


def test_rel_to_l0_rounds_outwards():
    rect = rel_to_l0(RelBox(0.101, 0.101, 0.199, 0.199), 100, 100)
    assert rect == L0Rect(10, 10, 10, 10)


def test_l0rect_clip():
    assert L0Rect(-10, 5, 30, 10).clip(15, 12) == L0Rect(0, 5, 15, 7)
    assert L0Rect(50, 50, 10, 10).clip(20, 20).w == 0


def test_thumb_frame_landscape_is_centred_vertically():
    frame = ThumbFrame(2000, 1000, 100)
    assert frame.scale == pytest.approx(0.05)
    assert frame.pad_x == pytest.approx(0.0)
    assert frame.pad_y == pytest.approx(25.0)
    assert frame.l0_to_thumb(0, 0) == pytest.approx((0.0, 25.0))
    assert frame.l0_to_thumb(2000, 1000) == pytest.approx((100.0, 75.0))
    assert frame.thumb_to_l0(50, 50) == pytest.approx((1000.0, 500.0))


def test_thumb_frame_portrait_is_centred_horizontally():
    frame = ThumbFrame(300, 600, 60)
    assert frame.pad_x == pytest.approx(15.0)
    assert frame.pad_y == pytest.approx(0.0)
    for l0_point in [(0, 0), (123.5, 456.25), (300, 600)]:
        assert frame.thumb_to_l0(*frame.l0_to_thumb(*l0_point)) == pytest.approx(l0_point)


def test_thumb_frame_rejects_empty_sizes():
    with pytest.raises(ValueError, match="positive"):
        ThumbFrame(0, 10, 10)


def test_grid_cells_in_padding_are_none():
    frame = ThumbFrame(2000, 1000, 100)  # rows 0 and 3 of a 4-grid are pure padding
    for col in range(4):
        assert frame.grid_cell_to_l0(0, col, 4) is None
        assert frame.grid_cell_to_l0(3, col, 4) is None
    assert frame.grid_cell_to_l0(1, 0, 4) == L0Rect(0, 0, 500, 500)
    assert frame.grid_cell_to_l0(2, 3, 4) == L0Rect(1500, 500, 500, 500)


def test_grid_cells_partly_in_padding_are_clipped():
    frame = ThumbFrame(2000, 1200, 100)  # pad_y = 20 thumb px; cells are 20 px at grid 5
    assert frame.grid_cell_to_l0(0, 0, 5) is None
    first_row = frame.grid_cell_to_l0(1, 0, 5)
    assert first_row == L0Rect(0, 0, 400, 400)
    frame = ThumbFrame(2000, 1100, 100)  # pad_y = 22.5: cell row 1 spans thumb y 20..40
    assert frame.grid_cell_to_l0(1, 2, 5) == L0Rect(800, 0, 400, 350)


def test_grid_cell_context_widens_and_clips():
    frame = ThumbFrame(1000, 1000, 100)
    assert frame.grid_cell_to_l0(1, 1, 4, context=0.5) == L0Rect(125, 125, 500, 500)
    assert frame.grid_cell_to_l0(0, 0, 4, context=0.5) == L0Rect(0, 0, 375, 375)
    with pytest.raises(ValueError):
        frame.grid_cell_to_l0(4, 0, 4)


def test_grid_cells_cover_the_slide_exactly():
    frame = ThumbFrame(1234, 567, 336)
    grid = 24
    covered = np.zeros((567, 1234), dtype=np.int32)
    for row, col in itertools.product(range(grid), range(grid)):
        rect = frame.grid_cell_to_l0(row, col, grid)
        if rect is not None:
            assert rect.w >= 1 and rect.h >= 1
            covered[rect.y : rect.y1, rect.x : rect.x1] += 1
    assert covered.min() >= 1  # every slide pixel belongs to a cell


def test_grid_cell_of_l0_inverts_grid_cell_to_l0():
    frame = ThumbFrame(3000, 1700, 384)
    grid = 27
    for row, col in [(5, 0), (13, 13), (20, 26)]:
        rect = frame.grid_cell_to_l0(row, col, grid)
        assert rect is not None
        centre = (rect.x + rect.w / 2, rect.y + rect.h / 2)
        assert frame.grid_cell_of_l0(*centre, grid) == (row, col)
    assert frame.grid_cell_of_l0(-50, 10**9, grid) == (grid - 1, 0)


def test_render_pads_with_white_and_centres():
    frame = ThumbFrame(200, 100, 64)
    thumbnail = Image.new("RGB", (100, 50), (200, 0, 100))
    square = np.asarray(frame.render(thumbnail))
    assert square.shape == (64, 64, 3)
    assert (square[:16] == 255).all() and (square[48:] == 255).all()
    assert (square[16:48] == (200, 0, 100)).all()
    # A point of the slide lands where l0_to_thumb says.
    thumb_x, thumb_y = frame.l0_to_thumb(100, 50)
    assert (thumb_x, thumb_y) == pytest.approx((32.0, 32.0))


def test_dz_level_dimensions_match_openslide():
    image = Image.new("RGB", (1000, 301), "white")
    generator = DeepZoomGenerator(openslide.ImageSlide(image), 254, 1)
    assert tuple(dz_level_dimensions(1000, 301)) == generator.level_dimensions


@pytest.mark.parametrize("tile_size,overlap", [(254, 1), (126, 1), (256, 0), (510, 2)])
def test_dz_tile_to_l0_matches_openslide_deepzoom(tile_size, overlap):
    image = Image.new("RGB", (1531, 777), "white")
    generator = DeepZoomGenerator(openslide.ImageSlide(image), tile_size, overlap)
    for dz_level in range(generator.level_count):
        cols, rows = generator.level_tiles[dz_level]
        for dz_col, dz_row in itertools.product(range(cols), range(rows)):
            l0_location, slide_level, l_size = generator.get_tile_coordinates(
                dz_level, (dz_col, dz_row)
            )
            assert slide_level == 0
            expected = L0Rect(l0_location[0], l0_location[1], l_size[0], l_size[1])
            got = dz_tile_to_l0(
                dz_level,
                dz_col,
                dz_row,
                l0_width=1531,
                l0_height=777,
                tile_size=tile_size,
                overlap=overlap,
            )
            assert got == expected, (dz_level, dz_col, dz_row)


def test_dz_tile_to_l0_rejects_missing_tiles():
    with pytest.raises(ValueError, match="level"):
        dz_tile_to_l0(99, 0, 0, l0_width=100, l0_height=100)
    with pytest.raises(ValueError, match="tile"):
        dz_tile_to_l0(7, 5, 0, l0_width=100, l0_height=100)

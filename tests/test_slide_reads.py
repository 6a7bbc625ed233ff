"""Reading: regions from the best level, white outside, thumbnails, tissue masks, deep
zoom, and concurrent reads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import pytest
from PIL import Image

from omnipath.coords import L0Rect, ThumbFrame, dz_tile_to_l0
from omnipath.slide import open_slide
from omnipath.slide.tissue import tissue_fraction


@pytest.fixture(scope="module")
def slide(synthetic_slide):
    with open_slide(synthetic_slide.path) as opened:
        yield opened


def _levels_read(slide, monkeypatch):
    levels: list[int] = []
    original = slide._read_region

    def spy(location, level, size):
        levels.append(level)
        return original(location, level, size)

    monkeypatch.setattr(slide, "_read_region", spy)
    return levels


@pytest.mark.parametrize(
    "rect, out_size, level",
    [
        (L0Rect(0, 0, 1024, 1024), (1024, 1024), 0),
        (L0Rect(0, 0, 1024, 1024), (512, 512), 1),
        (L0Rect(0, 0, 1024, 1024), (300, 300), 1),  # downsample 3.4: level 1 (2), not 2 (4)
        (L0Rect(0, 0, 1024, 1024), (256, 256), 2),
        (L0Rect(0, 0, 4096, 3072), (256, 192), 4),
        (L0Rect(100, 100, 2000, 500), (500, 500), 0),  # the finer axis decides
    ],
)
def test_read_uses_the_best_level(slide, monkeypatch, rect, out_size, level):
    levels = _levels_read(slide, monkeypatch)
    image = slide.read_l0_region(rect, out_size)
    assert image.mode == "RGB" and image.size == out_size
    assert levels == [level]


def test_region_matches_openslide_at_level_0(slide, synthetic_slide):
    rect = L0Rect(1500, 1100, 300, 200)
    ours = np.asarray(slide.read_l0_region(rect, (300, 200)))
    with openslide.OpenSlide(str(synthetic_slide.path)) as osr:
        theirs = np.asarray(osr.read_region((1500, 1100), 0, (300, 200)).convert("RGB"))
    assert np.array_equal(ours, theirs)


def test_outside_the_slide_is_white(slide):
    assert np.asarray(slide.read_l0_region(L0Rect(5000, 5000, 100, 100), (10, 10))).min() == 255
    half = np.asarray(slide.read_l0_region(L0Rect(-2048, 0, 4096, 3072), (400, 300)))
    assert half[:, :190].min() == 255  # the left half lies outside
    assert half[:, 210:].min() < 255


def test_thumbnail_keeps_aspect_and_is_cached_as_a_copy(slide):
    first = slide.thumbnail(512)
    assert first.size == (512, 384) and first.mode == "RGB"
    first.paste((0, 0, 0), (0, 0, 512, 384))  # changing our copy ...
    second = slide.thumbnail(512)
    assert np.asarray(second).max() > 0  # ... leaves the cache alone
    assert slide.thumbnail(8192).size == (4096, 3072)  # never enlarged


def test_tissue_mask_agrees_with_the_ground_truth(slide, synthetic_slide):
    rows, cols = 24, 32
    measured = slide.tissue_mask(rows, cols)
    assert measured.shape == (rows, cols) and measured.dtype == np.float32
    assert 0.0 <= measured.min() and measured.max() <= 1.0
    truth_labels = np.asarray(Image.open(synthetic_slide.masks_path))
    truth = tissue_fraction(
        np.where(truth_labels[..., None] > 0, 128, 255).astype(np.uint8).repeat(3, axis=2),
        (rows, cols),
    )
    assert np.abs(measured - truth).mean() < 0.05
    assert ((measured > 0.5) == (truth > 0.5)).mean() > 0.95


def test_deepzoom_tiles_show_the_rect_dz_tile_to_l0_names(slide):
    generator = slide.deepzoom(tile_size=254, overlap=1)
    top = generator.level_count - 1
    assert generator.level_dimensions[top] == (4096, 3072)
    for dz_level, col, row in [(top, 3, 2), (top - 2, 1, 1), (top - 4, 0, 0)]:
        tile = generator.get_tile(dz_level, (col, row))
        rect = dz_tile_to_l0(dz_level, col, row, l0_width=4096, l0_height=3072)
        expected = slide.read_l0_region(rect, tile.size)
        difference = np.abs(np.asarray(tile, dtype=float) - np.asarray(expected, dtype=float))
        assert difference.mean() < 12  # same pixels, different resampling filters


def test_deepzoom_on_a_plain_image(shared_fixtures):
    with open_slide(shared_fixtures / "boxes.png") as image:
        generator = image.deepzoom()
        assert generator.level_dimensions[-1] == (300, 250)
        tile = generator.get_tile(generator.level_count - 1, (0, 0))
        assert tile.size == (255, 250)


def test_concurrent_reads_match_serial_reads(slide):
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(48):
        w, h = (int(v) for v in rng.integers(64, 1500, size=2))
        x, y = int(rng.integers(-100, 4096 - 64)), int(rng.integers(-100, 3072 - 64))
        requests.append((L0Rect(x, y, w, h), (128, 96)))
    serial = [np.asarray(slide.read_l0_region(r, s)) for r, s in requests]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda args: np.asarray(slide.read_l0_region(*args)), requests))
    for one, other in zip(serial, parallel, strict=True):
        assert np.array_equal(one, other)


def test_concurrent_deepzoom_on_a_plain_image(shared_fixtures):
    with open_slide(shared_fixtures / "boxes.png") as image:
        generator = image.deepzoom(tile_size=62, overlap=1)
        top = generator.level_count - 1
        cols, rows = generator.level_tiles[top]
        addresses = [(c, r) for c in range(cols) for r in range(rows)] * 4
        serial = [np.asarray(generator.get_tile(top, a)) for a in addresses]
        with ThreadPoolExecutor(6) as pool:
            parallel = list(pool.map(lambda a: np.asarray(generator.get_tile(top, a)), addresses))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_close_waits_for_reads_in_flight(synthetic_slide):
    opened = open_slide(synthetic_slide.path)
    started = threading.Event()
    release = threading.Event()
    handle = opened._idle[0]
    original = handle.read_region

    def slow_read(*args):
        started.set()
        release.wait(5)
        return original(*args)

    handle.read_region = slow_read
    results = []
    reader = threading.Thread(
        target=lambda: results.append(opened.read_l0_region(L0Rect(0, 0, 256, 256), (64, 64)))
    )
    reader.start()
    assert started.wait(5)
    closer = threading.Thread(target=opened.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # still waiting for the reader
    release.set()
    reader.join(5)
    closer.join(5)
    assert not closer.is_alive() and opened.closed
    assert results and results[0].size == (64, 64)


def test_thumb_frame_render_of_a_slide_thumbnail(slide):
    frame = ThumbFrame(slide.l0_width, slide.l0_height, 336)
    square = np.asarray(frame.render(slide.thumbnail(336)))
    assert square.shape == (336, 336, 3)
    pad = round(frame.pad_y)
    assert pad == 42
    assert square[: pad - 1].min() == 255 and square[-pad + 1 :].min() == 255


# --- tissue_fraction on its own ------------------------------------------------------------


def test_tissue_fraction_counts_stain_not_glass():
    image = np.full((40, 60, 3), 245, dtype=np.uint8)  # glass
    image[:20, :30] = (230, 140, 190)  # eosin pink: tissue
    image[20:, 30:45] = (90, 60, 150)  # hematoxylin purple: tissue
    image[20:, 45:] = (215, 215, 215)  # pale grey: still glass
    fractions = tissue_fraction(image, (2, 2))
    assert fractions.dtype == np.float32
    assert fractions.tolist() == [[1.0, 0.0], [0.0, 0.5]]


def test_tissue_fraction_padding_counts_as_background():
    frame = ThumbFrame(200, 100, 64)
    square = frame.render(Image.new("RGB", (200, 100), (200, 100, 160)))
    fractions = tissue_fraction(square, (4, 4))
    assert fractions[0].max() == 0.0 and fractions[3].max() == 0.0
    assert fractions[1:3].min() == 1.0


def test_tissue_fraction_small_images_and_alpha():
    tiny = np.zeros((3, 3, 3), dtype=np.uint8)  # black counts as tissue (debris, pen)
    assert tissue_fraction(tiny, (8, 8)).min() == 1.0
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)  # fully transparent: nothing there
    assert tissue_fraction(rgba, (2, 2)).max() == 0.0
    with pytest.raises(ValueError):
        tissue_fraction(tiny, (0, 2))

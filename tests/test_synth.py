"""Synthetic slides: file layout OpenSlide reads, colours, ground truth, determinism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from omnipath.synth import read_synthetic_labels, write_synthetic_slide
from omnipath.synth.texture import halve, render_lesion


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_openslide_reads_it_as_generic_tiff_with_every_level(synthetic_slide):
    with openslide.OpenSlide(str(synthetic_slide.path)) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.dimensions == (4096, 3072)
        assert osr.level_dimensions == tuple(synthetic_slide.level_dimensions)
        assert osr.level_count == 5
        assert osr.level_downsamples == pytest.approx((1, 2, 4, 8, 16))
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        description = json.loads(osr.properties["tiff.ImageDescription"])
        assert description["omnipath_synthetic"]["objective_power"] == 40


def test_pages_are_rgb_jpeg_tiled_with_reduced_resolution_flags(synthetic_slide):
    with tifffile.TiffFile(synthetic_slide.path) as tif:
        assert len(tif.pages) == 5
        for index, page in enumerate(tif.pages):
            assert page.is_tiled and page.tilewidth == 256
            assert page.photometric == tifffile.PHOTOMETRIC.RGB
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.subfiletype == (1 if index else 0)
        assert not tif.pages[0].subifds  # no SubIFD pyramid: OpenSlide would ignore it


def test_colours_follow_the_ground_truth_mask(synthetic_slide):
    mask = np.asarray(Image.open(synthetic_slide.masks_path))
    downsample = synthetic_slide.mask_downsample
    assert mask.shape == (3072 // downsample, 4096 // downsample)
    with openslide.OpenSlide(str(synthetic_slide.path)) as osr:
        level = osr.get_best_level_for_downsample(16)
        thumb = np.asarray(
            osr.read_region((0, 0), level, osr.level_dimensions[level]).convert("RGB")
        )
    labels = np.asarray(Image.fromarray(mask).resize(thumb.shape[1::-1], Image.Resampling.NEAREST))
    rgb = thumb.astype(np.float32)
    glass = rgb[labels == 0]
    tissue = rgb[labels == 1]
    assert glass.mean(axis=0).min() > 235  # white background
    assert glass.max(axis=1).mean() - glass.min(axis=1).mean() < 12  # ... and unsaturated
    red, green, blue = tissue.mean(axis=0)
    assert red > green + 40 and blue > green + 15  # pink: eosin absorbs green
    for lesion in synthetic_slide.lesions:
        lesion_pixels = rgb[labels == lesion.mask_value]
        assert len(lesion_pixels) > 0
        # Hematoxylin-rich: darker and bluer than the stroma around it.
        assert lesion_pixels.mean() < tissue.mean()


def test_nuclei_are_purple_at_full_resolution(synthetic_slide):
    lesion = synthetic_slide.lesions[0]
    rect = lesion.l0_rect
    with openslide.OpenSlide(str(synthetic_slide.path)) as osr:
        centre = (rect.x + rect.w // 2 - 64, rect.y + rect.h // 2 - 64)
        patch = np.asarray(osr.read_region(centre, 0, (128, 128)).convert("RGB")).astype(int)
    darkest = patch.reshape(-1, 3)[patch.sum(axis=2).ravel().argsort()[:200]].mean(axis=0)
    red, green, blue = darkest
    assert blue > red > green  # hematoxylin purple
    assert darkest.sum() < 400


def test_lesion_rects_hold_their_mask_and_labels_round_trip(synthetic_slide):
    mask = np.asarray(Image.open(synthetic_slide.masks_path))
    downsample = synthetic_slide.mask_downsample
    assert 1 <= len(synthetic_slide.lesions) <= 3
    for lesion in synthetic_slide.lesions:
        assert lesion.grade in (1, 2, 3)
        assert lesion.kind in ("carcinoma", "inflammation")
        rows, cols = np.nonzero(mask == lesion.mask_value)
        assert len(rows) > 0
        rect = lesion.l0_rect
        assert 0 <= rect.x and rect.x1 <= 4096 and 0 <= rect.y and rect.y1 <= 3072
        # Mask pixel centres fall inside the rectangle (one mask pixel of tolerance).
        assert cols.min() * downsample >= rect.x - downsample
        assert (cols.max() + 1) * downsample <= rect.x1 + downsample
        assert rows.min() * downsample >= rect.y - downsample
        assert (rows.max() + 1) * downsample <= rect.y1 + downsample
    loaded = read_synthetic_labels(synthetic_slide.path)
    assert loaded.lesions == synthetic_slide.lesions
    assert (loaded.width, loaded.height, loaded.mpp) == (4096, 3072, 0.25)


def test_same_seed_same_bytes_other_seed_other_slide(tmp_path):
    first = write_synthetic_slide(tmp_path / "a.tiff", 1024, 768, seed=3, n_lesions=1)
    again = write_synthetic_slide(tmp_path / "b.tiff", 1024, 768, seed=3, n_lesions=1)
    other = write_synthetic_slide(tmp_path / "c.tiff", 1024, 768, seed=4, n_lesions=1)
    assert _sha256(first.path) == _sha256(again.path)
    assert _sha256(first.masks_path) == _sha256(again.masks_path)
    assert first.lesions == again.lesions
    assert _sha256(first.path) != _sha256(other.path)
    assert not list(tmp_path.glob("*.partial"))


def test_single_worker_writes_the_same_file(tmp_path):
    threaded = write_synthetic_slide(tmp_path / "a.tiff", 1024, 768, seed=5, workers=2)
    serial = write_synthetic_slide(tmp_path / "b.tiff", 1024, 768, seed=5, workers=1)
    assert _sha256(threaded.path) == _sha256(serial.path)


def test_deflate_slide_matches_the_jpeg_one(tmp_path):
    jpeg = write_synthetic_slide(tmp_path / "j.tiff", 1024, 768, seed=2, compression="jpeg")
    deflate = write_synthetic_slide(tmp_path / "d.tiff", 1024, 768, seed=2, compression="deflate")
    with tifffile.TiffFile(deflate.path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    with openslide.OpenSlide(str(jpeg.path)) as a, openslide.OpenSlide(str(deflate.path)) as b:
        assert b.properties["openslide.vendor"] == "generic-tiff"
        assert a.level_dimensions == b.level_dimensions
        pixels_a = np.asarray(a.read_region((0, 0), 0, (1024, 768)).convert("RGB"), dtype=float)
        pixels_b = np.asarray(b.read_region((0, 0), 0, (1024, 768)).convert("RGB"), dtype=float)
    assert np.abs(pixels_a - pixels_b).mean() < 4.0  # JPEG loss only


def test_odd_sizes_and_tile_sizes(tmp_path):
    slide = write_synthetic_slide(tmp_path / "odd.tiff", 1000, 333, tile_size=128, mpp=0.5)
    with openslide.OpenSlide(str(slide.path)) as osr:
        assert osr.dimensions == (1000, 333)
        assert osr.level_dimensions[-1] == (125, 42)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        corner = osr.read_region((999, 332), 0, (1, 1))
        assert corner.size == (1, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 10, "height": 100}, "64"),
        ({"tile_size": 100}, "multiple of 16"),
        ({"compression": "lzw"}, "compression"),
        ({"mpp": 0.0}, "mpp"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"width": 512, "height": 512} | kwargs
    width, height = args.pop("width"), args.pop("height")
    with pytest.raises(ValueError, match=message):
        write_synthetic_slide(tmp_path / "x.tiff", width, height, **args)


def _at_downsample(texture: np.ndarray, factor: int) -> np.ndarray:
    while factor > 1:
        texture = halve(texture)
        factor //= 2
    return texture.astype(np.float32)


def _nuclei(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin-rich pixels: hematoxylin absorbs red, eosin hardly (lightly smoothed so
    coarse chromatin does not split a nucleus)."""
    red = rgb[..., 0]
    smooth = (
        red + np.roll(red, 1, 0) + np.roll(red, -1, 0) + np.roll(red, 1, 1) + np.roll(red, -1, 1)
    ) / 5
    return smooth < 170


def _survives_erosion(mask: np.ndarray, radius: int = 2) -> float:
    """Share of the mask left after a (2r+1)² erosion: bigger nuclei keep more of it."""
    eroded = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            eroded &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return float(eroded.sum() / mask.sum())


@pytest.mark.parametrize("kind", ["carcinoma", "inflammation"])
def test_grade_shows_at_cellular_scale_but_not_on_a_thumbnail(kind):
    px_per_um = 4.0  # level 0 at 0.25 µm/px
    _, reference = render_lesion(np.random.default_rng(0), 256, px_per_um, kind, 2)
    low, _ = render_lesion(np.random.default_rng(1), 512, px_per_um, kind, 1, reference)
    high, _ = render_lesion(np.random.default_rng(2), 512, px_per_um, kind, 3, reference)
    # ~1 µm/px (10×): carcinoma nuclei grow with grade; inflammation cells crowd.
    low_10x, high_10x = _nuclei(_at_downsample(low, 4)), _nuclei(_at_downsample(high, 4))
    if kind == "carcinoma":
        assert _survives_erosion(high_10x) > 3 * _survives_erosion(low_10x)
    else:
        assert high_10x.mean() > 1.6 * low_10x.mean()
    # 32 µm/px (a thumbnail): the mean colours agree within a couple of levels.
    low_thumb = _at_downsample(low, 128).reshape(-1, 3).mean(axis=0)
    high_thumb = _at_downsample(high, 128).reshape(-1, 3).mean(axis=0)
    assert np.abs(low_thumb - high_thumb).max() < 2.5


@pytest.mark.slow
def test_long_thin_slide_streams(tmp_path):
    slide = write_synthetic_slide(tmp_path / "long.tiff", 100_000, 768, n_lesions=1)
    with openslide.OpenSlide(str(slide.path)) as osr:
        assert osr.dimensions == (100_000, 768)
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.read_region((99_000, 0), 0, (256, 256)).size == (256, 256)

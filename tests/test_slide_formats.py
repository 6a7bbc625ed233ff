"""Every format path of open_slide: OpenSlide vendors, generated TIFFs, plain images.

The format always comes from the content: renamed files open as what they are."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from omnipath.coords import L0Rect
from omnipath.slide import content_hash, open_slide
from omnipath.synth import write_synthetic_slide


@pytest.mark.parametrize(
    "name, vendor, levels, mpp, power",
    [
        ("small.svs", "aperio", 1, 0.499, 20.0),
        ("boxes.tiff", "generic-tiff", 4, None, None),  # 72 dpi is not a microscope mpp
        ("boxes_0.dcm", "dicom", 1, 0.499, 20.0),
        ("boxes.png", "image", 1, None, None),
    ],
)
def test_shared_fixtures_open_with_the_right_reader(
    shared_fixtures, name, vendor, levels, mpp, power
):
    with open_slide(shared_fixtures / name) as slide:
        info = slide.info
        assert info.vendor == vendor
        assert info.level_count == levels
        assert len(info.level_dimensions) == len(info.level_downsamples) == levels
        assert info.level_dimensions[0] == (slide.l0_width, slide.l0_height)
        assert info.mpp_x == (pytest.approx(mpp) if mpp else None)
        assert info.objective_power == power
        thumb = slide.thumbnail(64)
        assert thumb.mode == "RGB"
        assert max(thumb.size) == min(64, max(slide.l0_width, slide.l0_height))
        assert slide.associated_images == {}  # never exposed by default


def test_png_and_generic_tiff_of_the_same_boxes_look_the_same(shared_fixtures):
    with (
        open_slide(shared_fixtures / "boxes.png") as png,
        open_slide(shared_fixtures / "boxes.tiff") as tiff,
    ):
        assert png.info.image_format == "PNG"
        assert (png.l0_width, png.l0_height) == (tiff.l0_width, tiff.l0_height) == (300, 250)
        a = np.asarray(png.thumbnail(150), dtype=float)
        b = np.asarray(tiff.thumbnail(150), dtype=float)
    assert np.abs(a - b).mean() < 10


def test_icc_profile_is_exposed(shared_fixtures):
    with open_slide(shared_fixtures / "boxes.tiff") as slide:
        assert slide.info.has_icc
        assert slide.icc_profile is not None and slide.icc_profile[36:40] == b"acsp"
    with open_slide(shared_fixtures / "small.svs") as slide:
        assert not slide.info.has_icc and slide.icc_profile is None


def test_associated_images_only_on_request(shared_fixtures):
    with open_slide(shared_fixtures / "small.svs") as slide:
        assert slide.associated_images == {}
    with open_slide(shared_fixtures / "small.svs", expose_associated=True) as slide:
        assert set(slide.associated_images) == {"thumbnail"}
        assert slide.associated_images["thumbnail"].mode == "RGB"


def test_content_wins_over_the_name(shared_fixtures, tmp_path):
    shutil.copy(shared_fixtures / "boxes.png", tmp_path / "slide.svs")
    shutil.copy(shared_fixtures / "small.svs", tmp_path / "photo.png")
    shutil.copy(shared_fixtures / "boxes_0.dcm", tmp_path / "no_extension")
    with open_slide(tmp_path / "slide.svs") as slide:
        assert slide.info.vendor == "image" and slide.info.image_format == "PNG"
    with open_slide(tmp_path / "photo.png") as slide:
        assert slide.info.vendor == "aperio"
    with open_slide(tmp_path / "no_extension") as slide:
        assert slide.info.vendor == "dicom"


def test_synthetic_jpeg_slide(synthetic_slide):
    with open_slide(synthetic_slide.path) as slide:
        info = slide.info
        assert info.vendor == "generic-tiff"
        assert (info.l0_width, info.l0_height) == (4096, 3072)
        assert info.level_count == 5
        assert info.level_downsamples == pytest.approx((1, 2, 4, 8, 16))
        assert info.mpp_x == pytest.approx(0.25) and info.mpp_y == pytest.approx(0.25)
        assert info.objective_power == 40.0
        assert info.to_dict()["level_dimensions"][0] == [4096, 3072]


def test_synthetic_deflate_slide(tmp_path):
    written = write_synthetic_slide(tmp_path / "d.tiff", 768, 512, compression="deflate", mpp=0.5)
    with open_slide(written.path) as slide:
        assert slide.info.vendor == "generic-tiff"
        assert slide.info.mpp_x == pytest.approx(0.5)
        assert slide.info.objective_power == 20.0
        region = slide.read_l0_region(L0Rect(0, 0, 768, 512), (96, 64))
        assert region.size == (96, 64)


def _image_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 120, height: int = 80) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1))


@pytest.mark.parametrize(
    "fmt, kwargs, expected_format",
    [
        ("JPEG", {"quality": 95}, "JPEG"),
        ("PNG", {}, "PNG"),
        ("TIFF", {}, "TIFF"),  # a plain (stripped) TIFF: OpenSlide declines, Pillow reads it
        ("TIFF", {"compression": "tiff_deflate"}, "TIFF"),
    ],
)
def test_plain_images(tmp_path, fmt, kwargs, expected_format):
    source = _gradient()
    path = tmp_path / "image.bin"
    path.write_bytes(_image_bytes(source, fmt, **kwargs))
    with open_slide(path) as slide:
        assert slide.info.vendor == "image"
        assert slide.info.image_format == expected_format
        assert (slide.l0_width, slide.l0_height) == (120, 80)
        assert slide.info.mpp_x is None and slide.info.objective_power is None
        pixels = np.asarray(slide.read_l0_region(L0Rect(0, 0, 120, 80), (120, 80)), dtype=float)
    assert np.abs(pixels - np.asarray(source, dtype=float)).mean() < 4


def test_transparent_png_is_on_white_and_16_bit_png_is_scaled(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    (tmp_path / "rgba.png").write_bytes(_image_bytes(rgba, "PNG"))
    with open_slide(tmp_path / "rgba.png") as slide:
        pixels = np.asarray(slide.thumbnail(40))
    assert tuple(pixels[5, 5]) == (0, 0, 255)
    assert tuple(pixels[5, 35]) == (255, 255, 255)

    deep = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
    (tmp_path / "deep.png").write_bytes(_image_bytes(deep, "PNG"))
    with open_slide(tmp_path / "deep.png") as slide:
        assert np.asarray(slide.thumbnail(20)).min() > 200


def test_cmyk_jpeg_and_exif_rotation(tmp_path):
    cmyk = _gradient().convert("CMYK")
    (tmp_path / "cmyk.jpg").write_bytes(_image_bytes(cmyk, "JPEG"))
    with open_slide(tmp_path / "cmyk.jpg") as slide:
        assert slide.thumbnail(120).mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    (tmp_path / "rotated.jpg").write_bytes(_image_bytes(_gradient(), "JPEG", exif=exif))
    with open_slide(tmp_path / "rotated.jpg") as slide:
        assert (slide.l0_width, slide.l0_height) == (80, 120)


def test_unicode_file_name(synthetic_slide, shared_fixtures, tmp_path):
    for source, name in [
        (synthetic_slide.path, "lámina_標本_🔬.tiff"),
        (shared_fixtures / "boxes.png", "изображение 1.png"),
    ]:
        target = tmp_path / name
        shutil.copy(source, target)
        with open_slide(target) as slide:
            assert slide.thumbnail(32).size[0] == 32


def test_content_hash_is_sha256_of_the_bytes(shared_fixtures, tmp_path):
    import hashlib

    path = shared_fixtures / "small.svs"
    assert content_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    copy = tmp_path / "renamed.anything"
    shutil.copy(path, copy)
    assert content_hash(copy) == content_hash(path)

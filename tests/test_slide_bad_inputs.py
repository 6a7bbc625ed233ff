"""Bad inputs: each gets its own typed error with a sentence a person understands."""

from __future__ import annotations

import resource
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from PIL import Image

from omnipath.coords import L0Rect
from omnipath.errors import (
    DamagedSlideError,
    EmptySlideError,
    SlideError,
    SlideTooLargeError,
    TruncatedSlideError,
    UnsupportedSlideError,
)
from omnipath.slide import SlideLimits, open_slide
from omnipath.synth import write_synthetic_slide


@pytest.fixture(scope="module")
def small_tiff(tmp_path_factory):
    """A 1024×768 synthetic JPEG slide (3 levels) and its bytes."""
    folder = tmp_path_factory.mktemp("small_tiff")
    slide = write_synthetic_slide(folder / "small.tiff", 1024, 768, seed=1, n_lesions=1)
    return slide.path


def _damaged_copy(source, target, tile_index=0):
    """Copy a TIFF and overwrite the start of one level-0 tile (its JPEG header)."""
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        offset = tif.pages[0].dataoffsets[tile_index]
    data[offset : offset + 64] = b"\x00" * 64
    target.write_bytes(bytes(data))
    return target


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(EmptySlideError, match="empty \\(0 bytes\\)"):
        open_slide(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SlideError, match="cannot be found"):
        open_slide(tmp_path / "nothing.svs")
    with pytest.raises(UnsupportedSlideError, match="not a slide or image"):
        open_slide(tmp_path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("patient: nobody\n" * 20)
    with pytest.raises(UnsupportedSlideError, match="not a slide or image that OmniPath can read"):
        open_slide(path)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_images_outside_the_allow_list(tmp_path, fmt):
    path = tmp_path / "image.png"  # the name says PNG; the content decides
    Image.new("RGB", (16, 16), "red").save(path, fmt)
    with pytest.raises(UnsupportedSlideError, match="PNG, JPEG and TIFF"):
        open_slide(path)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.9, 0.999])
def test_truncated_tiff(small_tiff, tmp_path, fraction):
    data = small_tiff.read_bytes()
    path = tmp_path / "cut.tiff"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(TruncatedSlideError, match="ends before its image data"):
        open_slide(path)


def test_truncated_png_and_jpeg(shared_fixtures, tmp_path):
    png = (shared_fixtures / "boxes.png").read_bytes()
    for cut in (20, 300):
        path = tmp_path / f"cut{cut}.png"
        path.write_bytes(png[:cut])
        with pytest.raises(TruncatedSlideError, match="interrupted"):
            open_slide(path)
    noise = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(TruncatedSlideError, match="interrupted"):
        open_slide(tmp_path / "cut.jpg")


def test_png_renamed_svs_opens_as_an_image(shared_fixtures, tmp_path):
    shutil.copy(shared_fixtures / "boxes.png", tmp_path / "renamed.svs")
    with open_slide(tmp_path / "renamed.svs") as slide:
        assert slide.info.vendor == "image"
        assert slide.info.image_format == "PNG"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height 1-bit pixels and holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_png(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(50_000, 50_000))  # Pillow's own limit refuses it
    with pytest.raises(SlideTooLargeError, match="2,500 million pixels, too many"):
        open_slide(path)


def test_png_over_our_limit_but_under_pillows(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(4000, 3000))
    limits = SlideLimits(max_image_pixels=10_000_000)
    with pytest.raises(SlideTooLargeError, match="4000×3000 pixels"):
        open_slide(path, limits=limits)


def test_damaged_tile_is_reported_and_the_slide_recovers(small_tiff, tmp_path):
    path = _damaged_copy(small_tiff, tmp_path / "damaged.tiff", tile_index=0)
    with open_slide(path) as slide:  # the lower levels are intact: it opens
        with pytest.raises(DamagedSlideError, match="damaged tile"):
            slide.read_l0_region(L0Rect(0, 0, 256, 256), (256, 256))
        # OpenSlide errors are sticky; the handle was replaced, so other tiles still read.
        good = slide.read_l0_region(L0Rect(512, 256, 256, 256), (256, 256))
        assert np.asarray(good).std() > 5
        with pytest.raises(DamagedSlideError):
            slide.read_l0_region(L0Rect(10, 10, 100, 100), (100, 100))
        assert slide.thumbnail(128).size == (128, 96)  # from an intact level


def test_damaged_tile_does_not_break_concurrent_reads(small_tiff, tmp_path):
    path = _damaged_copy(small_tiff, tmp_path / "damaged.tiff", tile_index=0)
    bad = L0Rect(0, 0, 200, 200)
    good = [L0Rect(300 + 40 * i, 300, 200, 200) for i in range(8)]
    jobs = [bad if i % 4 == 0 else good[i % 8] for i in range(64)]

    def read(rect):
        try:
            return np.asarray(slide.read_l0_region(rect, (200, 200)))
        except DamagedSlideError:
            return None

    with open_slide(path) as slide:
        expected = {rect: np.asarray(slide.read_l0_region(rect, (200, 200))) for rect in good}
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(read, jobs))
        assert len(slide._idle) <= 8  # one handle per concurrent read at most
    for rect, result in zip(jobs, results, strict=True):
        if rect == bad:
            assert result is None
        else:
            assert result is not None and np.array_equal(result, expected[rect])


def test_damaged_tile_through_deepzoom(small_tiff, tmp_path):
    path = _damaged_copy(small_tiff, tmp_path / "damaged.tiff", tile_index=0)
    with open_slide(path) as slide:
        generator = slide.deepzoom(tile_size=254, overlap=1)
        top = generator.level_count - 1
        with pytest.raises(DamagedSlideError):
            generator.get_tile(top, (0, 0))
        assert generator.get_tile(top, (3, 2)).size[0] > 0


def test_damaged_lowest_level_fails_at_open(small_tiff, tmp_path):
    data = bytearray(small_tiff.read_bytes())
    with tifffile.TiffFile(small_tiff) as tif:
        last = tif.pages[-1]
        offset = last.dataoffsets[0]
    data[offset : offset + 64] = b"\x00" * 64
    path = tmp_path / "bad_pyramid.tiff"
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedSlideError, match="cannot be decoded"):
        open_slide(path)


def _write_header_only_tiff(path, width: int, height: int, *, tiled: bool) -> None:
    """A valid little-endian TIFF claiming width×height RGB pixels whose tiles (or strips)
    all point at one small shared block of deflated white: a few MB on disk, tens of GB
    if anyone decoded it."""
    tile = 256
    if tiled:
        count = -(-width // tile) * -(-height // tile)
        block = zlib.compress(b"\xff" * (tile * tile * 3))
    else:
        rows_per_strip = 16
        count = -(-height // rows_per_strip)
        block = zlib.compress(b"\xff" * (width * rows_per_strip * 3))
    entries = 12
    ifd_offset = 8
    ifd_size = 2 + entries * 12 + 4
    bits_offset = ifd_offset + ifd_size
    offsets_offset = bits_offset + 8
    counts_offset = offsets_offset + 4 * count
    block_offset = counts_offset + 4 * count

    def entry(tag: int, kind: int, n: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, n, value)

    short, long_ = 3, 4
    tags = [
        entry(256, long_, 1, width),
        entry(257, long_, 1, height),
        entry(258, short, 3, bits_offset),
        entry(259, short, 1, 8),  # deflate
        entry(262, short, 1, 2),  # RGB
        entry(277, short, 1, 3),
        entry(284, short, 1, 1),
    ]
    if tiled:
        tags += [
            entry(322, long_, 1, tile),
            entry(323, long_, 1, tile),
            entry(324, long_, count, offsets_offset),
            entry(325, long_, count, counts_offset),
        ]
    else:
        tags += [
            entry(273, long_, count, offsets_offset),
            entry(278, long_, 1, rows_per_strip),
            entry(279, long_, count, counts_offset),
        ]
    tags += [entry(339, short, 1, 1)]  # SampleFormat unsigned
    tags.sort(key=lambda raw: struct.unpack("<H", raw[:2])[0])
    ifd = struct.pack("<H", len(tags)) + b"".join(tags) + struct.pack("<I", 0)
    ifd = ifd.ljust(ifd_size, b"\x00")
    with open(path, "wb") as handle:
        handle.write(b"II*\x00" + struct.pack("<I", ifd_offset))
        handle.write(ifd)
        handle.write(struct.pack("<4H", 8, 8, 8, 0))
        handle.write(np.full(count, block_offset, dtype="<u4").tobytes())
        handle.write(np.full(count, len(block), dtype="<u4").tobytes())
        handle.write(block)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled-openslide", "stripped-pillow"])
def test_huge_single_level_tiff_is_refused_without_allocating(tmp_path, tiled):
    path = tmp_path / "huge.tiff"
    _write_header_only_tiff(path, 100_000, 100_000, tiled=tiled)
    assert path.stat().st_size < 3_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    expected = "100000×100000 pixels" if tiled else "10,000 million pixels"
    with pytest.raises(SlideTooLargeError, match=expected):
        open_slide(path)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (peak_after - peak_before) * 1024 < 500e6  # nowhere near the 40 GB a read needs


def test_header_only_tiff_of_acceptable_size_opens(tmp_path):
    """The same construction at a modest size is a valid, white slide: the refusal above
    comes from the size, not from the file's structure."""
    path = tmp_path / "white.tiff"
    _write_header_only_tiff(path, 1000, 700, tiled=True)
    with open_slide(path) as slide:
        assert slide.info.vendor == "generic-tiff"
        assert np.asarray(slide.thumbnail(100)).min() == 255


def test_region_read_over_the_limit(synthetic_slide):
    limits = SlideLimits(max_read_pixels=1_000_000)
    with open_slide(synthetic_slide.path, limits=limits) as slide:
        # 2048² into 1000² reads 1024² at level 1: over 1 Mpx, refused; a coarser output
        # reads a coarser level and is fine.
        with pytest.raises(SlideTooLargeError, match="smaller region"):
            slide.read_l0_region(L0Rect(0, 0, 2048, 2048), (1000, 1000))
        assert slide.read_l0_region(L0Rect(0, 0, 2048, 2048), (512, 512)).size == (512, 512)
        # The output itself is checked before it is allocated.
        with pytest.raises(SlideTooLargeError, match="smaller output"):
            slide.read_l0_region(L0Rect(0, 0, 16, 16), (100_000, 100_000))


def test_reading_a_closed_slide(shared_fixtures):
    slide = open_slide(shared_fixtures / "boxes.tiff")
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(SlideError, match="closed"):
        slide.thumbnail(32)


def test_errors_never_name_the_file(tmp_path):
    """File names can identify patients: messages shown to users leave them out."""
    path = tmp_path / "Doe_John_1970-01-01.svs"
    path.write_text("not a slide")
    with pytest.raises(UnsupportedSlideError) as caught:
        open_slide(path)
    assert "Doe" not in caught.value.message


def _mutations(data: bytes, rng: np.random.Generator, count: int):
    """Cut, sprinkled and overwritten copies of a file's bytes."""
    for trial in range(count):
        buffer = bytearray(data)
        if trial % 3 == 0:
            buffer = buffer[: int(rng.integers(1, len(buffer)))]
        elif trial % 3 == 1:
            for _ in range(int(rng.integers(1, 20))):
                buffer[int(rng.integers(0, len(buffer)))] = int(rng.integers(0, 256))
        else:
            start = int(rng.integers(0, len(buffer)))
            end = min(len(buffer), start + int(rng.integers(1, 200)))
            buffer[start:end] = rng.integers(0, 256, end - start).astype(np.uint8).tobytes()
        yield bytes(buffer)


def test_mangled_files_raise_only_slide_errors(shared_fixtures, small_tiff, tmp_path):
    """Whatever happens to the bytes, opening and reading either works or raises a
    SlideError with a message: never another exception type."""
    sources = {
        name: (shared_fixtures / name).read_bytes()
        for name in ("small.svs", "boxes.tiff", "boxes_0.dcm", "boxes.png")
    }
    sources["small.tiff"] = small_tiff.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"opened": 0, "refused": 0}
    for name, data in sources.items():
        for index, mangled in enumerate(_mutations(data, rng, 24)):
            path = tmp_path / f"{index}_{name}"
            path.write_bytes(mangled)
            try:
                with open_slide(path) as slide:
                    slide.thumbnail(64)
                    slide.read_l0_region(L0Rect(0, 0, slide.l0_width, slide.l0_height), (40, 30))
                    generator = slide.deepzoom()
                    generator.get_tile(generator.level_count - 1, (0, 0))
                outcomes["opened"] += 1
            except SlideError as error:
                assert error.message and error.message[0].isupper()
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["opened"] > 0

"""MIRAX arrives as a .zip: a real (synthetic) MIRAX slide end to end, the archive checks
(zip-slip, zip bombs, structure) and the extraction next to the zip."""

from __future__ import annotations

import stat
import struct
import zipfile

import numpy as np
import pytest

from omnipath.coords import L0Rect
from omnipath.errors import (
    DamagedSlideError,
    SlideTooLargeError,
    TruncatedSlideError,
    UnsupportedSlideError,
)
from omnipath.slide import SlideLimits, open_slide
from omnipath.slide.mirax import MARKER, extract_mirax_zip
from omnipath.synth import write_synthetic_slide
from omnipath.synth.mirax import write_synthetic_mirax, zip_mirax


def _zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


FAKE_MIRAX = {
    "case/slide.mrxs": b"[GENERAL]\nSLIDE_VERSION=01.02\n",
    "case/slide/Slidedat.ini": b"[GENERAL]\n",
    "case/slide/Index.dat": b"\x00" * 16,
    "case/slide/Data0000.dat": b"\x00" * 16,
}


@pytest.fixture(scope="module")
def mirax_zip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirax")
    mrxs = write_synthetic_mirax(folder / "source", "case 7", width=1000, height=700, seed=2)
    return mrxs, zip_mirax(mrxs, folder / "upload.zip")


def test_mirax_zip_opens_as_mirax(mirax_zip, tmp_path):
    _, path = mirax_zip
    with open_slide(path) as slide:
        info = slide.info
        assert info.vendor == "mirax"
        assert info.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert info.mpp_x == pytest.approx(0.25) and info.objective_power == 40.0
        mirax_pixels = np.asarray(slide.read_l0_region(L0Rect(0, 0, 1000, 700), (250, 175)), float)
        assert np.asarray(slide.read_l0_region(L0Rect(1000, 700, 24, 68), (4, 4))).min() > 240
    # Same renderer, same seed: the TIFF version of this slide shows the same picture.
    tiff = write_synthetic_slide(tmp_path / "same.tiff", 1000, 700, seed=2, n_lesions=1)
    with open_slide(tiff.path) as slide:
        tiff_pixels = np.asarray(slide.read_l0_region(L0Rect(0, 0, 1000, 700), (250, 175)), float)
    assert np.abs(mirax_pixels - tiff_pixels).mean() < 4


def test_extracted_mrxs_and_the_original_folder_open_too(mirax_zip):
    mrxs, path = mirax_zip
    with open_slide(mrxs) as slide:
        assert slide.info.vendor == "mirax"
    extracted = extract_mirax_zip(path, SlideLimits())
    assert extracted.name == "case 7.mrxs"
    with open_slide(extracted) as slide:
        assert slide.thumbnail(64).size == (64, 48)


def test_mirax_with_a_damaged_index(mirax_zip, tmp_path):
    mrxs, _ = mirax_zip
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.write(mrxs, mrxs.name)
        for member in sorted(mrxs.with_suffix("").iterdir()):
            data = member.read_bytes()
            if member.name == "Index.dat":
                data = data[:40]  # the level table is gone
            archive.writestr(f"{mrxs.stem}/{member.name}", data)
    with pytest.raises(DamagedSlideError, match="damaged"):
        open_slide(tmp_path / "bad.zip")


def test_zip_without_mrxs(tmp_path):
    path = _zip(tmp_path / "upload.zip", {"readme.txt": b"hello", "images/a.png": b"x"})
    with pytest.raises(UnsupportedSlideError, match="holds no MIRAX slide"):
        open_slide(path)


def test_zip_with_two_mrxs(tmp_path):
    path = _zip(
        tmp_path / "upload.zip",
        {"a.mrxs": b"", "a/Slidedat.ini": b"", "b.mrxs": b"", "b/Slidedat.ini": b""},
    )
    with pytest.raises(UnsupportedSlideError, match="one MIRAX slide per zip"):
        open_slide(path)


def test_mrxs_without_its_folder(tmp_path):
    path = _zip(tmp_path / "upload.zip", {"slide.mrxs": b"", "other/Slidedat.ini": b""})
    with pytest.raises(UnsupportedSlideError, match="not its data folder slide/"):
        open_slide(path)


def test_fake_mirax_is_extracted_next_to_the_zip_and_reaches_openslide(tmp_path):
    path = _zip(tmp_path / "upload.zip", FAKE_MIRAX)
    # OpenSlide recognises a MIRAX layout, then finds the Slidedat.ini unusable.
    with pytest.raises(DamagedSlideError, match="damaged"):
        open_slide(path)
    target = tmp_path / "upload.zip.extracted"
    assert (target / "case" / "slide.mrxs").read_bytes() == FAKE_MIRAX["case/slide.mrxs"]
    assert (target / "case" / "slide" / "Index.dat").stat().st_size == 16
    assert (target / MARKER).is_file()
    assert not list(tmp_path.glob("*.extracting-*"))


def test_mrxs_folder_without_slidedat_is_not_mirax(tmp_path):
    members = {k: v for k, v in FAKE_MIRAX.items() if not k.endswith("Slidedat.ini")}
    path = _zip(tmp_path / "upload.zip", members)
    with pytest.raises(UnsupportedSlideError, match="not a MIRAX slide OpenSlide can read"):
        open_slide(path)


def test_extraction_is_reused_while_the_zip_is_unchanged(tmp_path):
    path = _zip(tmp_path / "upload.zip", FAKE_MIRAX)
    first = extract_mirax_zip(path, SlideLimits())
    sentinel = first.parent / "sentinel"
    sentinel.write_text("still here")
    assert extract_mirax_zip(path, SlideLimits()) == first
    assert sentinel.exists()  # not extracted again
    _zip(path, FAKE_MIRAX | {"case/slide/Data0001.dat": b"new"})
    again = extract_mirax_zip(path, SlideLimits())
    assert again == first and not sentinel.exists()
    assert (again.parent / "slide" / "Data0001.dat").read_bytes() == b"new"


@pytest.mark.parametrize(
    "evil",
    [
        "../evil.txt",
        "/tmp/evil.txt",
        "case/../../evil.txt",
        "C:/evil.txt",
        "case\\..\\..\\evil.txt",
    ],
)
def test_zip_slip_is_refused_before_anything_is_written(tmp_path, evil):
    folder = tmp_path / "uploads"
    folder.mkdir()
    path = _zip(folder / "upload.zip", FAKE_MIRAX | {evil: b"owned"})
    with pytest.raises(UnsupportedSlideError, match="points outside the archive"):
        open_slide(path)
    assert not (tmp_path / "evil.txt").exists()
    assert not (folder / "upload.zip.extracted").exists()


def test_symlink_members_are_refused(tmp_path):
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in FAKE_MIRAX.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("case/slide/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UnsupportedSlideError, match="symbolic link"):
        open_slide(path)


def test_zip_bomb_by_ratio(tmp_path):
    path = _zip(
        tmp_path / "bomb.zip", FAKE_MIRAX | {"case/slide/Data0001.dat": b"\x00" * 20_000_000}
    )
    assert path.stat().st_size < 100_000
    with pytest.raises(SlideTooLargeError, match="zip bomb"):
        open_slide(path)


def test_zip_total_size_and_member_count_limits(tmp_path):
    path = _zip(tmp_path / "upload.zip", FAKE_MIRAX, compression=zipfile.ZIP_STORED)
    with pytest.raises(SlideTooLargeError, match="would expand to"):
        open_slide(path, limits=SlideLimits(max_zip_bytes=40))
    with pytest.raises(SlideTooLargeError, match="holds 4 files"):
        open_slide(path, limits=SlideLimits(max_zip_members=3))


def test_lying_size_header_stops_extraction(tmp_path):
    path = _zip(
        tmp_path / "upload.zip", FAKE_MIRAX | {"case/slide/Data0001.dat": bytes(range(256)) * 64}
    )
    data = bytearray(path.read_bytes())
    # Shrink the declared uncompressed size of Data0001.dat in the central directory.
    name = b"case/slide/Data0001.dat"
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    struct.pack_into("<I", data, central + 24, 100)
    path.write_bytes(bytes(data))
    with pytest.raises((TruncatedSlideError, SlideTooLargeError)):
        open_slide(path)
    assert not (tmp_path / "upload.zip.extracted").exists()


def test_truncated_zip(tmp_path):
    path = _zip(tmp_path / "upload.zip", FAKE_MIRAX)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedSlideError, match="zip archive is incomplete"):
        open_slide(path)

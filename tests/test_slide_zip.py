"""MIRAX arrives as a .zip: the archive checks (zip-slip, zip bombs, structure) and the
extraction next to the zip. (No real MIRAX slide is available offline; the OpenSlide side
of MIRAX is OpenSlide's own detection on the extracted .mrxs.)"""

from __future__ import annotations

import stat
import struct
import zipfile

import pytest

from omnipath.errors import (
    DamagedSlideError,
    SlideTooLargeError,
    TruncatedSlideError,
    UnsupportedSlideError,
)
from omnipath.slide import SlideLimits, open_slide
from omnipath.slide.mirax import MARKER, extract_mirax_zip


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
    "evil", ["../evil.txt", "/tmp/evil.txt", "case/../../evil.txt", "C:/evil.txt"]
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

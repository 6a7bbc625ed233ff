"""What a file is, from its first bytes (never from its name), and whether it is complete."""

from __future__ import annotations

import os
import struct
from pathlib import Path

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive


def read_magic(path: Path, count: int = 132) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def container_of(magic: bytes) -> str | None:
    """'tiff', 'png', 'jpeg', 'zip', 'dicom' or None, from the first bytes."""
    if magic.startswith(TIFF_MAGICS):
        return "tiff"
    if magic.startswith(PNG_MAGIC):
        return "png"
    if magic.startswith(JPEG_MAGIC):
        return "jpeg"
    if magic.startswith(ZIP_MAGICS):
        return "zip"
    if len(magic) >= 132 and magic[128:132] == b"DICM":
        return "dicom"
    return None


def _ifd_chain_is_cut(path: Path) -> bool | None:
    """Walk the TIFF's chain of image directories: True when one of them starts or ends
    past the end of the file, False when the whole chain is inside it, None when the
    header is not TIFF (or the chain loops)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(16)
        if len(header) < 8 or header[:2] not in (b"II", b"MM"):
            return None
        order = "<" if header[:2] == b"II" else ">"
        version = struct.unpack(order + "H", header[2:4])[0]
        if version == 42:
            offset_format, count_format, entry_size, offset_size = "I", "H", 12, 4
            offset = struct.unpack(order + "I", header[4:8])[0]
        elif version == 43:
            if len(header) < 16:
                return True
            offset_format, count_format, entry_size, offset_size = "Q", "Q", 20, 8
            offset = struct.unpack(order + "Q", header[8:16])[0]
        else:
            return None
        count_size = struct.calcsize(count_format)
        seen: set[int] = set()
        while offset:
            if offset in seen or len(seen) > 100_000:
                return None
            seen.add(offset)
            if offset + count_size > size:
                return True
            handle.seek(offset)
            (entries,) = struct.unpack(order + count_format, handle.read(count_size))
            end = offset + count_size + entries * entry_size + offset_size
            if end > size:
                return True
            handle.seek(end - offset_size)
            (offset,) = struct.unpack(order + offset_format, handle.read(offset_size))
    return False


def tiff_is_truncated(path: Path) -> bool | None:
    """True when the TIFF's directory or pixel data runs past the end of the file, False
    when every page's data lies inside it, None when tifffile cannot tell (not a TIFF it
    understands)."""
    import tifffile

    try:
        chain_cut = _ifd_chain_is_cut(path)
    except (OSError, struct.error):
        chain_cut = None
    if chain_cut:
        return True
    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                offsets = getattr(page, "dataoffsets", ())
                counts = getattr(page, "databytecounts", ())
                for offset, count in zip(offsets, counts, strict=False):
                    if count and offset + count > size:
                        return True
    except (EOFError, tifffile.TiffFileError, ValueError, OSError, IndexError) as error:
        text = str(error).lower()
        if isinstance(error, EOFError) or "eof" in text or "out of range" in text:
            return True
        return None
    except Exception:  # noqa: BLE001 - tifffile's parsers raise many types on odd files
        return None
    return False

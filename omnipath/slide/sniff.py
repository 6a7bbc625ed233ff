"""What a file is, from its first bytes (never from its name), and whether it is complete."""

from __future__ import annotations

import os
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


def tiff_is_truncated(path: Path) -> bool | None:
    """True when the TIFF's directory or pixel data runs past the end of the file, False
    when every page's data lies inside it, None when tifffile cannot tell (not a TIFF it
    understands)."""
    import tifffile

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

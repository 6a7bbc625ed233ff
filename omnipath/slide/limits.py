"""Resource limits checked before any big read or extraction."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SlideLimits:
    """What one slide may cost us.

    max_read_pixels: the most pixels one read may decode (thumbnail source level, a region
        at its best level). 64 Mpx ≈ 256 MB RGBA. A slide whose smallest level is bigger
        than this cannot even give a thumbnail and is refused when it is opened.
    max_image_pixels: the most pixels of a plain image (PNG/JPEG/TIFF read by Pillow, which
        decodes the whole image into memory). Defaults to Pillow's own bomb threshold;
        Pillow's DecompressionBombError (at twice that) stays on regardless.
    max_zip_bytes / max_zip_members / max_zip_ratio: a MIRAX .zip may expand to at most
        this many bytes in this many members, each member compressed at most this ratio
        (a zip bomb compresses by thousands; slide tiles are already JPEG, ratio ~1).
    """

    max_read_pixels: int = 64 * 1024 * 1024
    max_image_pixels: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
    max_zip_bytes: int = 50 * 1024**3
    max_zip_members: int = 20_000
    max_zip_ratio: float = 200.0

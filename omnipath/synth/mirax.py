"""A small synthetic MIRAX slide (.mrxs + folder), and the .zip a user would upload.

MIRAX is 3DHISTECH's multi-file format: `<name>.mrxs`, and a folder `<name>/` holding
`Slidedat.ini` (INI metadata), `Index.dat` (binary index) and `Data0000.dat` (JPEG images
back to back). We write the simplest layout OpenSlide's mirax driver accepts: one camera
image per grid position (no image divisions), no overlap, no position buffer, and one
"Slide zoom level" per pyramid level, each level concatenating 2×2 images of the level
below, downsampled to the same image size.

For tests only: the slide is held in memory, so keep it small (a few thousand pixels).
"""

from __future__ import annotations

import io
import math
import struct
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from omnipath.synth.writer import write_synthetic_slide

INDEX_VERSION = b"01.02"


def _index_dat(slide_id: str, levels: list[list[tuple[int, int, int]]]) -> bytes:
    """Index.dat: version, slide id, then the hierarchical root pointer (and a nonhier
    pointer nobody reads here). Per zoom level: a pointer to a list head (0, first page),
    and one data page (record count, next page = 0, records of image index, offset in the
    data file, length, file number)."""
    header = INDEX_VERSION + slide_id.encode("ascii")
    hier_root = len(header)
    table_at = hier_root + 8  # after the hier and nonhier root pointers
    heads_at = table_at + 4 * len(levels)
    pages_at = heads_at + 8 * len(levels)
    table, heads, pages = b"", b"", b""
    page_offset = pages_at
    for index, records in enumerate(levels):
        head_at = heads_at + 8 * index
        table += struct.pack("<i", head_at)
        heads += struct.pack("<ii", 0, page_offset)
        page = struct.pack("<ii", len(records), 0)
        for image_index, offset, length in records:
            page += struct.pack("<iiii", image_index, offset, length, 0)
        pages += page
        page_offset += len(page)
    return header + struct.pack("<ii", table_at, 0) + table + heads + pages


def _slidedat_ini(
    slide_id: str,
    images_x: int,
    images_y: int,
    level_count: int,
    image_size: int,
    mpp: float,
    objective: int,
) -> str:
    lines = [
        "[GENERAL]",
        "SLIDE_VERSION=01.02",
        f"SLIDE_ID={slide_id}",
        f"IMAGENUMBER_X={images_x}",
        f"IMAGENUMBER_Y={images_y}",
        f"OBJECTIVE_MAGNIFICATION={objective}",
        "",
        "[HIERARCHICAL]",
        "HIER_COUNT=1",
        "NONHIER_COUNT=0",
        "INDEXFILE=Index.dat",
        "HIER_0_NAME=Slide zoom level",
        f"HIER_0_COUNT={level_count}",
    ]
    lines += [f"HIER_0_VAL_{i}_SECTION=LAYER_0_LEVEL_{i}_SECTION" for i in range(level_count)]
    lines += ["", "[DATAFILE]", "FILE_COUNT=1", "FILE_0=Data0000.dat", ""]
    for level in range(level_count):
        lines += [
            f"[LAYER_0_LEVEL_{level}_SECTION]",
            f"IMAGE_CONCAT_FACTOR={0 if level == 0 else 1}",
            "OVERLAP_X=0",
            "OVERLAP_Y=0",
            f"MICROMETER_PER_PIXEL_X={mpp * 2**level}",
            f"MICROMETER_PER_PIXEL_Y={mpp * 2**level}",
            "IMAGE_FILL_COLOR_BGR=16777215",
            f"DIGITIZER_WIDTH={image_size}",
            f"DIGITIZER_HEIGHT={image_size}",
            "IMAGE_FORMAT=JPEG",
            "",
        ]
    return "\n".join(lines)


def write_synthetic_mirax(
    folder: str | Path,
    name: str = "slide",
    *,
    width: int = 1024,
    height: int = 768,
    seed: int = 0,
    image_size: int = 256,
    mpp: float = 0.25,
) -> Path:
    """Write `<folder>/<name>.mrxs` and `<folder>/<name>/` with synthetic H&E content
    (the same renderer as write_synthetic_slide). Returns the .mrxs path. The level-0 size
    is rounded up to whole images (white beyond width×height)."""
    folder = Path(folder)
    images_x, images_y = math.ceil(width / image_size), math.ceil(height / image_size)
    with tempfile.TemporaryDirectory() as scratch:
        source = write_synthetic_slide(
            Path(scratch) / "source.tiff", width, height, seed=seed, mpp=mpp, n_lesions=1
        )
        with openslide.OpenSlide(str(source.path)) as osr:
            level0 = Image.new("RGB", (images_x * image_size, images_y * image_size), "white")
            level0.paste(osr.read_region((0, 0), 0, (width, height)).convert("RGB"), (0, 0))
    level_count = 1 + max(0, math.ceil(math.log2(max(images_x, images_y))))
    data = io.BytesIO()
    levels: list[list[tuple[int, int, int]]] = []
    for level in range(level_count):
        concat = 2**level
        records = []
        for y in range(0, images_y, concat):
            for x in range(0, images_x, concat):
                box = (
                    x * image_size,
                    y * image_size,
                    (x + concat) * image_size,
                    (y + concat) * image_size,
                )
                piece = Image.new("RGB", (concat * image_size,) * 2, "white")
                piece.paste(
                    level0.crop(
                        (box[0], box[1], min(box[2], level0.width), min(box[3], level0.height))
                    ),
                    (0, 0),
                )
                image = piece.resize((image_size, image_size), Image.Resampling.BOX)
                encoded = io.BytesIO()
                image.save(encoded, "JPEG", quality=90)
                offset = data.tell()
                data.write(encoded.getvalue())
                records.append((y * images_x + x, offset, data.tell() - offset))
        levels.append(records)
    slide_id = str(uuid.UUID(int=int(np.random.default_rng(seed).integers(0, 2**62))))
    directory = folder / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Data0000.dat").write_bytes(data.getvalue())
    (directory / "Index.dat").write_bytes(_index_dat(slide_id, levels))
    (directory / "Slidedat.ini").write_text(
        _slidedat_ini(slide_id, images_x, images_y, level_count, image_size, mpp, round(10 / mpp))
    )
    mrxs = folder / f"{name}.mrxs"
    mrxs.write_text("[GENERAL]\nSLIDE_VERSION=01.02\n")
    return mrxs


def zip_mirax(mrxs: str | Path, zip_path: str | Path) -> Path:
    """Zip a .mrxs file and its folder the way a user would upload them."""
    mrxs, zip_path = Path(mrxs), Path(zip_path)
    directory = mrxs.with_suffix("")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.write(mrxs, mrxs.name)
        for member in sorted(directory.iterdir()):
            archive.write(member, f"{directory.name}/{member.name}")
    return zip_path

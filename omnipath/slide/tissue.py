"""Tissue versus background (glass) on a low-resolution image.

Background is what an empty slide looks like: near-white and unsaturated. Anything else
(stain of any colour, dark debris, pen) counts as tissue: for choosing where to look, a
false "tissue" costs one wasted read, a false "background" can hide a lesion.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUND_MIN_BRIGHTNESS = 200  # mean of R, G, B (0..255)
BACKGROUND_MAX_CHROMA = 20  # max(R, G, B) - min(R, G, B)


def background_mask(rgb: np.ndarray) -> np.ndarray:
    """H×W bool: True where an H×W×3 (or ×4: transparent counts as background) uint8
    image shows glass."""
    pixels = rgb[..., :3].astype(np.int16)
    brightness = pixels.sum(axis=-1) / 3.0
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    background = (brightness >= BACKGROUND_MIN_BRIGHTNESS) & (chroma <= BACKGROUND_MAX_CHROMA)
    if rgb.shape[-1] == 4:
        background |= rgb[..., 3] == 0
    return background


def tissue_fraction(image: Image.Image | np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """float32 grid_rows×grid_cols: the fraction of tissue pixels in each cell of a
    grid_rows×grid_cols tiling of the whole image (cells split the pixels as evenly as
    possible; an image smaller than the grid repeats its pixels)."""
    grid_rows, grid_cols = grid
    if grid_rows <= 0 or grid_cols <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    else:
        rgb = np.asarray(image)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError("cannot measure tissue on an empty image")
    tissue = ~background_mask(rgb)
    height, width = tissue.shape
    # Integral image: each cell's count is four lookups, whatever the cell size.
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = tissue.cumsum(axis=0).cumsum(axis=1)
    row_edges = (np.arange(grid_rows + 1) * height) // grid_rows
    col_edges = (np.arange(grid_cols + 1) * width) // grid_cols
    row_start, row_end = row_edges[:-1], row_edges[1:]
    col_start, col_end = col_edges[:-1], col_edges[1:]
    # Cells thinner than a pixel borrow the pixel they fall on.
    row_end = np.maximum(row_end, np.minimum(row_start + 1, height))
    col_end = np.maximum(col_end, np.minimum(col_start + 1, width))
    row_start = np.minimum(row_start, row_end - 1)
    col_start = np.minimum(col_start, col_end - 1)
    counts = (
        integral[np.ix_(row_end, col_end)]
        - integral[np.ix_(row_start, col_end)]
        - integral[np.ix_(row_end, col_start)]
        + integral[np.ix_(row_start, col_start)]
    )
    areas = np.outer(row_end - row_start, col_end - col_start)
    return (counts / areas).astype(np.float32)

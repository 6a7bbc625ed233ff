"""Nucleus boxes in a small H&E patch, from its pixels (the synthetic slides do not export
nucleus positions): the ground truth of the synthetic `nuclei` task."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _connected_components(foreground: np.ndarray) -> np.ndarray:
    """4-connected labels of a small boolean image (0 = background), by label propagation."""
    height, width = foreground.shape
    labels = np.where(foreground, np.arange(1, height * width + 1).reshape(height, width), 0)
    while True:
        padded = np.pad(labels, 1)
        neighbours = np.stack(
            [
                padded[1:-1, 1:-1],
                padded[:-2, 1:-1],
                padded[2:, 1:-1],
                padded[1:-1, :-2],
                padded[1:-1, 2:],
            ]
        ).max(axis=0)
        updated = np.where(foreground, neighbours, 0)
        if np.array_equal(updated, labels):
            return labels
        labels = updated


def nucleus_boxes(
    patch: Image.Image, *, max_nuclei: int, min_area: int = 6
) -> list[tuple[float, float, float, float]]:
    """Boxes (fractions of the patch, x0 y0 x1 y1) of the `max_nuclei` largest nuclei.

    A pixel is nuclear when its red-channel optical density exceeds 0.45: hematoxylin absorbs
    red strongly, eosin hardly (the stain vectors of omnipath.synth.texture). Components under
    `min_area` pixels are noise. Sorted top-to-bottom, then left-to-right.
    """
    rgb = np.asarray(patch.convert("RGB"), dtype=np.float32)
    red_od = -np.log(np.clip(rgb[..., 0], 1.0, 255.0) / 255.0)
    labels = _connected_components(red_od > 0.45)
    height, width = labels.shape
    found = []
    for value in np.unique(labels):
        if value == 0:
            continue
        ys, xs = np.nonzero(labels == value)
        if ys.size < min_area:
            continue
        found.append(
            (
                ys.size,
                xs.min() / width,
                ys.min() / height,
                (xs.max() + 1) / width,
                (ys.max() + 1) / height,
            )
        )
    found.sort(key=lambda item: -item[0])
    boxes = [tuple(float(v) for v in item[1:]) for item in found[:max_nuclei]]
    return sorted(boxes, key=lambda b: (round(b[1], 1), b[0]))

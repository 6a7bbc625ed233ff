"""Synthetic H&E whole-slide images with ground truth (lesion rectangles, grades, masks).

Used for the sample slide, the tests, the benchmarks and training data. See writer.py.
"""

from omnipath.synth.writer import (
    Lesion,
    SyntheticSlide,
    labels_path_for,
    masks_path_for,
    read_synthetic_labels,
    write_synthetic_slide,
)

__all__ = [
    "Lesion",
    "SyntheticSlide",
    "labels_path_for",
    "masks_path_for",
    "read_synthetic_labels",
    "write_synthetic_slide",
]

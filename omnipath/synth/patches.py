"""Labelled tissue patches straight from the texture generator (no whole slide is written).

Stage 0 of omnipath-mini's training (`omnipath.mini.towers`) pretrains the vision towers on
these: each patch is a crop of one class texture (`omnipath.synth.texture`), rendered at a
slide's level-0 resolution, area-averaged to the detail magnification (what PGDFC reads),
recoloured by a random stain gain the way the slide writer varies stain across a slide.

Classes (`PATCH_CLASSES`): glass, normal stroma, carcinoma grade 1–3, inflammation grade 1–3.
As on the slides, the grades of one kind share their mean colour (the kind's grade-2
texture sets it), so a grade is told by nuclear size, crowding and chromatin only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnipath.synth.texture import (
    CARCINOMA_NUCLEI,
    INFLAMMATION_NUCLEI,
    STROMA_NUCLEI,
    halve,
    render_background,
    render_lesion,
    render_stroma,
)

# (kind, grade); grade 0 = no grade (glass, stroma)
PATCH_CLASSES: tuple[tuple[str, int], ...] = (
    ("background", 0),
    ("stroma", 0),
    ("carcinoma", 1),
    ("carcinoma", 2),
    ("carcinoma", 3),
    ("inflammation", 1),
    ("inflammation", 2),
    ("inflammation", 3),
)
KINDS = ("background", "stroma", "carcinoma", "inflammation")
STAIN_GAIN_SPREAD = 0.12  # ± relative optical-density gain per channel (the writer: ≈ ±0.1)


@dataclass
class PatchBatch:
    """images N×side×side×3 uint8; class_index, kind_index, grade (0 = none) N int64;
    log_density N float32: log of nuclei per 1000 µm² (0 for glass)."""

    images: np.ndarray
    class_index: np.ndarray
    kind_index: np.ndarray
    grade: np.ndarray
    log_density: np.ndarray


def _density(kind: str, grade: int) -> float:
    style = {
        "stroma": STROMA_NUCLEI,
        "carcinoma": CARCINOMA_NUCLEI.get(grade),
        "inflammation": INFLAMMATION_NUCLEI.get(grade),
    }.get(kind)
    return 0.0 if style is None else float(np.log(1000.0 / style.area_per_cell_um2))


def _texture(rng: np.random.Generator, kind: str, grade: int, size: int, px_per_um: float):
    if kind == "background":
        return render_background(rng, size)
    if kind == "stroma":
        return render_stroma(rng, size, px_per_um)
    _, reference = render_lesion(rng, size // 2, px_per_um, kind, 2)
    rgb, _ = render_lesion(rng, size, px_per_um, kind, grade, reference)
    return rgb


def _stained(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """I' = 255·(I/255)^gain per channel: the writer's stain variation (a gain on OD)."""
    gains = 1.0 + rng.uniform(-STAIN_GAIN_SPREAD, STAIN_GAIN_SPREAD, size=3)
    unit = np.clip(rgb.astype(np.float32) / 255.0, 1.0 / 255.0, 1.0)
    return np.clip(255.0 * unit ** gains.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)


def render_patch_batch(
    rng: np.random.Generator,
    n_textures: int,
    *,
    side: int = 64,
    slide_mpp: float = 0.25,
    detail_mpp: float = 0.5,
    crops_per_texture: int = 4,
) -> PatchBatch:
    """`n_textures` textures (classes drawn uniformly), each cut into `crops_per_texture`
    random side×side crops with a random flip / quarter turn: n_textures·crops patches.

    Textures are rendered at `slide_mpp` and area-averaged by 2 per halving down to
    `detail_mpp` (a power-of-two ratio), as the slide's pyramid and PGDFC's reads are."""
    halvings = int(round(np.log2(detail_mpp / slide_mpp)))
    if halvings < 0 or not np.isclose(slide_mpp * 2**halvings, detail_mpp):
        raise ValueError("detail_mpp must be slide_mpp times a power of two")
    size = 2 * side * 2**halvings
    images, classes = [], []
    for _ in range(n_textures):
        index = int(rng.integers(len(PATCH_CLASSES)))
        kind, grade = PATCH_CLASSES[index]
        texture = _texture(rng, kind, grade, size, 1.0 / slide_mpp)
        for _ in range(halvings):
            texture = halve(texture)
        texture = _stained(rng, texture)
        for _ in range(crops_per_texture):
            y, x = rng.integers(0, texture.shape[0] - side + 1, size=2)
            crop = np.rot90(texture[y : y + side, x : x + side], k=int(rng.integers(4)))
            images.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            classes.append(index)
    class_index = np.asarray(classes, dtype=np.int64)
    kinds = [PATCH_CLASSES[c][0] for c in classes]
    return PatchBatch(
        images=np.ascontiguousarray(np.stack(images)),
        class_index=class_index,
        kind_index=np.asarray([KINDS.index(k) for k in kinds], dtype=np.int64),
        grade=np.asarray([PATCH_CLASSES[c][1] for c in classes], dtype=np.int64),
        log_density=np.asarray([_density(*PATCH_CLASSES[c]) for c in classes], dtype=np.float32),
    )

"""Periodic H&E-like texture tiles, one per tissue class, rendered once per slide.

Every texture is P×P pixels and wraps around (toroidal): nuclei that cross an edge continue
on the other side, so a slide of any size is painted by reading the texture at
(x mod P, y mod P) with no seams. That is what makes a 60k × 40k slide cheap: the expensive
cell-scale rendering happens for a few P×P squares, and the writer reuses their tiles.

Rendering happens in optical-density space (Beer-Lambert): a hematoxylin and an eosin
concentration map, mixed with stain vectors, then RGB = 255·exp(-OD). Lower pyramid levels
use the same textures area-averaged by 2, 4, 8, ... (so every level is exact, and nothing is
ever downsampled from a big level-0 image).

All sizes that describe tissue are in microns and converted with the slide's mpp, so a
slide written at 0.5 µm/px shows the same cells as one at 0.25 µm/px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stain optical-density vectors (RGB), scaled so that concentration ~1 is a dark stain.
HEMATOXYLIN_OD = np.array([0.50, 0.80, 0.30], dtype=np.float32) * 1.45
EOSIN_OD = np.array([0.10, 0.95, 0.45], dtype=np.float32) * 0.85
BACKGROUND_OD = np.array([0.035, 0.04, 0.03], dtype=np.float32)


@dataclass(frozen=True)
class NucleusStyle:
    """Cell-scale parameters of one tissue class (all lengths in microns)."""

    diameter_um: float  # mean nuclear diameter (long axis)
    pleomorphism: float  # relative standard deviation of the diameter
    elongation: float  # long / short axis
    area_per_cell_um2: float  # tissue area per nucleus (inverse density)
    hematoxylin: float  # stain concentration inside a nucleus
    chromatin_clumping: float  # 0 = fine even chromatin, 1 = coarse clumps
    contour_irregularity: float  # 0 = smooth oval, ~0.25 = notched
    nucleoli: float  # probability that a nucleus shows a prominent nucleolus


STROMA_NUCLEI = NucleusStyle(9.0, 0.15, 3.2, 260.0, 0.85, 0.15, 0.05, 0.0)

# Carcinoma: nuclear size, pleomorphism, crowding and chromatin rise with grade.
CARCINOMA_NUCLEI = {
    1: NucleusStyle(6.5, 0.08, 1.25, 95.0, 0.70, 0.10, 0.03, 0.02),
    2: NucleusStyle(8.5, 0.18, 1.35, 105.0, 0.85, 0.45, 0.12, 0.25),
    3: NucleusStyle(11.0, 0.32, 1.45, 150.0, 1.00, 0.85, 0.25, 0.70),
}
# Inflammation: small round dark lymphocyte nuclei; the grade is how densely they pack.
INFLAMMATION_NUCLEI = {
    1: NucleusStyle(5.5, 0.08, 1.1, 110.0, 1.05, 0.2, 0.02, 0.0),
    2: NucleusStyle(5.5, 0.08, 1.1, 60.0, 1.05, 0.2, 0.02, 0.0),
    3: NucleusStyle(5.5, 0.08, 1.1, 36.0, 1.05, 0.2, 0.02, 0.0),
}
LESION_KINDS = ("carcinoma", "inflammation")


def periodic_noise(
    rng: np.random.Generator,
    size: int,
    sigma_px: float,
    *,
    elongation: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """size×size float32 Gaussian-filtered white noise that wraps around; zero mean, unit std.

    `elongation` > 1 stretches the correlation along `angle` (fibres)."""
    white = rng.standard_normal((size, size), dtype=np.float32)
    freq_y = np.fft.fftfreq(size).astype(np.float32)[:, None]
    freq_x = np.fft.rfftfreq(size).astype(np.float32)[None, :]
    along = freq_x * np.cos(angle) + freq_y * np.sin(angle)
    across = -freq_x * np.sin(angle) + freq_y * np.cos(angle)
    sigma_along = sigma_px * elongation
    sigma_across = sigma_px
    gain = np.exp(-2.0 * np.pi**2 * ((sigma_along * along) ** 2 + (sigma_across * across) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(size, size))
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _fibrous_eosin(rng: np.random.Generator, size: int, px_per_um: float) -> np.ndarray:
    """Eosin concentration of collagen stroma: wavy fibres whose direction drifts, with
    pale clefts between bundles."""
    fibres = []
    for angle in rng.uniform(0.0, np.pi, size=3):
        fibres.append(periodic_noise(rng, size, 1.2 * px_per_um, elongation=8.0, angle=angle))
    weights = np.stack([periodic_noise(rng, size, 60.0 * px_per_um) for _ in fibres])
    weights = np.exp(2.5 * weights)
    weights /= weights.sum(axis=0, keepdims=True)
    fibre = sum(w * f for w, f in zip(weights, fibres, strict=True))
    clefts = periodic_noise(rng, size, 6.0 * px_per_um, elongation=4.0, angle=rng.uniform(0, np.pi))
    eosin = 0.55 + 0.16 * fibre
    eosin *= 0.5 + 0.5 * _smoothstep((clefts + 1.6) / 1.2)
    return np.clip(eosin, 0.0, 1.2).astype(np.float32)


def _stamp_nuclei(
    rng: np.random.Generator,
    hematoxylin: np.ndarray,
    eosin: np.ndarray,
    style: NucleusStyle,
    px_per_um: float,
    *,
    angle_field: np.ndarray | None = None,
) -> None:
    """Draw nuclei into the concentration maps in place (wrapping at the edges)."""
    size = hematoxylin.shape[0]
    area_um2 = (size / px_per_um) ** 2
    count = max(1, int(area_um2 / style.area_per_cell_um2))
    grain = periodic_noise(rng, size, 0.35 * px_per_um + 0.3)
    centres = rng.uniform(0.0, size, size=(count, 2))
    diameters = style.diameter_um * np.clip(
        rng.normal(1.0, style.pleomorphism, size=count), 0.5, 2.2
    )
    for (cy, cx), diameter_um in zip(centres, diameters, strict=True):
        semi_major = 0.5 * diameter_um * px_per_um
        semi_minor = semi_major / (style.elongation * rng.uniform(0.85, 1.15))
        if angle_field is not None:
            angle = angle_field[int(cy), int(cx)] + rng.normal(0.0, 0.25)
        else:
            angle = rng.uniform(0.0, np.pi)
        reach = int(np.ceil(semi_major * (1.0 + style.contour_irregularity) + 2))
        rows = np.arange(int(cy) - reach, int(cy) + reach + 1)
        cols = np.arange(int(cx) - reach, int(cx) + reach + 1)
        dy = (rows + 0.5 - cy)[:, None]
        dx = (cols + 0.5 - cx)[None, :]
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        radius = np.sqrt((along / semi_major) ** 2 + (across / semi_minor) ** 2)
        if style.contour_irregularity > 0:
            phi = np.arctan2(across, along)
            wobble = style.contour_irregularity * (
                rng.normal(0, 0.6) * np.cos(2 * phi + rng.uniform(0, 6.3))
                + rng.normal(0, 0.6) * np.cos(3 * phi + rng.uniform(0, 6.3))
            )
            radius = radius / (1.0 + wobble)
        edge_px = 0.6
        inside = _smoothstep((1.0 - radius) * semi_minor / edge_px)
        wrap_rows = rows % size
        wrap_cols = cols % size
        chromatin = grain[np.ix_(wrap_rows, wrap_cols)]
        # Coarse chromatin: dark clumps and clearing; fine chromatin: even staining.
        texture = (
            1.0 + 0.12 * chromatin + style.chromatin_clumping * 0.45 * np.clip(chromatin, -1, 2)
        )
        # A darker rim (the nuclear membrane) that atypical nuclei show more.
        rim = np.exp(-(((radius - 0.88) / 0.1) ** 2)) * (0.15 + 0.35 * style.chromatin_clumping)
        density = style.hematoxylin * inside * (texture + rim)
        if rng.random() < style.nucleoli:
            nucleolus_r = 0.12 * semi_minor + 0.6 * px_per_um
            offset_y, offset_x = rng.normal(0, 0.2 * semi_minor, size=2)
            spot = np.exp(-(((dy - offset_y) ** 2 + (dx - offset_x) ** 2) / nucleolus_r**2))
            density = density + 0.9 * spot * inside
            eosin[np.ix_(wrap_rows, wrap_cols)] += 0.5 * spot * inside
        block = hematoxylin[np.ix_(wrap_rows, wrap_cols)]
        hematoxylin[np.ix_(wrap_rows, wrap_cols)] = np.maximum(block, density.astype(np.float32))
        # Nuclei displace the cytoplasm / collagen: less eosin under them.
        eosin[np.ix_(wrap_rows, wrap_cols)] *= (1.0 - 0.6 * inside).astype(np.float32)


def _to_rgb(hematoxylin: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    optical_density = (
        hematoxylin[..., None] * HEMATOXYLIN_OD + eosin[..., None] * EOSIN_OD + BACKGROUND_OD
    )
    return np.clip(255.0 * np.exp(-optical_density) + 0.5, 0, 255).astype(np.uint8)


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Glass: near-white with a faint, low-saturation mottle (size×size×3 uint8)."""
    mottle = periodic_noise(rng, size, 8.0)
    eosin = np.clip(0.012 + 0.006 * mottle, 0, None)
    return _to_rgb(np.zeros_like(eosin), eosin)


def render_stroma(rng: np.random.Generator, size: int, px_per_um: float) -> np.ndarray:
    """Normal tissue: pink collagen with sparse spindle-shaped fibroblast nuclei."""
    eosin = _fibrous_eosin(rng, size, px_per_um)
    hematoxylin = np.zeros_like(eosin)
    angle_field = (np.pi * (0.5 + 0.5 * np.tanh(periodic_noise(rng, size, 40 * px_per_um)))).astype(
        np.float32
    )
    _stamp_nuclei(rng, hematoxylin, eosin, STROMA_NUCLEI, px_per_um, angle_field=angle_field)
    return _to_rgb(hematoxylin, eosin)


def render_lesion(
    rng: np.random.Generator,
    size: int,
    px_per_um: float,
    kind: str,
    grade: int,
    target_mean_rgb: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A lesion texture; returns (size×size×3 uint8 RGB, its mean RGB).

    If `target_mean_rgb` is given, each channel's optical density is scaled so that the
    texture's mean colour equals the target: grades of one kind then look alike when averaged over more
    than a few cells (a thumbnail) and differ only at cellular scale.
    """
    if kind == "carcinoma":
        style = CARCINOMA_NUCLEI[grade]
        # Epithelial cytoplasm: paler, lilac, finely granular; cell borders faintly visible.
        granular = periodic_noise(rng, size, 0.8 * px_per_um)
        eosin = (0.36 + 0.05 * granular).astype(np.float32)
        hematoxylin = (0.07 + 0.015 * granular).astype(np.float32)
        _stamp_nuclei(rng, hematoxylin, eosin, style, px_per_um)
    elif kind == "inflammation":
        style = INFLAMMATION_NUCLEI[grade]
        eosin = _fibrous_eosin(rng, size, px_per_um) * 0.85
        hematoxylin = np.zeros_like(eosin)
        _stamp_nuclei(rng, hematoxylin, eosin, style, px_per_um)
    else:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
    optical_density = (
        hematoxylin[..., None] * HEMATOXYLIN_OD + eosin[..., None] * EOSIN_OD + BACKGROUND_OD
    )
    if target_mean_rgb is not None:
        for channel in range(3):
            optical_density[..., channel] *= _gain_for_mean(
                optical_density[..., channel], float(target_mean_rgb[channel])
            )
    rgb = np.clip(255.0 * np.exp(-optical_density) + 0.5, 0, 255).astype(np.uint8)
    return rgb, rgb.reshape(-1, 3).mean(axis=0)


def _gain_for_mean(optical_density: np.ndarray, target_mean: float) -> float:
    """The factor g with mean(255·exp(-g·OD)) = target_mean (bisection; the mean falls
    monotonically with g). Matching the mean of RGB, not of OD: a contrasty texture is
    lighter on average than a flat one with the same mean OD."""
    sample = optical_density.ravel()[:: max(1, optical_density.size // 262144)]
    low, high = 0.05, 20.0
    for _ in range(30):
        mid = (low * high) ** 0.5
        if 255.0 * np.exp(-mid * sample).mean() > target_mean:
            low = mid
        else:
            high = mid
    return (low * high) ** 0.5


def halve(texture: np.ndarray) -> np.ndarray:
    """Area-average a periodic texture by 2 in each direction (size must be even)."""
    height, width = texture.shape[:2]
    blocks = texture.reshape(height // 2, 2, width // 2, 2, *texture.shape[2:]).astype(np.float32)
    averaged = blocks.mean(axis=(1, 3))
    if texture.dtype == np.uint8:
        return np.clip(averaged + 0.5, 0, 255).astype(np.uint8)
    return averaged.astype(texture.dtype)

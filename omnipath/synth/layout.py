"""Where things are on a synthetic slide: tissue, lesions, and the label of any pixel.

Everything here is analytic in level-0 coordinates, so any pyramid level, any tile and the
low-resolution ground-truth mask are evaluated from the same functions at their own scale:
- tissue: a smooth random field on a coarse map (one value per `cell` level-0 pixels),
  interpolated bilinearly, plus a periodic "jitter" field that roughens its edge;
- lesions: wobbly ellipses placed well inside the tissue, never overlapping.

Labels: 0 = background (glass), 1 = normal tissue, 2 + i = lesion i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from omnipath.coords import L0Rect
from omnipath.synth.texture import LESION_KINDS, periodic_noise

BACKGROUND_LABEL = 0
TISSUE_LABEL = 1
FIRST_LESION_LABEL = 2
JITTER_AMPLITUDE = 0.12  # in tissue-field units; the map field has unit standard deviation
MAP_CELLS_ON_LONG_SIDE = 256


@dataclass(frozen=True)
class LesionShape:
    """A lesion: an ellipse (level-0 centre, radius, aspect, angle) with a wobbly outline."""

    kind: str
    grade: int
    l0_cx: float
    l0_cy: float
    l0_radius: float  # semi-axis along `angle`
    aspect: float  # other semi-axis / l0_radius (≤ 1)
    angle: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for k = 2, 3, ...

    def outline_scale(self, phi: np.ndarray) -> np.ndarray:
        """Outline radius (in units of the ellipse) at polar angle phi."""
        return self._outline_from_unit(np.cos(phi), np.sin(phi))

    def _outline_from_unit(self, cos_phi: np.ndarray, sin_phi: np.ndarray) -> np.ndarray:
        # cos(kφ + p) = Re(e^{ikφ}·e^{ip}); powers of e^{iφ} avoid arctan2 and k cosines
        # per pixel (this runs on every pixel of tiles that touch a lesion).
        unit = cos_phi + 1j * sin_phi
        power = unit
        scale = np.ones(np.shape(unit), dtype=np.float64)
        for amplitude, phase in self.harmonics:
            power = power * unit  # e^{ikφ}, k = 2, 3, ...
            scale += amplitude * (power * complex(math.cos(phase), math.sin(phase))).real
        return scale

    def contains(self, l0_x: np.ndarray, l0_y: np.ndarray) -> np.ndarray:
        """Boolean array (broadcast of l0_x and l0_y): inside the lesion."""
        dx = l0_x - self.l0_cx
        dy = l0_y - self.l0_cy
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        along = (dx * cos_a + dy * sin_a) / self.l0_radius
        across = (-dx * sin_a + dy * cos_a) / (self.l0_radius * self.aspect)
        rho = np.sqrt(along * along + across * across)
        safe_rho = np.maximum(rho, 1e-12)
        return rho < self._outline_from_unit(along / safe_rho, across / safe_rho)

    @property
    def max_l0_radius(self) -> float:
        return self.l0_radius * (1.0 + sum(abs(a) for a, _ in self.harmonics))

    def l0_rect(self, l0_width: int, l0_height: int) -> L0Rect:
        """Tight bounding rectangle of the outline (sampled finely), clipped to the slide."""
        phi = np.linspace(-np.pi, np.pi, 4096, endpoint=False)
        radius = self.outline_scale(phi)
        along = radius * np.cos(phi) * self.l0_radius
        across = radius * np.sin(phi) * self.l0_radius * self.aspect
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        xs = self.l0_cx + along * cos_a - across * sin_a
        ys = self.l0_cy + along * sin_a + across * cos_a
        x0 = max(0, math.floor(xs.min()))
        y0 = max(0, math.floor(ys.min()))
        x1 = min(l0_width, math.ceil(xs.max()) + 1)
        y1 = min(l0_height, math.ceil(ys.max()) + 1)
        return L0Rect(x0, y0, x1 - x0, y1 - y0)


class Layout:
    """The tissue map and the lesions of one synthetic slide."""

    def __init__(
        self,
        l0_width: int,
        l0_height: int,
        rng: np.random.Generator,
        n_lesions: int,
        stain_rng: np.random.Generator | None = None,
    ) -> None:
        self.l0_width = l0_width
        self.l0_height = l0_height
        # ~256 cells on the long side, but at least 16 on the short one (long thin slides).
        self.cell = min(
            max(l0_width, l0_height) / MAP_CELLS_ON_LONG_SIDE, min(l0_width, l0_height) / 16
        )
        map_w = math.ceil(l0_width / self.cell) + 1
        map_h = math.ceil(l0_height / self.cell) + 1
        self.tissue_map = self._tissue_map(rng, map_w, map_h)
        self._map_image = Image.fromarray(self.tissue_map)
        # The edge jitter moves the boundary by about amplitude / field gradient; the field
        # changes per map cell, so big cells (big slides) need a smaller amplitude.
        self.jitter_amplitude = JITTER_AMPLITUDE * min(1.0, 48.0 / self.cell)
        self.lesions = self._place_lesions(rng, n_lesions)
        # Stain variation across the slide (a real slide is never evenly stained): smooth
        # per-channel gains on optical density, which also hide the textures' period.
        self._stain_images: list[Image.Image] = []
        if stain_rng is not None:
            side = max(map_w, map_h)
            intensity = periodic_noise(stain_rng, side, side / 10.0)[:map_h, :map_w]
            hue = periodic_noise(stain_rng, side, side / 8.0)[:map_h, :map_w]
            gains = (
                (1.0 + 0.10 * intensity) * (1.0 + 0.04 * hue),
                1.0 + 0.10 * intensity,
                (1.0 + 0.10 * intensity) * (1.0 - 0.04 * hue),
            )
            self._stain_images = [Image.fromarray(g.astype(np.float32)) for g in gains]

    @staticmethod
    def _tissue_map(rng: np.random.Generator, map_w: int, map_h: int) -> np.ndarray:
        side = max(map_w, map_h)
        short = min(map_w, map_h)
        noise = periodic_noise(rng, side, min(side / 14.0, short / 3.0))[:map_h, :map_w]
        # Keep a margin of glass around the edges, as on a real slide.
        rows = np.arange(map_h, dtype=np.float32)[:, None]
        cols = np.arange(map_w, dtype=np.float32)[None, :]
        to_edge = np.minimum(np.minimum(rows, map_h - 1 - rows), np.minimum(cols, map_w - 1 - cols))
        envelope = np.clip(to_edge / (0.1 * short), 0.0, 1.0)
        threshold = np.quantile(noise[envelope >= 1.0], 0.5)
        return ((noise - threshold) - 3.0 * (1.0 - envelope)).astype(np.float32)

    def stain_gains(
        self, l0_x0: float, l0_y0: float, l0_step: float, cols: int, rows: int
    ) -> np.ndarray | None:
        """rows×cols×3 float32 optical-density gains (≈ 1 ± 0.1) per RGB channel at pixel
        centres l0_x0 + (i + ½)·l0_step; None when the slide has no stain variation."""
        if not self._stain_images:
            return None
        return np.stack(
            [
                self._interpolate(image, l0_x0, l0_y0, l0_step, cols, rows, 1.0)
                for image in self._stain_images
            ],
            axis=-1,
        )

    def tissue_field(
        self, l0_x0: float, l0_y0: float, l0_step: float, cols: int, rows: int
    ) -> np.ndarray:
        """rows×cols float32 tissue field at pixel centres l0_x0 + (i + ½)·l0_step.

        Map value (j, i) sits at level-0 point ((i + ½)·cell, (j + ½)·cell), which is the
        pixel-centre convention PIL's box resize uses, so this is plain bilinear interpolation
        when upsampling and an area filter when downsampling."""
        # Tiles at the right / bottom edge reach past the map (their pixels there are never
        # shown): the part outside it is glass.
        return self._interpolate(self._map_image, l0_x0, l0_y0, l0_step, cols, rows, -10.0)

    def _interpolate(
        self,
        image: Image.Image,
        l0_x0: float,
        l0_y0: float,
        l0_step: float,
        cols: int,
        rows: int,
        outside: float,
    ) -> np.ndarray:
        """Bilinear (area when shrinking) samples of a map-grid image at pixel centres;
        `outside` past the map's right / bottom edge."""
        map_h, map_w = self.tissue_map.shape
        cols_in = max(0, min(cols, math.floor((map_w * self.cell - l0_x0) / l0_step)))
        rows_in = max(0, min(rows, math.floor((map_h * self.cell - l0_y0) / l0_step)))
        field = np.full((rows, cols), outside, dtype=np.float32)
        if cols_in and rows_in:
            box = (
                l0_x0 / self.cell,
                l0_y0 / self.cell,
                min(map_w, (l0_x0 + cols_in * l0_step) / self.cell),
                min(map_h, (l0_y0 + rows_in * l0_step) / self.cell),
            )
            inside = image.resize((cols_in, rows_in), Image.Resampling.BILINEAR, box=box)
            field[:rows_in, :cols_in] = np.asarray(inside, dtype=np.float32)
        return field

    def labels(
        self,
        l0_x0: float,
        l0_y0: float,
        l0_step: float,
        cols: int,
        rows: int,
        jitter: np.ndarray | None,
    ) -> np.ndarray:
        """rows×cols uint8 labels at pixel centres l0_x0 + (i + ½)·l0_step.

        `jitter` (rows×cols, unit std) roughens the tissue edge; None leaves it smooth."""
        field = self.tissue_field(l0_x0, l0_y0, l0_step, cols, rows)
        if jitter is not None:
            field = field + self.jitter_amplitude * jitter
        labels = (field > 0).astype(np.uint8)
        l0_x1 = l0_x0 + cols * l0_step
        l0_y1 = l0_y0 + rows * l0_step
        for index, lesion in enumerate(self.lesions):
            reach = lesion.max_l0_radius
            if (
                lesion.l0_cx + reach < l0_x0
                or lesion.l0_cx - reach > l0_x1
                or lesion.l0_cy + reach < l0_y0
                or lesion.l0_cy - reach > l0_y1
            ):
                continue
            xs = l0_x0 + (np.arange(cols, dtype=np.float64) + 0.5) * l0_step
            ys = l0_y0 + (np.arange(rows, dtype=np.float64) + 0.5) * l0_step
            inside = lesion.contains(xs[None, :], ys[:, None])
            labels[inside] = FIRST_LESION_LABEL + index
        return labels

    def _place_lesions(self, rng: np.random.Generator, n_lesions: int) -> list[LesionShape]:
        """Rejection sampling: each lesion lies where the tissue field is well above its
        edge (so the rough edge never cuts it) and apart from the others."""
        lesions: list[LesionShape] = []
        candidates = np.argwhere(self.tissue_map > 0.6)
        short_side = min(self.l0_width, self.l0_height)
        for _ in range(n_lesions):
            kind = LESION_KINDS[0] if rng.random() < 0.6 else LESION_KINDS[1]
            grade = int(rng.integers(1, 4))
            placed = None
            radius_scale = 1.0
            for attempt in range(400):
                if attempt and attempt % 100 == 0:
                    radius_scale *= 0.7
                if len(candidates) == 0:
                    break
                row, col = candidates[rng.integers(len(candidates))]
                harmonics = tuple(
                    (float(rng.uniform(0.0, 0.09)), float(rng.uniform(0, 2 * np.pi)))
                    for _ in range(4)
                )
                shape = LesionShape(
                    kind=kind,
                    grade=grade,
                    l0_cx=float((col + rng.uniform()) * self.cell),
                    l0_cy=float((row + rng.uniform()) * self.cell),
                    l0_radius=float(rng.uniform(0.06, 0.13) * short_side * radius_scale),
                    aspect=float(rng.uniform(0.6, 1.0)),
                    angle=float(rng.uniform(0, np.pi)),
                    harmonics=harmonics,
                )
                if self._fits(shape, lesions):
                    placed = shape
                    break
            if placed is not None:
                lesions.append(placed)
        return lesions

    def _fits(self, shape: LesionShape, others: list[LesionShape]) -> bool:
        reach = shape.max_l0_radius
        for other in others:
            gap = math.hypot(shape.l0_cx - other.l0_cx, shape.l0_cy - other.l0_cy)
            if gap < 1.15 * (reach + other.max_l0_radius):
                return False
        margin = reach * 1.1 + 2 * self.cell
        if (
            shape.l0_cx - margin < 0
            or shape.l0_cy - margin < 0
            or shape.l0_cx + margin > self.l0_width
            or shape.l0_cy + margin > self.l0_height
        ):
            return False
        # Every map cell around the lesion must be clearly tissue.
        c0 = max(0, int((shape.l0_cx - margin) / self.cell))
        c1 = int((shape.l0_cx + margin) / self.cell) + 1
        r0 = max(0, int((shape.l0_cy - margin) / self.cell))
        r1 = int((shape.l0_cy + margin) / self.cell) + 1
        window = self.tissue_map[r0:r1, c0:c1]
        rows = (np.arange(r0, r0 + window.shape[0]) + 0.5) * self.cell
        cols = (np.arange(c0, c0 + window.shape[1]) + 0.5) * self.cell
        near = np.hypot(cols[None, :] - shape.l0_cx, rows[:, None] - shape.l0_cy) <= margin
        return bool(np.all(window[near] > 4 * JITTER_AMPLITUDE))

"""Polygons from a binary bitmap, by tracing pixel edges (pure numpy; no OpenCV or
scikit-image in this project).

Rings follow the cracks between pixels, so they are exact: the polygon covers exactly
the foreground pixels. Coordinates are bitmap pixel corners (x right, y down): pixel
(row r, col c) spans [c, c+1] × [r, r+1]. Outer rings run clockwise on screen (positive
shoelace area with y down), holes counter-clockwise. Diagonal neighbours are separate
pieces (4-connected foreground); a ring that would touch itself at such a diagonal is
split there, so every ring is simple (rings of one polygon may touch at a point, which
GeoJSON / JTS accept).
"""

from __future__ import annotations

import numpy as np

# Directions on screen: 0 right, 1 down, 2 left, 3 up. (d + 1) % 4 is a right turn.
_STEP = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)], dtype=np.int64)


def _boundary_edges(bitmap: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """Outgoing directed boundary edges per vertex, foreground on the right."""
    padded = np.pad(bitmap, 1)
    fg = padded[1:-1, 1:-1]
    out: dict[tuple[int, int], list[int]] = {}
    # (mask of pixels with that edge, start corner offset (dx, dy), direction)
    sides = (
        (fg & ~padded[:-2, 1:-1], (0, 0), 0),  # top edge, going right
        (fg & ~padded[1:-1, 2:], (1, 0), 1),  # right edge, going down
        (fg & ~padded[2:, 1:-1], (1, 1), 2),  # bottom edge, going left
        (fg & ~padded[1:-1, :-2], (0, 1), 3),  # left edge, going up
    )
    for has_edge, (dx, dy), direction in sides:
        rows, cols = np.nonzero(has_edge)
        for x, y in zip((cols + dx).tolist(), (rows + dy).tolist(), strict=True):
            out.setdefault((x, y), []).append(direction)
    return out


def _compress(points: list[tuple[int, int]]) -> np.ndarray:
    """Drops vertices in the middle of straight runs; returns a closed K×2 ring."""
    ring = np.asarray(points, dtype=np.int64)
    prev = np.roll(ring, 1, axis=0)
    nxt = np.roll(ring, -1, axis=0)
    d_in = np.sign(ring - prev)
    d_out = np.sign(nxt - ring)
    corners = ring[np.any(d_in != d_out, axis=1)]
    return np.vstack([corners, corners[:1]])


def _take(edges: dict[tuple[int, int], list[int]], vertex: tuple[int, int], direction: int) -> None:
    outgoing = edges[vertex]
    outgoing.remove(direction)
    if not outgoing:
        del edges[vertex]


def trace_rings(bitmap: np.ndarray) -> list[np.ndarray]:
    """Every boundary ring of `bitmap` (H×W, truthy = foreground) as a closed K×2 int
    array of (x, y) pixel corners (first point repeated last)."""
    bitmap = np.asarray(bitmap).astype(bool)
    if bitmap.ndim != 2:
        raise ValueError(f"bitmap must be H×W, not {bitmap.shape}")
    edges = _boundary_edges(bitmap)
    rings = []
    while edges:
        start = next(iter(edges))
        start_dir = edges[start][0]
        _take(edges, start, start_dir)
        points = [start]
        vertex, direction = start, start_dir
        while True:
            vertex = (vertex[0] + int(_STEP[direction, 0]), vertex[1] + int(_STEP[direction, 1]))
            choices = set(edges.get(vertex, ()))
            if vertex == start:
                choices.add(start_dir)
            # At a saddle (two edges out), turning right keeps to the same pixel.
            for turn in (1, 0, 3):
                if (direction + turn) % 4 in choices:
                    direction = (direction + turn) % 4
                    break
            else:  # every boundary edge has a successor; this would be a bug
                raise RuntimeError(f"open boundary at {vertex}")
            if vertex == start and direction == start_dir:
                break
            points.append(vertex)
            _take(edges, vertex, direction)
        rings.extend(_compress(loop) for loop in _simple_loops(points))
    return rings


def _simple_loops(points: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Splits a closed walk that touches itself (at a saddle vertex: a pocket of
    background reaching in through a diagonal, or an island touching a hole) into
    simple loops. Each loop keeps its direction, so its area sign still says shell
    (> 0) or hole (< 0), and the signed areas add up to the same total."""
    loops = []
    stack: list[tuple[int, int]] = []
    where: dict[tuple[int, int], int] = {}
    for vertex in points:
        if vertex in where:
            start = where[vertex]
            loop = stack[start:]
            for v in loop[1:]:
                del where[v]
            del stack[start + 1 :]
            loops.append(loop)
        else:
            where[vertex] = len(stack)
            stack.append(vertex)
    loops.append(stack)
    return loops


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area with y down: > 0 for outer rings, < 0 for holes."""
    x, y = ring[:-1, 0].astype(float), ring[:-1, 1].astype(float)
    xn, yn = ring[1:, 0].astype(float), ring[1:, 1].astype(float)
    return float(np.sum(x * yn - xn * y) / 2.0)


def _contains(ring: np.ndarray, x: float, y: float) -> bool:
    """Even-odd ray casting; (x, y) never lies on an edge here (half-integer point)."""
    xs, ys = ring[:-1, 0].astype(float), ring[:-1, 1].astype(float)
    xe, ye = ring[1:, 0].astype(float), ring[1:, 1].astype(float)
    crosses = (ys > y) != (ye > y)
    dy = np.where(crosses, ye - ys, 1.0)
    x_at = xs + (y - ys) * (xe - xs) / dy
    return bool(np.count_nonzero(crosses & (x < x_at)) % 2)


def _inside_point(hole: np.ndarray) -> tuple[float, float]:
    """The centre of a background pixel just inside `hole` (left of its first edge)."""
    p0, p1 = hole[0], hole[1]
    direction = np.sign(p1 - p0)
    left = np.array([direction[1], -direction[0]])  # left turn on screen (y down)
    point = p0 + 0.5 * direction + 0.5 * left
    return float(point[0]), float(point[1])


def bitmap_polygons(bitmap: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons of the foreground: each [outer ring, hole rings...], rings as closed
    K×2 int arrays of pixel corners. Empty list for an all-background bitmap."""
    rings = trace_rings(bitmap)
    areas = [signed_area(r) for r in rings]
    outers = [i for i, a in enumerate(areas) if a > 0]
    polygons: dict[int, list[np.ndarray]] = {i: [rings[i]] for i in outers}
    for i, area in enumerate(areas):
        if area >= 0:
            continue
        x, y = _inside_point(rings[i])
        owners = [j for j in outers if _contains(rings[j], x, y)]
        if owners:  # the innermost outer ring around the hole owns it
            polygons[min(owners, key=lambda j: areas[j])].append(rings[i])
    return [polygons[i] for i in outers]

"""Checks and normalizes what the web layer hands to the session log.

Plain shapes (what `Answer.to_dict()` produces; objects with the same attributes, such
as the engine's Region / Box / MaskResult / L0Rect dataclasses, work too):

- region: {rank: int, score: float, l0_rect: [x, y, w, h]}
- box:    {rel: [x0, y0, x1, y1], l0_rect: [x, y, w, h], label: str}
- mask:   {l0_rect: [x, y, w, h], png: bytes | base64 str}, or {l0_rect, bitmap: H×W bool},
          or {l0_rect, shape: [H, W], rle: [runs...]} (row-major run lengths starting with
          a run of False, as the engine's MaskResult.to_dict() writes); optional label: str
- l0_rect may also be {x, y, w, h} and rel {x0, y0, x1, y1} (the engine's to_dict()).

`l0_` = level-0 slide pixels; `rel` = fractions 0..1 of the level-0 width / height.
Everything here is validated before anything is written, and every problem raises
InvalidRecordError with a sentence naming the offending item.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnipath.errors import echo
from storage.errors import InvalidRecordError

# A mask PNG larger than this is refused: masks are 1-bit bitmaps of at most a few
# thousand pixels a side, a few hundred KB as PNG.
MAX_MASK_PNG_BYTES = 16 * 1024 * 1024
MAX_MASK_SIDE = 8192


@dataclass(frozen=True)
class MaskRecord:
    l0_rect: list[int]  # [x, y, w, h], level-0 pixels
    png: bytes
    width: int  # bitmap pixels
    height: int
    label: str | None


def _get(item: Any, key: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(key, default)
    return getattr(item, key, default)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidRecordError(f"{what} must be a number, not {echo(value)}.")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecordError(f"{what} must be a finite number, not {echo(value)}.")
    return number


def _four_parts(value: Any, keys: tuple[str, str, str, str], unit: str, what: str) -> list[Any]:
    """The four parts of a rectangle given as a sequence, a mapping or an object with the
    attributes `keys` (not yet checked as numbers); `unit` names them in the error."""
    layout = f"[{', '.join(keys)}]"
    if isinstance(value, Mapping) or all(hasattr(value, k) for k in keys):
        parts = [_get(value, k) for k in keys]
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        parts = list(value)
    else:
        raise InvalidRecordError(f"{what} must be {layout} {unit}, not {echo(value)}.")
    if len(parts) != 4:
        raise InvalidRecordError(f"{what} must have 4 numbers {layout}, not {len(parts)}.")
    return parts


def l0_rect(value: Any, what: str) -> list[int]:
    """[x, y, w, h] as ints from a sequence, a mapping or an object with x, y, w, h."""
    parts = _four_parts(value, ("x", "y", "w", "h"), "in level-0 pixels", what)
    out = []
    for name, part in zip("xywh", parts, strict=True):
        number = _finite(part, f"{what}.{name}")
        if number != round(number):
            raise InvalidRecordError(
                f"{what}.{name} must be a whole number of pixels, not {echo(part)}."
            )
        out.append(int(round(number)))
    x, y, w, h = out
    if x < 0 or y < 0:
        raise InvalidRecordError(f"{what} starts outside the slide (x={x}, y={y}).")
    if w <= 0 or h <= 0:
        raise InvalidRecordError(f"{what} is empty (w={w}, h={h}).")
    return out


def rel_box(value: Any, what: str) -> list[float]:
    """[x0, y0, x1, y1] as floats in 0..1 (x0 ≤ x1, y0 ≤ y1)."""
    parts = _four_parts(value, ("x0", "y0", "x1", "y1"), "fractions", what)
    # Clamped, not refused: a model may write 1.02; the l0_rect is what gets drawn.
    out = [min(1.0, max(0.0, _finite(p, f"{what}[{i}]"))) for i, p in enumerate(parts)]
    if out[0] > out[2] or out[1] > out[3]:
        raise InvalidRecordError(f"{what} has x0 > x1 or y0 > y1: {out}.")
    return out


def regions(items: Sequence[Any] | None) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(items or []):
        what = f"Region {i + 1}"
        rank = _get(item, "rank", i + 1)
        if not _is_int(rank):
            raise InvalidRecordError(f"{what}: rank must be an integer, not {echo(rank)}.")
        score = _get(item, "score")
        out.append(
            {
                "rank": int(rank),
                "score": None if score is None else _finite(score, f"{what}: score"),
                "l0_rect": l0_rect(_get(item, "l0_rect"), f"{what}: l0_rect"),
            }
        )
    return out


def boxes(items: Sequence[Any] | None) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(items or []):
        what = f"Box {i + 1}"
        label = _get(item, "label", "") or ""
        if not isinstance(label, str):
            raise InvalidRecordError(f"{what}: label must be text, not {echo(label)}.")
        rel = _get(item, "rel")
        out.append(
            {
                "rel": None if rel is None else rel_box(rel, f"{what}: rel"),
                "l0_rect": l0_rect(_get(item, "l0_rect"), f"{what}: l0_rect"),
                "label": label,
            }
        )
    return out


def _png_from_bitmap(bitmap: Any, what: str) -> bytes:
    array = np.asarray(bitmap)
    if array.ndim != 2 or array.size == 0:
        raise InvalidRecordError(f"{what}: bitmap must be a non-empty H×W array, not {array.shape}.")
    buf = io.BytesIO()
    Image.fromarray(array.astype(bool)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _bitmap_from_rle(runs: Any, shape: Any, what: str) -> np.ndarray:
    """Row-major run lengths starting with a run of False (the engine's `rle`)."""
    if not isinstance(shape, Sequence) or len(shape) != 2 or not all(_is_int(v) and v > 0 for v in shape):
        raise InvalidRecordError(f"{what}: shape must be [height, width], not {echo(shape)}.")
    height, width = int(shape[0]), int(shape[1])
    if max(height, width) > MAX_MASK_SIDE:
        raise InvalidRecordError(f"{what}: the bitmap is {width}×{height}, over {MAX_MASK_SIDE} px a side.")
    if not isinstance(runs, Sequence) or not all(_is_int(v) and v >= 0 for v in runs):
        raise InvalidRecordError(f"{what}: rle must be a list of run lengths ≥ 0.")
    if sum(int(v) for v in runs) != height * width:
        raise InvalidRecordError(f"{what}: the rle runs do not add up to {height}×{width} pixels.")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, np.asarray(runs, dtype=np.int64)).reshape(height, width)


def _png_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRecordError(f"{what}: png text is not valid base64.") from exc
    raise InvalidRecordError(f"{what}: png must be bytes or base64 text, not {type(value).__name__}.")


def mask(item: Any, index: int) -> MaskRecord:
    what = f"Mask {index + 1}"
    rect = l0_rect(_get(item, "l0_rect"), f"{what}: l0_rect")
    png = _get(item, "png")
    if png is None:
        bitmap = _get(item, "bitmap")
        if bitmap is None and _get(item, "rle") is not None:
            bitmap = _bitmap_from_rle(_get(item, "rle"), _get(item, "shape"), what)
        if bitmap is None:
            raise InvalidRecordError(f"{what} has neither a png, a bitmap nor an rle.")
        png = _png_from_bitmap(bitmap, what)
    else:
        png = _png_bytes(png, what)
    if len(png) > MAX_MASK_PNG_BYTES:
        raise InvalidRecordError(
            f"{what}: the PNG is {len(png)} bytes, over the {MAX_MASK_PNG_BYTES}-byte limit."
        )
    try:
        with Image.open(io.BytesIO(png)) as image:
            if image.format != "PNG":
                raise InvalidRecordError(f"{what}: the image is {image.format}, not PNG.")
            width, height = image.size
            if max(width, height) > MAX_MASK_SIDE:
                raise InvalidRecordError(
                    f"{what}: the bitmap is {width}×{height}, over {MAX_MASK_SIDE} px a side."
                )
            image.load()  # a truncated PNG fails here, not later at export
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidRecordError(f"{what}: the PNG cannot be decoded.", detail=str(exc)) from exc
    label = _get(item, "label")
    if label is not None and not isinstance(label, str):
        raise InvalidRecordError(f"{what}: label must be text, not {echo(label)}.")
    return MaskRecord(l0_rect=rect, png=png, width=width, height=height, label=label)


def masks(items: Sequence[Any] | None) -> list[MaskRecord]:
    return [mask(item, i) for i, item in enumerate(items or [])]


def number_map(value: Mapping[str, Any] | None, what: str, *, integers: bool) -> dict[str, Any]:
    """{name: number}; None values are dropped (a stage that did not run)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRecordError(
            f"{what} must be a mapping of names to numbers, not {echo(value)}."
        )
    out: dict[str, Any] = {}
    for key, number in value.items():
        if not isinstance(key, str):
            raise InvalidRecordError(f"{what}: key {echo(key)} must be text.")
        if number is None:
            continue
        if integers:
            if not _is_int(number):
                raise InvalidRecordError(
                    f"{what}[{echo(key)}] must be an integer, not {echo(number)}."
                )
            out[key] = int(number)
        else:
            out[key] = _finite(number, f"{what}[{echo(key)}]")
    return out


def json_safe(value: Any, what: str) -> Any:
    """A copy of `value` made of dict / list / str / int / float / bool / None only."""
    if value is None or isinstance(value, bool | str):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, float | np.floating):
        return _finite(value, what)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRecordError(f"{what}: key {echo(key)} must be text.")
            out[key] = json_safe(item, f"{what}.{key}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [json_safe(item, f"{what}[{i}]") for i, item in enumerate(value)]
    raise InvalidRecordError(f"{what} holds a {type(value).__name__}, which JSON cannot store.")

"""Boxes written by the model as text, parsed tolerantly.

The model writes detections in relative coordinates, e.g. "tumour: [0.12, 0.30, 0.25, 0.41]"
or "(0.12,0.30,0.25,0.41)", as x0, y0, x1, y1. `frame="slide"` (OmniPath's frame, DESIGN.md):
fractions of the slide's level-0 width/height (`rel_`). `frame="square"`: fractions of the
padded square thumbnail, as LLaVA-1.5 writes them; un-padded through `ThumbFrame`.

Malformed or out-of-range text is logged and skipped, never raised: a sentence the model
got wrong must not cost the user the rest of the answer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from omnipath.coords import L0Rect, RelBox, ThumbFrame

log = logging.getLogger(__name__)

BoxFrame = Literal["slide", "square"]
# What a model config's `box_format` says: relative x0, y0, x1, y1 of the slide (OmniPath) or
# of the padded square input (LLaVA-1.5 and its fine-tunes: their grounding data were
# normalised to the expand2square image, haotian-liu/LLaVA issue 606).
BOX_FORMAT_SLIDE = "rel_xyxy"
BOX_FORMAT_SQUARE = "rel_xyxy_square"

# Values this far outside 0–1 are taken as rounding and clipped; further out, the box is skipped.
CLIP_TOLERANCE = 0.05

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_SEP = r"\s*[,;\s]\s*"
# four numbers inside [] or (); a bracket holding anything else is left alone
_BOX_RE = re.compile(
    r"(?P<open>[\[(])\s*"
    rf"(?P<a>{_NUMBER}){_SEP}(?P<b>{_NUMBER}){_SEP}(?P<c>{_NUMBER}){_SEP}(?P<d>{_NUMBER})"
    r"\s*(?P<close>[\])])"
)
# any bracket group that starts like coordinates, to log the malformed ones
_CANDIDATE_RE = re.compile(rf"[\[(]\s*{_NUMBER}\s*[,;]\s*{_NUMBER}[^\[\]()]*[\])]?")
# where a label stops, looking backwards from a box: sentence punctuation, a newline, a box
_LABEL_STOP_RE = re.compile(r"[.;!?\n\])]")
_LEADING_FILLER = re.compile(r"^(?:and|or|a|an|the|there is|there are|found|with)\s+", re.I)
_TRAILING_FILLER = re.compile(r"\s*(?:[:=\-–]|\b(?:at|in|is|are|of|box|located)\b)\s*$", re.I)
_MAX_LABEL_WORDS = 6


@dataclass(frozen=True)
class ParsedBox:
    """A box as read from text: relative to `frame`, ordered, clipped to 0–1."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    start: int  # character span in the text
    end: int


def _clean_label(text: str) -> str:
    label = text.strip().strip(",").strip()
    for _ in range(3):
        label = _TRAILING_FILLER.sub("", label).strip()
        label = _LEADING_FILLER.sub("", label).strip()
    label = label.strip("*_`\"' ")
    words = label.split()
    if len(words) > _MAX_LABEL_WORDS:
        words = words[-_MAX_LABEL_WORDS:]
    return " ".join(words)


def _label_before(text: str, start: int, floor: int) -> str:
    before = text[floor:start]
    stops = list(_LABEL_STOP_RE.finditer(before))
    if stops:
        before = before[stops[-1].end() :]
    return _clean_label(before)


def _order_and_clip(values: list[float]) -> list[float] | None:
    if any(v < -CLIP_TOLERANCE or v > 1 + CLIP_TOLERANCE for v in values):
        return None
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in values)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [x0, y0, x1, y1]


def parse_box_text(text: str) -> list[ParsedBox]:
    """All boxes in `text`, in order. Never raises; skipped candidates are logged."""
    boxes: list[ParsedBox] = []
    if not isinstance(text, str) or not text:
        return boxes
    matched_spans: list[tuple[int, int]] = []
    previous_end = 0
    for match in _BOX_RE.finditer(text):
        matched_spans.append(match.span())
        if (match["open"] == "[") != (match["close"] == "]"):
            log.info("box skipped (mismatched brackets): %r", match.group(0))
            previous_end = match.end()
            continue
        try:
            values = [float(match[k]) for k in "abcd"]
        except ValueError:  # pragma: no cover - the regex only admits numbers
            log.info("box skipped (not numbers): %r", match.group(0))
            continue
        ordered = _order_and_clip(values)
        if ordered is None:
            log.info("box skipped (outside 0-1 or empty): %r", match.group(0))
            previous_end = match.end()
            continue
        label = _label_before(text, match.start(), previous_end)
        boxes.append(ParsedBox(*ordered, label=label, start=match.start(), end=match.end()))
        previous_end = match.end()
    for candidate in _CANDIDATE_RE.finditer(text):
        if not any(s <= candidate.start() < e for s, e in matched_spans):
            log.info("box-like text skipped (not four numbers in brackets): %r", candidate.group(0))
    return boxes


@dataclass(frozen=True)
class Box:
    """A detected box: `rel` in the slide frame (fractions of level-0 width/height), `l0_rect`
    in level-0 pixels, `label` as the model wrote it ("" when none)."""

    rel: RelBox
    l0_rect: L0Rect
    label: str

    def to_dict(self) -> dict:
        return {
            "rel": {"x0": self.rel.x0, "y0": self.rel.y0, "x1": self.rel.x1, "y1": self.rel.y1},
            "l0_rect": {
                "x": self.l0_rect.x,
                "y": self.l0_rect.y,
                "w": self.l0_rect.w,
                "h": self.l0_rect.h,
            },
            "label": self.label,
        }


def box_frame(box_format: str) -> BoxFrame:
    """The frame of a config's `box_format` (BOX_FORMAT_SLIDE or BOX_FORMAT_SQUARE)."""
    return "square" if box_format == BOX_FORMAT_SQUARE else "slide"


def boxes_from_text(
    text: str,
    *,
    l0_width: int,
    l0_height: int,
    frame: BoxFrame = "slide",
    thumb_frame: ThumbFrame | None = None,
) -> list[Box]:
    """Boxes in `text` placed on the slide (level 0). Never raises on bad text.

    frame="square" needs `thumb_frame` (the padded square the model saw); boxes falling
    entirely in its padding are skipped."""
    from omnipath.coords import L0Rect, RelBox, l0_to_rel, rel_to_l0

    boxes: list[Box] = []
    for parsed in parse_box_text(text):
        if frame == "slide":
            rel = RelBox(parsed.x0, parsed.y0, parsed.x1, parsed.y1)
            l0_rect = rel_to_l0(rel, l0_width, l0_height)
        else:
            if thumb_frame is None:
                raise ValueError("frame='square' needs the ThumbFrame the model saw")
            side = thumb_frame.side
            l0_x0, l0_y0 = thumb_frame.thumb_to_l0(parsed.x0 * side, parsed.y0 * side)
            l0_x1, l0_y1 = thumb_frame.thumb_to_l0(parsed.x1 * side, parsed.y1 * side)
            x0, x1 = max(0, round(l0_x0)), min(l0_width, round(l0_x1))
            y0, y1 = max(0, round(l0_y0)), min(l0_height, round(l0_y1))
            if x1 <= x0 or y1 <= y0:
                log.info(
                    "box skipped (in the thumbnail's padding): %r", text[parsed.start : parsed.end]
                )
                continue
            l0_rect = L0Rect(x=x0, y=y0, w=x1 - x0, h=y1 - y0)
            rel = l0_to_rel(l0_rect, l0_width, l0_height)
        if l0_rect.w <= 0 or l0_rect.h <= 0:
            log.info("box skipped (under one level-0 pixel): %r", text[parsed.start : parsed.end])
            continue
        boxes.append(Box(rel=rel, l0_rect=l0_rect, label=parsed.label))
    return boxes

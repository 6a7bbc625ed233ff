"""A question as the server takes it: parsed and checked once, here, into a `Question` that
the layers below (web/handlers.py, the engine, the log) trust.

What is checked: the text (not empty), the answer options (omnipath.engine.AnswerOptions, from
the form's or the API's values by `form_options`) and the region the user drew (a rectangle
{x, y, w, h} in level-0 pixels, clipped to the slide here; web/chat.js also clips it while
drawing, only so that its label names the pixels that will be asked about). Bad input raises
OptionsError with a sentence, before anything is logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from omnipath.coords import L0Rect
from omnipath.errors import OptionsError

# A drawn region is about 60 characters of JSON; far longer text is not one (nor parsed).
MAX_REGION_CHARS = 1000


def form_options(mode: Any, s: Any, max_new_tokens: Any, temperature: Any) -> Any:
    """AnswerOptions from the settings as the page or an API call sent them (an empty mode is
    "attention"; S is ignored when PGDFC is off); OptionsError with a sentence for None, text,
    NaN or infinity."""
    from omnipath.engine import AnswerOptions

    mode = mode or "attention"
    return AnswerOptions.from_form(
        pgdfc_mode=mode,
        s=0 if mode == "off" else s,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
    )


def parse_region(value: Any, l0_width: int, l0_height: int) -> L0Rect | None:
    """The rectangle the user drew: None / "" for none, else {x, y, w, h} (a dict or its JSON)
    in level-0 pixels, clipped to the slide. OptionsError when it is not one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    not_a_rectangle = OptionsError(
        "The region must be a rectangle {x, y, w, h} in slide pixels; draw it again."
    )
    if isinstance(value, str) and len(value) > MAX_REGION_CHARS:
        raise not_a_rectangle
    try:
        data = json.loads(value) if isinstance(value, str) else value
        if not data:
            return None
        # round() refuses NaN (ValueError) and infinity (OverflowError): Infinity, 1e400
        x, y, w, h = (round(float(data[k])) for k in ("x", "y", "w", "h"))
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        raise not_a_rectangle from None
    x0, y0 = max(0, min(x, x + w)), max(0, min(y, y + h))
    x1, y1 = min(l0_width, max(x, x + w)), min(l0_height, max(y, y + h))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise OptionsError("The region lies outside the slide or is empty; draw it again.")
    return L0Rect(x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True)
class Question:
    """One question to answer: in which conversation about which slide, its text (stripped,
    not empty), the checked options, the region clipped to the slide, and the question turn
    it answers again (Retry)."""

    conversation_id: str
    slide_id: str
    text: str
    options: Any  # omnipath.engine.AnswerOptions, validated
    l0_region: L0Rect | None = None
    retry_of: str | None = None

    @classmethod
    def parse(
        cls,
        conversation: dict[str, Any],
        text: Any,
        options: Any = None,
        region: Any = None,
        *,
        retry_of: str | None = None,
    ) -> Question:
        """Check a question asked in `conversation` (Store.load_conversation()'s dict, for its
        slide's size). options: AnswerOptions (checked again here; defaults when None)."""
        from omnipath.engine import AnswerOptions
        from omnipath.engine.options import check_question

        slide = conversation["slide"]
        return cls(
            conversation_id=conversation["id"],
            slide_id=slide["id"],
            text=check_question(text),
            options=(AnswerOptions() if options is None else options).validate(),
            l0_region=parse_region(region, slide["width"], slide["height"]),
            retry_of=retry_of,
        )

    @property
    def region_meta(self) -> dict[str, Any]:
        """How the region is logged with the question: {"l0_region": [x, y, w, h]} or {}."""
        r = self.l0_region
        return {"l0_region": [r.x, r.y, r.w, r.h]} if r is not None else {}

"""Rows of the session log and the plain dicts Store returns: turns checked into column
values before any write, mask rows, and each row as a dict. Pure functions of rows and
values (no session is opened here); storage/log.py runs them inside its transactions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from omnipath.errors import echo
from omnipath.facts import PGDFC_MODES
from storage import shapes
from storage.errors import InvalidRecordError
from storage.models import ROLES, Conversation, Mask, Slide, Turn

TITLE_CHARS = 80


def new_id() -> str:
    return uuid.uuid4().hex


def title_from(text: str) -> str:
    line = " ".join(text.split())
    if len(line) <= TITLE_CHARS:
        return line
    return line[: TITLE_CHARS - 1].rstrip() + "…"


def slide_dict(slide: Slide) -> dict[str, Any]:
    return {
        "id": slide.id,
        "size_bytes": slide.size_bytes,
        "vendor": slide.vendor,
        "width": slide.width,
        "height": slide.height,
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "objective_power": slide.objective_power,
        "file_name": slide.file_name,
        "stored_path": slide.stored_path,
        "created_at": slide.created_at,
    }


def mask_dict(mask: Mask) -> dict[str, Any]:
    return {
        "index": mask.index,
        "l0_rect": [mask.l0_x, mask.l0_y, mask.l0_w, mask.l0_h],
        "width": mask.width,
        "height": mask.height,
        "label": mask.label,
        "png": mask.png,
    }


def turn_dict(turn: Turn) -> dict[str, Any]:
    feedback = [
        {"value": f.value, "comment": f.comment, "created_at": f.created_at} for f in turn.feedback
    ]
    return {
        "id": turn.id,
        "conversation_id": turn.conversation_id,
        "index": turn.index,
        "role": turn.role,
        "text": turn.text,
        "pgdfc_mode": turn.pgdfc_mode,
        "s": turn.s,
        "regions": list(turn.regions or []),
        "boxes": list(turn.boxes or []),
        "masks": [mask_dict(m) for m in turn.masks],
        "timings": dict(turn.timings or {}),
        "tokens": dict(turn.tokens or {}),
        "meta": dict(turn.meta or {}),
        "model_id": turn.model_id,
        "revision": turn.revision,
        "error": turn.error,
        "status": turn.status,
        "created_at": turn.created_at,
        "feedback": feedback,
        "liked": feedback[-1]["value"] if feedback else None,
    }


def conversation_summary(conv: Conversation, turn_count: int) -> dict[str, Any]:
    return {
        "id": conv.id,
        "title": conv.title,
        "slide_id": conv.slide_id,
        "model_id": conv.model_id,
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
        "turn_count": turn_count,
    }


def optional_text(value: Any, what: str, max_chars: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRecordError(f"{what} must be text, not {echo(value)}.")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidRecordError(f"{what} is longer than {max_chars} characters.")
    return value


# The keywords of Store.log_turn after role and text.
TURN_FIELDS = frozenset(
    "pgdfc_mode s regions boxes masks timings tokens model_id revision error meta".split()
)
def clean_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a stray one from a model must not lose the turn.
    return text.replace("\x00", "")


def turn_row(
    role: str, text: str, **fields: Any
) -> tuple[dict[str, Any], list[shapes.MaskRecord]]:
    """A turn's column values and mask records, checked (InvalidRecordError) before any
    write; status "done". `fields`: Store.log_turn's keywords (absent ones are None)."""
    unknown = set(fields) - TURN_FIELDS
    if unknown:
        raise TypeError(f"unknown turn fields: {sorted(unknown)}")
    get = fields.get
    pgdfc_mode, s, error = get("pgdfc_mode"), get("s"), get("error")
    if role not in ROLES:
        raise InvalidRecordError(f"A turn's role must be 'user' or 'assistant', not {echo(role)}.")
    if not isinstance(text, str):
        raise InvalidRecordError(f"A turn's text must be text, not {type(text).__name__}.")
    if pgdfc_mode is not None and pgdfc_mode not in PGDFC_MODES:
        raise InvalidRecordError(
            f"PGDFC mode must be one of {', '.join(PGDFC_MODES)}, not {echo(pgdfc_mode)}."
        )
    if s is not None and (not shapes._is_int(s) or s < 0):
        raise InvalidRecordError(f"S (detail patches) must be an integer ≥ 0, not {echo(s)}.")
    row = {
        "role": role,
        "text": clean_text(text),
        "pgdfc_mode": pgdfc_mode,
        "s": None if s is None else int(s),
        "regions": shapes.regions(get("regions")),
        "boxes": shapes.boxes(get("boxes")),
        "timings": shapes.number_map(get("timings"), "timings", integers=False),
        "tokens": shapes.number_map(get("tokens"), "tokens", integers=True),
        "meta": shapes.json_safe(dict(get("meta") or {}), "meta"),
        "model_id": optional_text(get("model_id"), "The model id", 256),
        "revision": optional_text(get("revision"), "The model revision", 128),
        "error": None if error is None else clean_text(optional_text(error, "The error")),
        "status": "done",
    }
    return row, shapes.masks(get("masks"))


def answer_fields(answer: Any, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """turn_row() arguments from an engine Answer (the object or its to_dict()); its
    `stopped` / `timed_out` flags go into meta."""
    if hasattr(answer, "to_dict"):
        answer = answer.to_dict()  # the engine's JSON form: a probe score it lacks is None
    get = shapes._get
    extra = dict(meta or {})
    for flag in ("stopped", "timed_out"):
        if get(answer, flag) is not None:
            extra[flag] = bool(get(answer, flag))
    return {
        "text": get(answer, "text", "") or "",
        "regions": get(answer, "regions"),
        "boxes": get(answer, "boxes"),
        "masks": get(answer, "masks"),
        "timings": get(answer, "timings"),
        "tokens": get(answer, "tokens"),
        "model_id": get(answer, "model_id"),
        "revision": get(answer, "revision"),
        "error": get(answer, "error"),
        "meta": extra,
    }


def add_masks(session: Session, turn_id: str, records: Sequence[shapes.MaskRecord]) -> None:
    for i, record in enumerate(records):
        session.add(mask_row(turn_id, i, record))
        session.flush()


def mask_row(turn_id: str, index: int, record: shapes.MaskRecord) -> Mask:
    x, y, w, h = record.l0_rect
    return Mask(
        turn_id=turn_id,
        index=index,
        l0_x=x,
        l0_y=y,
        l0_w=w,
        l0_h=h,
        width=record.width,
        height=record.height,
        label=record.label,
        png=record.png,
    )


def iso(value: datetime | None) -> str | None:
    """ISO-8601 text of a UTC timestamp (for JSON)."""
    return None if value is None else value.isoformat()

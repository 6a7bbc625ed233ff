"""How a logged turn (a storage.Store turn dict) reads in the UI: its chat message with the
notes under an answer (stopped, interrupted, failed, empty), its viewer layers, and what the
model sees of it as history. Plain functions of turn dicts; coordinates are level-0 pixels.
"""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
from PIL import Image

from web.viewer_component import mask_item

# The notes under an answer that did not complete normally.
INTERRUPTED_NOTE = "interrupted (the server stopped while answering); press Retry"
IN_PROGRESS_NOTE = "still being answered"
# Logged as the error of an answer of zero tokens (and shown for one logged without it).
NO_ANSWER = "The model gave no answer; try rephrasing the question."


def empty_layers() -> dict[str, list]:
    return {"regions": [], "boxes": [], "masks": []}


def _rect(value: Any) -> dict[str, int]:
    if isinstance(value, dict):
        return {k: int(value[k]) for k in ("x", "y", "w", "h")}
    x, y, w, h = value
    return {"x": int(x), "y": int(y), "w": int(w), "h": int(h)}


def _mask_bitmap(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L")) > 127


def turn_layers(turn: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The viewer's layers for one logged assistant turn (a Store turn dict): regions numbered
    by rank, boxes and masks in level-0 pixels."""
    regions = [
        {
            "l0_rect": _rect(r["l0_rect"]),
            "number": int(r["rank"]),
            "label": f"Region {r['rank']}"
            + (f" (probe score {r['score']:.3f})" if r.get("score") is not None else ""),
        }
        for r in sorted(turn.get("regions") or [], key=lambda r: r["rank"])
    ]
    boxes = [
        {"l0_rect": _rect(b["l0_rect"]), "label": b.get("label") or f"Box {i + 1}"}
        for i, b in enumerate(turn.get("boxes") or [])
    ]
    masks = [
        mask_item(_mask_bitmap(m["png"]), _rect(m["l0_rect"]), m.get("label") or f"Mask {i + 1}")
        for i, m in enumerate(turn.get("masks") or [])
    ]
    return {"regions": regions, "boxes": boxes, "masks": masks}


def answer_notes(turn: dict[str, Any]) -> list[str]:
    """What to say under an assistant turn besides its text (empty for a normal answer)."""
    meta = turn.get("meta") or {}
    status = turn.get("status", "done")
    notes = []
    if status == "interrupted":
        notes.append(INTERRUPTED_NOTE)
    elif status == "in_progress":
        notes.append(IN_PROGRESS_NOTE)
    if meta.get("stopped"):
        notes.append("stopped")
    if meta.get("timed_out"):
        notes.append("time limit reached")
    if turn.get("error"):
        notes.append(turn["error"])
    if not notes and not turn["text"].strip():
        notes.append(NO_ANSWER)
    return notes


def as_text(text: str) -> str:
    """A person's text for gr.Chatbot (which renders Markdown and lets harmless HTML through)
    shown as typed: HTML escaped, so no tag reaches the page, and Markdown images defused, so
    showing the message fetches nothing (an <img src=…> would be fetched by whoever opens it)."""
    return html.escape(text, quote=False).replace("![", "!\\[")


def message_text(turn: dict[str, Any]) -> str:
    """The chat message of one logged turn: a question with the region it was about, or an
    answer with its notes ("⚠ ...")."""
    text = turn["text"]
    if turn["role"] != "assistant":
        text = as_text(text)
        region = (turn.get("meta") or {}).get("l0_region")
        if region:
            x, y, w, h = region
            return f"{text}\n\n*(about the region x {x}, y {y}, {w}×{h} px)*"
        return text
    notes = answer_notes(turn)
    if notes:
        text = (text + "\n\n" if text else "") + "⚠ " + "; ".join(notes)
    return text


def chat_messages(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages for gr.Chatbot (one per logged turn, in order: message index = turn index)."""
    return [{"role": t["role"], "content": message_text(t)} for t in turns]


def model_history(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What the model sees of earlier turns: their text (answers without text left out)."""
    return [
        {"role": t["role"], "content": t["text"]}
        for t in turns
        if t["text"].strip() or t["role"] == "user"
    ]


def last_answer(turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    for turn in reversed(turns):
        if turn["role"] == "assistant":
            return turn
    return None

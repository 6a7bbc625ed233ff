"""How a logged turn (a storage.Store turn dict) reads in the UI: its chat message with the
notes under an answer (stopped, interrupted, failed, empty), its viewer layers, and what the
model sees of it as history. Plain functions of turn dicts; coordinates are level-0 pixels.
"""

from __future__ import annotations

import html
from typing import Any

from storage.overlays import Overlays
from web.viewer_component import mask_item, rect_item

# The notes under an answer that did not complete normally.
INTERRUPTED_NOTE = "interrupted (the server stopped while answering); press Retry"
IN_PROGRESS_NOTE = "still being answered"
# Logged as the error of an answer of zero tokens (and shown for one logged without it).
NO_ANSWER = "The model gave no answer; try rephrasing the question."


def empty_layers() -> dict[str, list]:
    return {"regions": [], "boxes": [], "masks": []}


def viewer_layers(overlays: Overlays) -> dict[str, list[dict[str, Any]]]:
    """The viewer's layers of one answer's overlays: regions numbered by rank, boxes and
    masks (as PNG data URLs), in level-0 pixels."""
    regions = [
        {
            **rect_item(
                r["l0_rect"],
                f"Region {r['rank']}"
                + (f" (probe score {r['score']:.3f})" if r.get("score") is not None else ""),
            ),
            "number": int(r["rank"]),
        }
        for r in overlays.regions
    ]
    boxes = [
        rect_item(b["l0_rect"], b.get("label") or f"Box {i + 1}")
        for i, b in enumerate(overlays.boxes)
    ]
    masks = [
        mask_item(m.bitmap, m.l0_rect, m.label or f"Mask {i + 1}")
        for i, m in enumerate(overlays.masks)
    ]
    return {"regions": regions, "boxes": boxes, "masks": masks}


def turn_layers(turn: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The viewer's layers for one logged assistant turn (a Store turn dict)."""
    return viewer_layers(Overlays.of_turn(turn))


def answer_turn(answer: Any) -> dict[str, Any]:
    """An engine Answer as the assistant turn it is logged as (what message_text reads)."""
    flags = {"stopped": answer.stopped, "timed_out": answer.timed_out}
    return {
        "role": "assistant",
        "text": answer.text,
        "status": "done",
        "meta": flags,
        "error": answer.error,
    }


def question_turn(text: str, region_meta: dict[str, Any]) -> dict[str, Any]:
    """A question as the user turn it is logged as (what message_text reads)."""
    return {"role": "user", "text": text, "meta": region_meta}


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

"""The chat's actions as plain functions: they take ChatServices and plain values and return
plain data (dicts, dataclasses, paths), never Gradio objects, so tests call them directly and
web/chat_app.py only adapts them to components.

Errors are typed (omnipath.errors) and carry a sentence for a person. Coordinates are level-0
slide pixels (`l0_`). A conversation belongs to one slide; a new slide starts a new one.
"""

from __future__ import annotations

import html
import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omnipath.coords import L0Rect
from omnipath.errors import (
    GenerationError,
    NotFoundError,
    OmniPathError,
    OptionsError,
)
from web.chat_services import ChatServices
from web.viewer_component import mask_item, viewer_state

log = logging.getLogger(__name__)

# A drawn region is about 60 characters of JSON; far longer text is not one (nor parsed).
MAX_REGION_CHARS = 1000


# --- conversations ----------------------------------------------------------------------------


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


def as_text(text: str) -> str:
    """A person's text for gr.Chatbot (which renders Markdown and lets harmless HTML through)
    shown as typed: HTML escaped, so no tag reaches the page, and Markdown images defused, so
    showing the message fetches nothing (an <img src=…> would be fetched by whoever opens it)."""
    return html.escape(text, quote=False).replace("![", "!\\[")


def _message_text(turn: dict[str, Any]) -> str:
    text = turn["text"]
    if turn["role"] != "assistant":
        text = as_text(text)
        region = (turn.get("meta") or {}).get("l0_region")
        if region:
            x, y, w, h = region
            return f"{text}\n\n*(about the region x {x}, y {y}, {w}×{h} px)*"
        return text
    notes = []
    meta = turn.get("meta") or {}
    if meta.get("stopped"):
        notes.append("stopped")
    if meta.get("timed_out"):
        notes.append("time limit reached")
    if turn.get("error"):
        notes.append(turn["error"])
    if notes:
        text = (text + "\n\n" if text else "") + "⚠ " + "; ".join(notes)
    return text


def chat_messages(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages for gr.Chatbot (one per logged turn, in order: message index = turn index)."""
    return [{"role": t["role"], "content": _message_text(t)} for t in turns]


def _history(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What the model sees of earlier turns: their text (failed answers without text left out)."""
    return [
        {"role": t["role"], "content": t["text"]}
        for t in turns
        if t["text"].strip() or t["role"] == "user"
    ]


def _last_answer(turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    for turn in reversed(turns):
        if turn["role"] == "assistant":
            return turn
    return None


def _ensure_registered(services: ChatServices, slide: dict[str, Any]) -> None:
    registry = services.registry
    if registry.is_registered(slide["id"]):
        return
    stored = slide.get("stored_path")
    if not stored or not Path(stored).is_file():
        raise NotFoundError(
            "The slide of this conversation is no longer stored on this server; "
            "its turns can still be exported."
        )
    registry.register(stored, slide_id=slide["id"])


def list_conversations(services: ChatServices, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first: [{id, title, slide_id, turn_count, updated_at (ISO text)}]."""
    return [
        {
            "id": c["id"],
            "title": c["title"] or "(no question yet)",
            "slide_id": c["slide_id"],
            "turn_count": c["turn_count"],
            "updated_at": c["updated_at"].isoformat() if c["updated_at"] else None,
        }
        for c in services.store.list_conversations(limit=limit)
    ]


def reopen_conversation(services: ChatServices, conversation_id: str) -> dict[str, Any]:
    """Restore a past conversation: its slide in the viewer, its messages, and the layers of
    its last answer. {conversation_id, slide_id, messages, layers, meta, viewer_state}."""
    conversation = _load(services, conversation_id)
    _ensure_registered(services, conversation["slide"])
    slide_id = conversation["slide_id"]
    meta = services.web.tiles.meta(slide_id).to_dict()
    last = _last_answer(conversation["turns"])
    layers = turn_layers(last) if last is not None else empty_layers()
    return {
        "conversation_id": conversation_id,
        "slide_id": slide_id,
        "title": conversation["title"],
        "messages": chat_messages(conversation["turns"]),
        "layers": layers,
        "meta": meta,
        "viewer_state": viewer_state(slide_id, meta, layers),
    }


def new_conversation(services: ChatServices, slide_id: str) -> str:
    """A fresh conversation about a slide the server knows: an uploaded one, or one opened at
    start (the sample slide, --slide), which is recorded in the log first."""
    registry = services.registry
    try:
        services.store.get_slide(slide_id)
    except NotFoundError:
        path = registry.path_of(slide_id)  # NotFoundError when the server does not know it
        with registry.lease(slide_id) as opened:
            info = opened.slide.info
        services.store.record_slide_info(
            slide_id, info, size_bytes=path.stat().st_size, stored_path=path
        )
    return services.store.start_conversation(slide_id, services.engine.info.get("model_id"))


def _load(services: ChatServices, conversation_id: str) -> dict[str, Any]:
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        raise NotFoundError("No conversation is open: upload a slide first.")
    return services.store.load_conversation(conversation_id.strip())


# --- asking -----------------------------------------------------------------------------------


@dataclass
class AskUpdate:
    """One step of an answer: `text` is the answer so far. The last update has done=True,
    the logged turn's id, the Answer as a dict and the viewer layers."""

    conversation_id: str
    text: str
    done: bool = False
    turn_id: str | None = None
    answer: dict[str, Any] | None = None
    layers: dict[str, list] = field(default_factory=empty_layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "text": self.text,
            "done": self.done,
            "turn_id": self.turn_id,
            "answer": self.answer,
            "layers": {
                # mask images are data URLs for the browser; API callers get them from export
                "regions": self.layers["regions"],
                "boxes": self.layers["boxes"],
                "masks": [{k: v for k, v in m.items() if k != "src"} for m in self.layers["masks"]],
            },
        }


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


def stop_answer(services: ChatServices, conversation_id: str) -> bool:
    """Ask the answer being generated in this conversation to stop (the text so far is kept
    and logged). False when nothing is being generated there."""
    with services.stops_lock:
        event = services.stops.get(conversation_id)
    if event is None:
        return False
    event.set()
    return True


def ask(
    services: ChatServices,
    conversation_id: str,
    question: str,
    options: Any = None,
    *,
    region: Any = None,
    stop: threading.Event | None = None,
) -> Iterator[AskUpdate]:
    """Answer `question` in the conversation, streaming AskUpdates; the question and the answer
    are logged (a failed answer is logged with its error, then the error is raised).

    options: omnipath.engine.AnswerOptions (defaults when None). region: the rectangle the
    user drew ({x, y, w, h} level-0 pixels, or its JSON), passed to the engine as l0_region
    (a <mask> input map when the model has a mask encoder, else a sentence naming the region).
    Bad input (empty question, bad options, unknown conversation) raises before anything is
    logged."""
    if not isinstance(question, str) or not question.strip():
        raise OptionsError("The question is empty; type a question about the slide.")
    return _answer(services, conversation_id, question.strip(), options, region, stop, True)


def retry(
    services: ChatServices,
    conversation_id: str,
    options: Any = None,
    *,
    stop: threading.Event | None = None,
) -> Iterator[AskUpdate]:
    """Answer the last question again (its old answer is deleted first); same stream as ask."""
    conversation = _load(services, conversation_id)
    if not any(t["role"] == "user" for t in conversation["turns"]):
        raise OptionsError("There is no question to retry yet.")
    question = services.store.prepare_retry(conversation_id)
    region = (question.get("meta") or {}).get("l0_region")
    if region:
        region = dict(zip(("x", "y", "w", "h"), region, strict=True))
    return _answer(services, conversation_id, question["text"], options, region, stop, False)


def _answer(
    services: ChatServices,
    conversation_id: str,
    question: str,
    options: Any,
    region: Any,
    stop: threading.Event | None,
    log_question: bool,
) -> Iterator[AskUpdate]:
    from omnipath.engine import AnswerOptions

    options = AnswerOptions() if options is None else options
    conversation = _load(services, conversation_id)
    conversation_id = conversation["id"]
    slide = conversation["slide"]
    _ensure_registered(services, slide)
    l0_region = parse_region(region, slide["width"], slide["height"])
    turns = conversation["turns"]
    if not log_question:  # retry: the question is the last logged turn already
        turns = turns[:-1]
    stop = stop if stop is not None else threading.Event()
    return _run(
        services,
        conversation_id,
        question,
        options,
        l0_region,
        stop,
        log_question,
        _history(turns),
        slide["id"],
    )


def _run(
    services: ChatServices,
    conversation_id: str,
    question: str,
    options: Any,
    l0_region: L0Rect | None,
    stop: threading.Event,
    log_question: bool,
    history: list[dict[str, str]],
    slide_id: str,
) -> Iterator[AskUpdate]:
    store = services.store
    region_list = (
        [l0_region.x, l0_region.y, l0_region.w, l0_region.h] if l0_region is not None else None
    )
    meta = {"l0_region": region_list} if region_list else {}
    text = ""
    answer = None
    # The lease keeps the slide open while the engine reads it, even if the LRU evicts it.
    with services.registry.lease(slide_id) as opened:
        # the engine checks the options and the question here, before anything is logged
        stream = services.engine.answer(
            opened.slide, history, question, options, stop=stop, l0_region=l0_region
        )
        if log_question:
            store.log_turn(
                conversation_id,
                "user",
                question,
                pgdfc_mode=options.pgdfc_mode,
                s=options.s,
                meta=meta,
            )
        with services.stops_lock:
            services.stops[conversation_id] = stop
        try:
            for item in stream:
                if isinstance(item, str):
                    text += item
                    yield AskUpdate(conversation_id, text)
                else:
                    answer = item
        except OmniPathError as exc:
            _log_failure(services, conversation_id, text, options, exc.message, meta)
            raise
        except Exception as exc:  # a bug or a library failure: logged, reported as a sentence
            log.exception("answering failed")
            message = "The model failed while answering; the error was logged. Please try again."
            _log_failure(services, conversation_id, text, options, message, meta)
            raise GenerationError(message, detail=repr(exc)) from exc
        finally:
            with services.stops_lock:
                if services.stops.get(conversation_id) is stop:
                    del services.stops[conversation_id]
    if answer is None:
        message = "The model stopped without an answer; please try again."
        _log_failure(services, conversation_id, text, options, message, meta)
        raise GenerationError(message)
    answer_dict = answer.to_dict()
    turn_id = store.log_answer(
        conversation_id,
        answer,
        pgdfc_mode=options.pgdfc_mode,
        s=options.s,
        meta={**meta, "options": options.to_dict()},
    )
    turn = store.get_turn(turn_id)
    yield AskUpdate(
        conversation_id,
        _message_text(turn),
        done=True,
        turn_id=turn_id,
        answer=answer_dict,
        layers=turn_layers(turn),
    )


def _log_failure(
    services: ChatServices,
    conversation_id: str,
    text: str,
    options: Any,
    message: str,
    meta: dict[str, Any],
) -> None:
    try:
        services.store.log_turn(
            conversation_id,
            "assistant",
            text,
            pgdfc_mode=options.pgdfc_mode,
            s=options.s,
            model_id=services.engine.info.get("model_id"),
            error=message,
            meta=meta,
        )
    except OmniPathError:
        log.exception("could not log the failed answer")


def undo(services: ChatServices, conversation_id: str) -> dict[str, Any]:
    """Remove the last question and its answer. {question: its text (to edit and ask again) or
    None when there was nothing to undo, messages, layers (of the answer now last)}."""
    _load(services, conversation_id)
    removed = services.store.undo_last_exchange(conversation_id)
    conversation = services.store.load_conversation(conversation_id)
    last = _last_answer(conversation["turns"])
    return {
        "question": removed["question"] if removed else None,
        "messages": chat_messages(conversation["turns"]),
        "layers": turn_layers(last) if last is not None else empty_layers(),
    }


def feedback(
    services: ChatServices, conversation_id: str, message_index: int, liked: bool | str
) -> int:
    """Log a like / dislike on the answer shown at `message_index` (= its turn index).
    Returns the feedback row id."""
    conversation = _load(services, conversation_id)
    turns = conversation["turns"]
    if not isinstance(message_index, int) or not 0 <= message_index < len(turns):
        raise NotFoundError("That message is no longer in the conversation.")
    turn = turns[message_index]
    if turn["role"] != "assistant":
        raise OptionsError("Only answers can be liked or disliked.")
    return services.store.add_feedback(turn["id"], liked)

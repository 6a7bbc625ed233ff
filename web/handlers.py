"""The chat's actions as plain functions: they take ChatServices and plain values and return
plain data (dicts, dataclasses, paths), never Gradio objects, so tests call them directly and
web/chat_app.py only adapts them to components.

Errors are typed (omnipath.errors) and carry a sentence for a person. Coordinates are level-0
slide pixels (`l0_`). A conversation belongs to one slide; a new slide starts a new one.
Each conversation belongs to an owner (web/identity.py): every function that takes its id takes
the asker's `owner` too, and a conversation of someone else is "not found", like a missing one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnipath.engine.results import Queued
from omnipath.errors import (
    GenerationError,
    NotFoundError,
    OmniPathError,
    OptionsError,
)
from storage.models import LOCAL_OWNER
from storage.overlays import Overlays
from web.chat_services import ChatServices
from web.messages import (
    NO_ANSWER,
    answer_turn,
    chat_messages,
    empty_layers,
    last_answer,
    message_text,
    model_history,
    question_turn,
    turn_layers,
    viewer_layers,
)
from web.question import Question
from web.slide_registry import UNKNOWN_SLIDE
from web.viewer_component import viewer_state

log = logging.getLogger(__name__)

# An answer's text is saved as it grows, at most once per this many seconds (README, "Limits
# chosen"): a crash loses at most this much of it, and the database sees at most two small
# UPDATEs a second per answer.
ANSWER_SAVE_INTERVAL_S = 0.5
CANCELLED = "The answer was cancelled before it finished (the page was closed); press Retry."
MODEL_FAILED = "The model failed while answering; the error was logged. Please try again."


# --- conversations ----------------------------------------------------------------------------


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


def list_conversations(
    services: ChatServices, limit: int = 100, *, owner: str = LOCAL_OWNER
) -> list[dict[str, Any]]:
    """The owner's conversations, newest first: [{id, title, slide_id, turn_count, updated_at (ISO text)}]."""
    return [
        {
            "id": c["id"],
            "title": c["title"] or "(no question yet)",
            "slide_id": c["slide_id"],
            "turn_count": c["turn_count"],
            "updated_at": c["updated_at"].isoformat() if c["updated_at"] else None,
        }
        for c in services.store.list_conversations(owner=owner, limit=limit)
    ]


def reopen_conversation(
    services: ChatServices, conversation_id: str, *, owner: str = LOCAL_OWNER
) -> dict[str, Any]:
    """Restore a past conversation: its slide in the viewer, its messages, and the layers of
    its last answer. {conversation_id, slide_id, messages, layers, meta, viewer_state}."""
    conversation = _load(services, conversation_id, owner)
    _ensure_registered(services, conversation["slide"])
    slide_id = conversation["slide_id"]
    meta = services.web.tiles.meta(slide_id)
    last = last_answer(conversation["turns"])
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


def new_conversation(services: ChatServices, slide_id: str, *, owner: str = LOCAL_OWNER) -> str:
    """A fresh conversation of `owner` about a slide they may see: one they uploaded, or the
    one opened at start (the sample slide, --slide), which is recorded in the log first."""
    registry = services.registry
    if slide_id != services.web.initial_slide_id and not services.store.may_see_slide(
        slide_id, owner
    ):
        raise NotFoundError(UNKNOWN_SLIDE)
    try:
        services.store.get_slide(slide_id)
    except NotFoundError:
        path = registry.path_of(slide_id)  # NotFoundError when the server does not know it
        with registry.lease(slide_id) as opened:
            info = opened.slide.info
        services.store.record_slide_info(
            slide_id, info, size_bytes=path.stat().st_size, stored_path=path
        )
    return services.store.start_conversation(
        slide_id, services.engine.info.get("model_id"), owner=owner
    )


def _load(services: ChatServices, conversation_id: str, owner: str) -> dict[str, Any]:
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        raise NotFoundError("No conversation is open: upload a slide first.")
    return services.store.load_conversation(conversation_id.strip(), owner=owner)


# --- asking -----------------------------------------------------------------------------------


@dataclass
class AskUpdate:
    """One step of an answer: `text` is the answer so far; `waiting` the number of questions
    ahead of this one while it waits for the model (None once it is being answered). The last
    update has done=True, the logged turn's id, the Answer as a dict and the viewer layers."""

    conversation_id: str
    text: str
    done: bool = False
    waiting: int | None = None
    turn_id: str | None = None
    answer: dict[str, Any] | None = None
    layers: dict[str, list] = field(default_factory=empty_layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "text": self.text,
            "done": self.done,
            "waiting": self.waiting,
            "turn_id": self.turn_id,
            "answer": self.answer,
            "layers": {
                # mask images are data URLs for the browser; API callers get them from export
                "regions": self.layers["regions"],
                "boxes": self.layers["boxes"],
                "masks": [{k: v for k, v in m.items() if k != "src"} for m in self.layers["masks"]],
            },
        }


def stop_answer(services: ChatServices, conversation_id: str) -> bool:
    """Ask the answer being generated in this conversation to stop (the text so far is kept
    and logged). False when nothing is being generated there."""
    with services.stops_lock:
        event = services.stops.get(conversation_id)
    if event is None:
        return False
    event.set()
    return True


class Answering:
    """An answer being streamed (an iterator of AskUpdates) and the checked Question it
    answers (what the chat shows as the question)."""

    def __init__(self, question: Question, updates: Iterator[AskUpdate]) -> None:
        self.question = question
        self._updates = updates

    def __iter__(self) -> Answering:
        return self

    def __next__(self) -> AskUpdate:
        return next(self._updates)

    def close(self) -> None:
        self._updates.close()

    @property
    def message(self) -> str:
        """The question's chat message (with the region it is about)."""
        return message_text(question_turn(self.question.text, self.question.region_meta))


def ask(
    services: ChatServices,
    conversation_id: str,
    question: str,
    options: Any = None,
    *,
    region: Any = None,
    stop: threading.Event | None = None,
    owner: str = LOCAL_OWNER,
) -> Answering:
    """Answer `question` in the conversation, streaming AskUpdates. When the answer starts,
    the question and an answer "in progress" are logged together; the answer's text is saved
    as it grows (at most once per ANSWER_SAVE_INTERVAL_S) and the same row is completed at the
    end, or marked failed with its error (the error is then raised). A crash leaves it in
    progress: the next start marks it interrupted, and Retry answers again.

    options: omnipath.engine.AnswerOptions (defaults when None). region: the rectangle the
    user drew ({x, y, w, h} level-0 pixels, or its JSON), passed to the engine as l0_region
    (a <mask> input map when the model has a mask encoder, else a sentence naming the region).
    Bad input (empty question, bad options, S above the slide's tissue cells, unknown
    conversation) raises before anything is logged: web.question.Question.parse checks it."""
    conversation = _load(services, conversation_id, owner)
    checked = Question.parse(conversation, question, options, region)
    return _answering(services, checked, conversation["slide"], conversation["turns"], stop)


def retry(
    services: ChatServices,
    conversation_id: str,
    options: Any = None,
    *,
    stop: threading.Event | None = None,
    owner: str = LOCAL_OWNER,
) -> Answering:
    """Answer the last question again, replacing its answer (also one that failed or was
    interrupted) when the new one starts; same stream as ask."""
    conversation = _load(services, conversation_id, owner)
    turns = conversation["turns"]
    asked = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not asked:
        raise OptionsError("There is no question to retry yet.")
    question = turns[asked[-1]]
    region = (question.get("meta") or {}).get("l0_region")
    if region:
        region = dict(zip(("x", "y", "w", "h"), region, strict=True))
    checked = Question.parse(
        conversation, question["text"], options, region, retry_of=question["id"]
    )
    return _answering(services, checked, conversation["slide"], turns[: asked[-1]], stop)


def _answering(
    services: ChatServices,
    question: Question,
    slide: dict[str, Any],
    earlier_turns: list[dict[str, Any]],
    stop: threading.Event | None,
) -> Answering:
    _ensure_registered(services, slide)
    return Answering(question, _run(services, question, earlier_turns, stop))


class _PartialText:
    """Saves an answer's text as it grows: the first text at once, then at most once per
    ANSWER_SAVE_INTERVAL_S (the last text is saved by the answer's completion)."""

    def __init__(self, store: Any, turn_id: str) -> None:
        self.store, self.turn_id = store, turn_id
        self.saved_at: float | None = None

    def update(self, text: str) -> None:
        now = time.monotonic()
        if self.saved_at is not None and now - self.saved_at < ANSWER_SAVE_INTERVAL_S:
            return
        self.saved_at = now
        try:
            self.store.save_answer_text(self.turn_id, text)
        except OmniPathError:  # the answer goes on; only a crash now would lose more of it
            log.warning("could not save the answer's text so far", exc_info=True)


def _run(
    services: ChatServices,
    request: Question,
    earlier_turns: list[dict[str, Any]],
    stop: threading.Event | None,
) -> Iterator[AskUpdate]:
    store, options = services.store, request.options
    conversation_id = request.conversation_id
    stop = stop if stop is not None else threading.Event()
    text = ""
    # The lease keeps the slide open while the engine reads it, even if the LRU evicts it.
    with services.registry.lease(request.slide_id) as opened:
        # the engine checks the options, the question and S here, before anything is logged
        stream = services.engine.answer(
            opened.slide,
            model_history(earlier_turns),
            request.text,
            options,
            stop=stop,
            l0_region=request.l0_region,
            slide_id=request.slide_id,
            queue_updates=True,
        )
        turn_id = store.begin_answer(
            conversation_id,
            None if request.retry_of else request.text,
            retry_of=request.retry_of,
            pgdfc_mode=options.pgdfc_mode,
            s=options.s,
            model_id=services.engine.info.get("model_id"),
            question_meta=request.region_meta,
            meta={**request.region_meta, "options": options.to_dict()},
        )
        partial = _PartialText(store, turn_id)
        with services.stops_lock:
            services.stops[conversation_id] = stop
        try:
            answer = None
            for item in stream:
                if isinstance(item, str):
                    text += item
                    partial.update(text)
                    yield AskUpdate(conversation_id, text)
                elif isinstance(item, Queued):
                    yield AskUpdate(conversation_id, text, waiting=item.ahead)
                else:
                    answer = item
            if answer is None:
                raise GenerationError("The model stopped without an answer; please try again.")
            if not answer.text.strip() and not (answer.error or answer.stopped or answer.timed_out):
                answer.error = NO_ANSWER
            store.finish_answer(turn_id, answer)
        except OmniPathError as exc:
            _fail(store, turn_id, text, exc.message)
            raise
        except Exception as exc:  # a bug or a library failure: logged, reported as a sentence
            log.exception("answering failed")
            _fail(store, turn_id, text, MODEL_FAILED)
            raise GenerationError(MODEL_FAILED, detail=repr(exc)) from exc
        except BaseException:  # GeneratorExit: the caller went away; keep what was written
            _fail(store, turn_id, text, CANCELLED)
            raise
        finally:
            stream.close()  # an abandoned answer releases the engine now
            with services.stops_lock:
                if services.stops.get(conversation_id) is stop:
                    del services.stops[conversation_id]
    # the chat is updated from the Answer in memory, not read back from the log
    yield AskUpdate(
        conversation_id,
        message_text(answer_turn(answer)),
        done=True,
        turn_id=turn_id,
        answer=answer.to_dict(),
        layers=viewer_layers(Overlays.of_answer(answer)),
    )


def _fail(store: Any, turn_id: str, text: str, message: str) -> None:
    """Complete the answer in progress as failed, with its text so far and the error."""
    try:
        store.fail_answer(turn_id, text, message)
    except OmniPathError:
        log.exception("could not log the failed answer")


def undo(
    services: ChatServices, conversation_id: str, *, owner: str = LOCAL_OWNER
) -> dict[str, Any]:
    """Remove the last question and its answer. {question: its text (to edit and ask again) or
    None when there was nothing to undo, messages, layers (of the answer now last)}."""
    _load(services, conversation_id, owner)
    removed = services.store.undo_last_exchange(conversation_id, owner=owner)
    conversation = services.store.load_conversation(conversation_id, owner=owner)
    last = last_answer(conversation["turns"])
    return {
        "question": removed["question"] if removed else None,
        "messages": chat_messages(conversation["turns"]),
        "layers": turn_layers(last) if last is not None else empty_layers(),
    }


def feedback(
    services: ChatServices,
    conversation_id: str,
    message_index: int,
    liked: bool | str,
    *,
    owner: str = LOCAL_OWNER,
) -> int:
    """Log a like / dislike on the answer shown at `message_index` (= its turn index).
    Returns the feedback row id."""
    conversation = _load(services, conversation_id, owner)
    turns = conversation["turns"]
    if not isinstance(message_index, int) or not 0 <= message_index < len(turns):
        raise NotFoundError("That message is no longer in the conversation.")
    turn = turns[message_index]
    if turn["role"] != "assistant":
        raise OptionsError("Only answers can be liked or disliked.")
    return services.store.add_feedback(turn["id"], liked)


def delete_conversation(
    services: ChatServices, conversation_id: str, *, owner: str = LOCAL_OWNER
) -> None:
    """Delete one of the owner's conversations with its turns (an answer running in it is
    stopped first)."""
    _load(services, conversation_id, owner)
    stop_answer(services, conversation_id)
    services.store.delete_conversation(conversation_id, owner=owner)

"""Concurrent questions on the real server (gradio_client against 127.0.0.1): one question in
flight per browser session, Stop and a closed page free its slot at once, a waiting question
knows its place in the queue, and a full queue is refused with a sentence."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from omnipath.engine import Answer
from tests.live_server import require_viewer_assets, serving_app
from web import handlers
from web.chat_services import ONE_QUESTION


class GatedEngine:
    """Streams "…", then an empty piece every 50 ms (as a model streams tokens: Gradio can
    cancel a generator only between pieces) until `gate` opens or the answer is stopped;
    counts the answers running."""

    def __init__(self, engine) -> None:
        self.info = engine.info
        self.gate = threading.Event()
        self.running = 0
        self.lock = threading.Lock()

    def answer(
        self,
        slide,
        history,
        question,
        options=None,
        *,
        stop=None,
        l0_region=None,
        slide_id=None,
        queue_updates=False,
    ):
        def stream():
            with self.lock:
                self.running += 1
            try:
                yield "…"
                while not (self.gate.wait(0.05) or stop.is_set()):
                    yield ""
                yield Answer(text="…", model_id="tiny", stopped=stop.is_set())
            finally:
                with self.lock:
                    self.running -= 1

        return stream()


def _until(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, object]]:
    require_viewer_assets()
    from omnipath.synth import write_synthetic_slide

    folder = tmp_path_factory.mktemp("queue")
    slide = write_synthetic_slide(folder / "case.tiff", 1200, 800, seed=2, n_lesions=1)
    with serving_app(folder, max_concurrent_answers=2, max_queued_questions=1) as (url, chat):
        engine = GatedEngine(chat.engine)
        chat.engine = engine
        yield url, chat, slide


@pytest.fixture()
def gated(server):
    url, chat, slide = server
    chat.engine.gate.clear()
    yield chat.engine
    chat.engine.gate.set()
    _until(lambda: chat.engine.running == 0 and not chat.asking_sessions, "all answers ended")


def _client(url: str, slide):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    uploaded = client.predict(handle_file(str(slide.path)), api_name="/upload")
    return client, uploaded["conversation_id"]


def _submit(client, conversation_id: str):
    return client.submit(conversation_id, "Where?", "off", 1, 4, 0.0, "", api_name="/ask")


def test_a_second_question_of_the_same_session_gets_a_sentence(server, gated) -> None:
    from gradio_client.exceptions import AppError

    url, chat, slide = server
    client, conversation_id = _client(url, slide)
    first = _submit(client, conversation_id)
    _until(lambda: gated.running == 1, "the first answer runs")
    with pytest.raises(AppError, match="still being answered"):
        _submit(client, conversation_id).result(timeout=60)
    assert ONE_QUESTION.startswith("Your previous question")
    gated.gate.set()
    assert first.result(timeout=60)["done"]
    assert _submit(client, conversation_id).result(timeout=60)["done"]  # the slot is free again


def test_stop_and_a_closed_page_free_the_slot_at_once(server, gated) -> None:
    url, chat, slide = server
    client, conversation_id = _client(url, slide)
    stopped = _submit(client, conversation_id)
    _until(lambda: gated.running == 1, "the answer runs")
    assert handlers.stop_answer(chat, conversation_id)  # what the Stop button does
    assert stopped.result(timeout=60)["answer"]["stopped"]
    _until(lambda: not chat.asking_sessions, "Stop freed the slot")

    abandoned = _submit(client, conversation_id)
    _until(lambda: gated.running == 1, "the next answer runs")
    abandoned.cancel()  # what Gradio does when the page is closed
    _until(lambda: not chat.asking_sessions and gated.running == 0, "closing freed the slot")
    turns = chat.store.load_conversation(conversation_id)["turns"]
    assert [t["status"] for t in turns][-2:] == ["done", "failed"]  # kept, marked cancelled


def test_a_waiting_question_knows_its_place_and_a_full_queue_is_refused_in_a_sentence(
    server, gated
) -> None:
    from gradio_client.utils import QueueError, Status

    url, chat, slide = server
    clients = [_client(url, slide) for _ in range(4)]
    running = [_submit(c, conv) for c, conv in clients[:2]]
    _until(lambda: gated.running == 2, "two answers run (max_concurrent_answers)")
    waiting = _submit(*clients[2])
    _until(lambda: waiting.status().code == Status.IN_QUEUE, "the third question waits")
    assert waiting.status().rank == 0  # first in line: the page shows its place
    with pytest.raises(QueueError, match="Queue is full! Please try again"):
        _submit(*clients[3]).result(timeout=60)
    gated.gate.set()
    assert all(job.result(timeout=60)["done"] for job in [*running, waiting])

"""Load: 16 conversations × 10 questions at once against the real server (gradio_client on
127.0.0.1, the tiny model, 2 new tokens per answer); no turn is lost, duplicated or left
unfinished, and each conversation's turns alternate question / answer in the order asked."""

from __future__ import annotations

import threading

import pytest

from tests.live_server import require_viewer_assets, serving_app
from web import handlers

CONVERSATIONS, QUESTIONS = 16, 10


@pytest.mark.slow
def test_16_conversations_of_10_questions_lose_and_duplicate_no_turn(tmp_path) -> None:
    require_viewer_assets()
    from gradio_client import Client

    from omnipath.synth import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "case.tiff", 1200, 800, seed=3, n_lesions=1)
    with serving_app(tmp_path, slide=slide.path) as (url, chat):
        slide_id = chat.web.initial_slide_id
        conversations = [handlers.new_conversation(chat, slide_id) for _ in range(CONVERSATIONS)]
        failures: list[BaseException] = []

        def converse(conversation_id: str) -> None:
            try:
                client = Client(url, verbose=False)  # one browser session each
                for k in range(QUESTIONS):
                    final = client.predict(
                        conversation_id, f"Question {k}", "off", 1, 2, 0.0, "", api_name="/ask"
                    )
                    assert final["done"]
            except BaseException as exc:  # reported below, with the others
                failures.append(exc)

        threads = [threading.Thread(target=converse, args=(c,)) for c in conversations]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not any(t.is_alive() for t in threads) and not failures, failures

        for conversation_id in conversations:
            turns = chat.store.load_conversation(conversation_id)["turns"]
            assert [t["role"] for t in turns] == ["user", "assistant"] * QUESTIONS
            assert [t["text"] for t in turns[::2]] == [f"Question {k}" for k in range(QUESTIONS)]
            assert [t["index"] for t in turns] == list(range(2 * QUESTIONS))
            assert all(t["status"] == "done" for t in turns)

"""A server killed (SIGKILL) while it streams an answer: the log keeps the question with its
partial answer, the next start marks that answer interrupted, the conversation reads
"interrupted; press Retry", and Retry answers the question again in place.

The first server is a real process (`python -m web --model tiny`, its data and SQLite log in
tmp_path); the restarted one is the same app in-process (tests.live_server.serving_app on the
same folder), so the test can call the handlers on it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.live_server import HOST, free_port, serving_app

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Describe everything you see on this slide."
MAX_NEW_TOKENS = 3500  # the tiny model keeps writing: minutes of text on a CPU


def _start_server(folder: Path, port: int, log_file) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPATH_")}
    env["HF_HUB_OFFLINE"] = "1"
    command = [
        sys.executable, "-m", "web", "--model", "tiny", "--no-sample-slide",
        "--data-dir", str(folder / "data"), "--database-url", str(folder / "log.db"),
        "--port", str(port),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=log_file)


def _wait_until_serving(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not start: {log_path.read_text()[-3000:]}")


def _answer_rows(db: Path) -> list[tuple[str, str, str]]:
    """(role, status, text) of every turn, read without the app (read-only)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT role, status, text FROM turns ORDER BY turn_index").fetchall()


def _wait_for(check, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_server_killed_mid_answer_keeps_the_question_and_its_partial_answer(
    tmp_path: Path,
) -> None:
    from gradio_client import Client, handle_file

    from omnipath.engine import AnswerOptions
    from omnipath.synth import write_synthetic_slide
    from web import handlers

    slide = write_synthetic_slide(tmp_path / "case.tiff", 2048, 1536, seed=1, n_lesions=2)
    folder, db = tmp_path / "server", tmp_path / "server" / "log.db"
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        server = _start_server(folder, port, log_file)
        try:
            url = f"http://{HOST}:{port}/"
            _wait_until_serving(server, url, log_path)
            client = Client(url, verbose=False)
            conversation_id = client.predict(handle_file(str(slide.path)), api_name="/upload")[
                "conversation_id"
            ]
            job = client.submit(
                conversation_id, QUESTION, "attention", 2, MAX_NEW_TOKENS, 0.0, "", api_name="/ask"
            )
            # the stream is producing text: the browser side has seen some of it ...
            first = _wait_for(
                lambda: next((o["text"] for o in job.outputs() if o and o["text"]), None),
                "the first streamed text",
            )
            # ... and the log holds more than the first save (the text is saved as it grows)
            saved = _wait_for(
                lambda: next(
                    (
                        t
                        for r, s, t in _answer_rows(db)
                        if s == "in_progress" and len(t) > len(first)
                    ),
                    None,
                ),
                "the answer's text to grow in the log",
            )
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=30)
    assert server.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = _answer_rows(db)
    # the question with its answer, never a question alone; the text up to the kill is kept
    assert [(role, status) for role, status, _ in rows] == [
        ("user", "done"),
        ("assistant", "in_progress"),
    ]
    assert rows[0][2] == QUESTION
    assert rows[1][2].startswith(saved) and saved.startswith(first)

    with serving_app(folder) as (_, services):  # the restarted server
        turns = services.store.load_conversation(conversation_id)["turns"]
        assert [(t["role"], t["status"]) for t in turns] == [
            ("user", "done"),
            ("assistant", "interrupted"),
        ]
        messages = handlers.reopen_conversation(services, conversation_id)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"].startswith(saved)
        assert messages[1]["content"].endswith(
            "⚠ interrupted (the server stopped while answering); press Retry"
        )
        updates = list(
            handlers.retry(services, conversation_id, AnswerOptions(s=2, max_new_tokens=4))
        )
        turns = services.store.load_conversation(conversation_id)["turns"]
        assert [(t["role"], t["status"]) for t in turns] == [
            ("user", "done"),
            ("assistant", "done"),
        ]
        assert turns[0]["text"] == QUESTION and turns[1]["id"] == updates[-1].turn_id
        assert "interrupted" not in handlers.chat_messages(turns)[1]["content"]

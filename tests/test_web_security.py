"""The server's edge, on a real server: an event takes only files uploaded to this server (a
server path sent as a file is refused with one sentence, whether or not it exists, and nothing
is copied), Gradio's cache is cleaned on a schedule, and Gradio's pages that need no login
(/openapi.json, /monitoring) are off unless asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.live_server import serving_app
from web.upload_guard import NOT_UPLOADED, ReceivedUploads, named_files

# What upload_slide says about a path that is not there or not a slide: a refusal must not
# tell these apart.
EXISTENCE_HINTS = ("did not arrive", "not a slide", "No such file")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app on a free port with Gradio's upload cache in a folder of its own, and two server
    paths a client might name: a readable PNG slide outside the cache and a missing file."""
    folder = tmp_path_factory.mktemp("security")
    cache = folder / "gradio-cache"
    outside = folder / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    Image.new("RGB", (320, 240), (180, 30, 60)).save(secret)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(cache))
        with serving_app(folder) as (url, chat):
            config = httpx.get(url + "config", timeout=30).json()
            yield {
                "url": url,
                "chat": chat,
                "cache": cache,
                "existing": secret,
                "database": folder / "log.db",
                "missing": outside / "no-such-slide.png",
                "fn": _fn_indexes(config),
            }


def _fn_indexes(config: dict[str, Any]) -> dict[str, int]:
    """fn_index of the page's upload event, of the named /upload and of the page's Ask."""
    elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    found = {}
    for dep in config["dependencies"]:
        for target, trigger in dep["targets"]:
            name = f"{elem_ids.get(target)}.{trigger}"
            if name in ("omnipath-upload.upload", "omnipath-ask.click"):
                found[name] = dep["id"]
        if dep.get("api_name") == "upload":
            found["/upload"] = dep["id"]
    assert len(found) == 3, found
    return found


def _file(path: Path | str) -> dict[str, Any]:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _queue_event(url: str, fn_index: int, data: list[Any], session: str) -> str:
    """Send an event the way the page does (queue/join, then its event stream); returns the
    error the client is shown, or "accepted"."""
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None}
    joined = httpx.post(url + "gradio_api/queue/join", json=body, timeout=30)
    if joined.status_code != 200:
        return joined.json()["detail"]
    with httpx.stream(
        "GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=120
    ) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                output = message.get("output") or {}
                return str(output.get("error")) if not message.get("success") else "accepted"
    raise AssertionError("the event stream ended without a result")


def _call_upload(url: str, file: dict[str, Any]) -> str:
    """The named /upload through Gradio's REST route (/call/upload, then its stream)."""
    posted = httpx.post(url + "gradio_api/call/upload", json={"data": [file]}, timeout=30)
    if posted.status_code != 200:
        return posted.json()["detail"]
    event_id = posted.json()["event_id"]
    result = httpx.get(url + f"gradio_api/call/upload/{event_id}", timeout=120).text
    if "event: complete" in result:
        return "accepted"
    error = json.loads(result.split("data:", 1)[-1])
    return error["error"] if isinstance(error, dict) else str(error)


def _run_upload(url: str, file: dict[str, Any]) -> str:
    """The named /upload through Gradio's one-shot route (/run/upload)."""
    response = httpx.post(url + "gradio_api/run/upload", json={"data": [file]}, timeout=120)
    if response.status_code == 200:
        return "accepted"
    answer = response.json()
    return answer.get("detail") or answer.get("error")


def _send(served: dict[str, Any], route: str, path: Path, session: str) -> str:
    url, fn, file = served["url"], served["fn"], _file(path)
    if route == "page upload event":
        return _queue_event(url, fn["omnipath-upload.upload"], [file, None], session)
    if route == "named /upload (queue)":
        return _queue_event(url, fn["/upload"], [file], session)
    if route == "named /upload (call)":
        return _call_upload(url, file)
    if route == "named /upload (run)":
        return _run_upload(url, file)
    # A file inside another component's value: the conversation sent with Ask.
    chat = [{"role": "user", "content": [{"type": "file", "file": file}]}]
    inputs = ["What is this?", None, "", "attention", 8, 16, 0.0, chat]
    return _queue_event(url, fn["omnipath-ask.click"], inputs, session)


ROUTES = [
    "page upload event",
    "named /upload (queue)",
    "named /upload (call)",
    "named /upload (run)",
    "a file in the chat sent with Ask",
]


def _tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


@pytest.mark.parametrize("route", ROUTES)
def test_a_server_path_is_refused_with_one_sentence_and_nothing_is_copied(
    served: dict[str, Any], route: str
) -> None:
    store = served["chat"].settings.uploads_dir
    cache_before, store_before = _tree(served["cache"]), _tree(store)
    conversations = served["chat"].store.list_conversations()
    answers = {
        name: _send(served, route, served[name], f"{route}-{name}")
        for name in ("existing", "database", "missing")
    }
    assert set(answers.values()) == {NOT_UPLOADED}, answers
    assert not any(hint in answer for answer in answers.values() for hint in EXISTENCE_HINTS)
    assert _tree(served["cache"]) == cache_before  # Gradio copied nothing into its cache
    assert _tree(store) == store_before  # and nothing reached the slide store
    assert served["chat"].store.list_conversations() == conversations


def test_gradio_refuses_by_itself_when_our_middleware_lets_a_path_through(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gradio's own check (as in launch()) is on for the mounted app: with UploadGuard seeing
    no files, Gradio still refuses before it copies, and says nothing about existence."""
    monkeypatch.setattr("web.upload_guard.named_files", lambda data: iter(()))
    cache_before = _tree(served["cache"])
    answers = [
        _send(served, "page upload event", served[name], f"gradio-{name}").replace(
            str(served[name]), "PATH"
        )
        for name in ("existing", "missing")
    ]
    assert answers[0] == answers[1] and "not uploaded by a user" in answers[0]
    assert _tree(served["cache"]) == cache_before


def test_the_upload_handler_refuses_a_path_even_when_gradio_copied_it(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last layer: with the middleware and Gradio's check both off (a Gradio that copies
    whatever it is named), the handler still refuses before it opens the file."""
    import gradio.processing_utils

    monkeypatch.setattr("web.upload_guard.named_files", lambda data: iter(()))
    monkeypatch.setattr(gradio.processing_utils, "_check_allowed", lambda *args: None)
    store = served["chat"].settings.uploads_dir
    store_before = _tree(store)
    conversations = served["chat"].store.list_conversations()
    for route in ("page upload event", "named /upload (run)"):
        answers = {_send(served, route, served[name], route) for name in ("existing", "missing")}
        assert answers == {NOT_UPLOADED}, answers
    assert _tree(store) == store_before
    assert served["chat"].store.list_conversations() == conversations


def test_an_uploaded_file_is_still_accepted_from_the_client_and_the_page(
    served: dict[str, Any], tmp_path: Path
) -> None:
    from gradio_client import Client, handle_file

    url = served["url"]
    image = tmp_path / "legit.png"
    Image.new("RGB", (300, 200), (20, 120, 200)).save(image)
    uploaded = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/upload")
    assert uploaded["meta"]["l0_width"] == 300
    # The page's way: Gradio's upload route, then the upload event naming what it returned.
    other = tmp_path / "legit.tiff"
    Image.new("RGB", (200, 100), (90, 200, 20)).save(other)
    with other.open("rb") as handle:
        stored = httpx.post(url + "gradio_api/upload", files={"files": handle}, timeout=30).json()
    assert _send(served, "page upload event", Path(stored[0]), "legit") == "accepted"


@pytest.mark.parametrize(
    "path",
    [
        "openapi.json",
        "gradio_api/openapi.json",
        "monitoring",
        "monitoring/summary",
        "docs",
        "gradio_api/runs",
    ],
)
def test_gradio_pages_that_need_no_login_are_off_by_default(served: dict[str, Any], path: str):
    assert httpx.get(served["url"] + path, timeout=30).status_code == 404


def test_expose_api_docs_serves_them(tmp_path: Path, tiny_engine) -> None:
    from fastapi.testclient import TestClient

    from storage import Store
    from web.app import create_app
    from web.chat_services import build_chat_services
    from web.config import WebConfig, load_config

    assert load_config(["--expose-api-docs"], {}).expose_api_docs
    assert load_config([], {"OMNIPATH_EXPOSE_API_DOCS": "1"}).expose_api_docs
    config = WebConfig(data_dir=tmp_path, sample_slide=False, expose_api_docs=True)
    chat = build_chat_services(config, engine=tiny_engine, store=Store(tmp_path / "log.db"))
    with TestClient(create_app(config, chat)) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/monitoring/summary").status_code == 200
    chat.store.close()


def test_named_files_finds_every_file_object_however_deep() -> None:
    data = {
        "data": [
            {"path": "/a", "meta": {"_type": "gradio.FileData"}},
            [{"x": [{"path": "/b", "orig_name": "b.png"}]}],  # FileData's fields, no marker
            {"path": "/c", "role": "user"},  # not a file: other fields, no marker
            {"path": 3, "meta": {"_type": "gradio.FileData"}},  # not a path
        ]
    }
    nested: Any = {"path": "/deep", "meta": {"_type": "gradio.FileData"}}
    for _ in range(5000):
        nested = [nested]
    assert sorted(named_files(data)) == ["/a", "/b"]
    assert list(named_files(nested)) == ["/deep"]


def test_received_uploads_keeps_paths_in_the_upload_folder_most_recent_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnipath.errors import NotUploadedError

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    received = ReceivedUploads(limit=2)
    inside = [str(tmp_path / "cache" / name / "f.png") for name in "abc"]
    received.record([inside[0], str(tmp_path / "elsewhere.png"), str(tmp_path / "cache-2/x")])
    assert inside[0] in received and str(tmp_path / "elsewhere.png") not in received
    assert str(tmp_path / "cache-2/x") not in received
    assert str(tmp_path / "cache" / "a" / ".." / "a" / "f.png") in received
    received.record(inside[1:])
    assert inside[0] not in received and all(path in received for path in inside[1:])
    with pytest.raises(NotUploadedError) as refused:
        received.check(inside[0])
    assert refused.value.message == NOT_UPLOADED

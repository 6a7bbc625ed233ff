"""End to end: the real server on 127.0.0.1 (tile routes + chat), driven through gradio_client.

Upload a generated slide, ask two turns, then check the tiles over HTTP, the database rows
and the export files; bad inputs get a sentence back and the next request still works.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import require_viewer_assets, serving_app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    require_viewer_assets()
    with serving_app(tmp_path_factory.mktemp("e2e")) as served:
        yield served


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory):
    from omnipath.synth import write_synthetic_slide

    return write_synthetic_slide(
        tmp_path_factory.mktemp("e2e_slide") / "case.tiff", 3000, 2000, seed=5, n_lesions=2
    )


def _get(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read(), response.headers.get("content-type", "")


def _call(url: str, api_name: str, data: list) -> dict:
    """POST `data` to the named endpoint the way any HTTP client can (json.dumps writes NaN and
    Infinity as JavaScript does) and return the last message of its event stream."""
    request = urllib.request.Request(
        f"{url}gradio_api/call/{api_name}",
        data=json.dumps({"data": data}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    _, body, _ = _get(f"{url}gradio_api/call/{api_name}/{event_id}")
    lines = body.decode().strip().splitlines()
    return {"event": lines[-2].removeprefix("event: "), "data": json.loads(lines[-1][6:])}


def _ask(client, conversation_id: str, question: str, region: str = "") -> tuple[list, dict]:
    job = client.submit(conversation_id, question, "attention", 3, 6, 0.0, region, api_name="/ask")
    final = job.result(timeout=120)
    return job.outputs(), final


def test_upload_two_turns_tiles_database_and_exports(server, client, slide, tmp_path) -> None:
    from gradio_client import handle_file

    url, services = server
    uploaded = client.predict(handle_file(str(slide.path)), api_name="/upload")
    slide_id, conversation_id = uploaded["slide_id"], uploaded["conversation_id"]
    assert uploaded["meta"]["l0_width"] == 3000 and uploaded["meta"]["l0_height"] == 2000

    streamed, first = _ask(client, conversation_id, "Where is the lesion?")
    assert first["done"] and first["turn_id"] and len(first["layers"]["regions"]) == 3
    assert all(not update["done"] for update in streamed[:-1])
    region = json.dumps({"x": 200, "y": 300, "w": 900, "h": 700})
    _, second = _ask(client, conversation_id, "And in this region?", region)
    assert second["done"] and second["turn_id"] != first["turn_id"]

    # tiles over HTTP, keyed by the slide id
    status, body, kind = _get(f"{url}slides/{slide_id}.dzi")
    assert status == 200 and b'Width="3000"' in body and b'Height="2000"' in body
    status, tile, kind = _get(f"{url}slides/{slide_id}_files/8/0_0.jpeg")
    assert status == 200 and kind == "image/jpeg" and tile[:2] == b"\xff\xd8"

    # the database rows
    conversation = services.store.load_conversation(conversation_id)
    assert conversation["slide"]["width"] == 3000
    turns = conversation["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2]["meta"]["l0_region"] == [200, 300, 900, 700]
    assert turns[3]["id"] == second["turn_id"] and len(turns[3]["regions"]) == 3

    # the exports, downloaded as files
    exported = {
        fmt: Path(client.predict(conversation_id, fmt, api_name="/export"))
        for fmt in ("json", "geojson", "html")
    }
    logged = json.loads(exported["json"].read_text())
    assert [t["id"] for t in logged["turns"]] == [t["id"] for t in turns]
    geo = json.loads(exported["geojson"].read_text())
    assert len(geo["features"]) == 6
    for feature in geo["features"]:
        for x, y in feature["geometry"]["coordinates"][0]:
            assert 0 <= x <= 3000 and 0 <= y <= 2000
    assert exported["html"].read_text().count("data:image/jpeg;base64,") == 2


def test_bad_inputs_get_sentences_and_the_next_request_works(
    server, client, slide, tmp_path
) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, services = server
    not_a_slide = tmp_path / "report.svs"
    not_a_slide.write_text("patient notes, not pixels\n" * 40)
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(not_a_slide)), api_name="/upload")
    assert "Traceback" not in str(caught.value) and len(str(caught.value)) > 10

    limit = services.settings
    services.settings = dataclasses.replace(limit, max_upload_bytes=1000)
    try:
        with pytest.raises(AppError, match="more than this server accepts"):
            client.predict(handle_file(str(slide.path)), api_name="/upload")
    finally:
        services.settings = limit

    uploaded = client.predict(handle_file(str(slide.path)), api_name="/upload")
    conversation_id = uploaded["conversation_id"]
    with pytest.raises(AppError, match="question is empty"):
        client.predict(conversation_id, "  ", "attention", 3, 6, 0.0, "", api_name="/ask")
    with pytest.raises(AppError, match="No conversation"):
        client.predict("0" * 32, "Where?", "attention", 3, 6, 0.0, "", api_name="/ask")
    with pytest.raises(AppError, match="not known|pgdfc"):
        client.predict(conversation_id, "Where?", "zoom", 3, 6, 0.0, "", api_name="/ask")
    with pytest.raises(AppError, match="Export as one of"):
        client.predict(conversation_id, "pdf", api_name="/export")

    _, final = _ask(client, conversation_id, "Where is the lesion?")
    assert final["done"]
    assert len(services.store.load_conversation(conversation_id)["turns"]) == 2


def test_raw_calls_with_too_few_or_absurd_values_get_sentences(server, client, slide) -> None:
    from gradio_client import handle_file

    url, services = server
    conversation_id = client.predict(handle_file(str(slide.path)), api_name="/upload")[
        "conversation_id"
    ]
    short = {
        "ask": ([conversation_id], "/ask takes 7 values (conversation_id, question, "),
        "export": ([], "/export takes 2 values"),
        "upload": ([], "/upload takes 1 value (path); the call sent 0."),
    }
    for api_name, (data, sentence) in short.items():
        reply = _call(url, api_name, data)
        assert reply["event"] == "error" and reply["data"]["error"].startswith(sentence)
        assert "object at 0x" not in reply["data"]["error"]

    ask = [conversation_id, "Where?", "attention", 3, 6, 0.0, ""]
    for position, value, phrase in [
        (3, None, "S (the number of detail patches) must be a whole number, not None"),
        (3, float("nan"), "S (the number of detail patches) must be a whole number, not nan"),
        (4, float("inf"), "max_new_tokens must be a whole number, not inf"),
        (4, "many", "max_new_tokens must be a whole number, not 'many'"),
        (5, "hot", "temperature must be a finite number, not 'hot'"),
        (6, '{"x": Infinity, "y": 0, "w": 9, "h": 9}', "The region must be a rectangle"),
        (0, "c" * 100_000, "No conversation with id 'cccc"),
    ]:
        reply = _call(url, "ask", ask[:position] + [value] + ask[position + 1 :])
        assert reply["event"] == "error", (value, reply)
        assert reply["data"]["error"].startswith(phrase) and len(reply["data"]["error"]) < 200
    assert services.store.load_conversation(conversation_id)["turns"] == []
    assert _call(url, "ask", ask)["event"] == "complete"  # and the server still answers

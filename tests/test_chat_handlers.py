"""The chat's handlers as plain functions: tiny engine, a synthetic slide, a SQLite log in
tmp_path. Upload (progress, limits, bad files), ask (streaming, two turns, history, region,
stop, failures), retry, undo, feedback, reopen, export."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest

from omnipath.coords import L0Rect
from omnipath.engine import Answer, AnswerOptions, Queued
from omnipath.errors import (
    GenerationError,
    NotFoundError,
    OptionsError,
    SlideError,
    UploadTooLargeError,
)
from web import exports, handlers, upload
from web.chat_services import build_chat_services
from web.config import WebConfig
from web.question import parse_region

OPTIONS = AnswerOptions(s=3, max_new_tokens=6)


class SpyEngine:
    """The real engine, remembering what each answer() call was given."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.calls: list[dict] = []

    @property
    def info(self) -> dict:
        return self.engine.info

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
        self.calls.append({"history": list(history), "question": question, "l0_region": l0_region})
        return self.engine.answer(
            slide,
            history,
            question,
            options,
            stop=stop,
            l0_region=l0_region,
            slide_id=slide_id,
            queue_updates=queue_updates,
        )


class FailingEngine(SpyEngine):
    """Streams one delta, then fails the way a GPU out-of-memory would surface."""

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
        options = options or AnswerOptions()
        options.validate()

        def stream():
            yield "partial "
            raise GenerationError("The model ran out of memory; try fewer detail patches.")

        return stream()


class ScriptedEngine(SpyEngine):
    """Streams the given items (text deltas, or Queued places), then an Answer with the
    deltas' text; each item moves `clock` (a FakeClock, when given) on by `step` seconds."""

    def __init__(self, engine, deltas: list[str], clock=None, step: float = 0.0) -> None:
        super().__init__(engine)
        self.deltas, self.clock, self.step = deltas, clock, step

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
        (options or AnswerOptions()).validate()

        def stream():
            for delta in self.deltas:
                if self.clock is not None:
                    self.clock.now += self.step
                yield delta
            text = "".join(d for d in self.deltas if isinstance(d, str))
            yield Answer(text=text, model_id="tiny")

        return stream()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture()
def services(tmp_path: Path, tiny_engine):
    config = WebConfig(data_dir=tmp_path / "data", sample_slide=False)
    from storage import Store

    store = Store(tmp_path / "log.db")
    chat = build_chat_services(config, engine=SpyEngine(tiny_engine), store=store)
    yield chat
    chat.web.registry.close()
    store.close()


@pytest.fixture()
def uploaded(services, synthetic_slide) -> dict:
    return upload.upload_slide(services, synthetic_slide.path, file_name="case 12.tiff")


def _finish(stream) -> tuple[list[handlers.AskUpdate], handlers.AskUpdate]:
    updates = list(stream)
    return updates[:-1], updates[-1]


def test_upload_reports_progress_records_the_slide_and_starts_a_conversation(
    services, synthetic_slide
) -> None:
    steps: list[tuple[float, str]] = []
    result = upload.upload_slide(
        services,
        synthetic_slide.path,
        file_name="case 12.tiff",
        progress=lambda f, text: steps.append((f, text)),
    )
    texts = [text for _, text in steps]
    order = ["Storing the slide", "Making the thumbnail", "Ready"]  # one pass stores and hashes
    assert [t for t in dict.fromkeys(texts)] == order
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0

    from omnipath.slide import content_hash

    assert result["slide_id"] == content_hash(synthetic_slide.path)
    recorded = services.store.get_slide(result["slide_id"])
    assert (recorded["width"], recorded["height"]) == (
        synthetic_slide.width,
        synthetic_slide.height,
    )
    assert recorded["file_name"] is None  # file names stay out unless the operator asks
    assert Path(recorded["stored_path"]).parent == services.settings.uploads_dir
    state = json.loads(result["viewer_state"])
    assert state["dzi_url"] == f"/slides/{result['slide_id']}.dzi"
    assert state["meta"]["l0_width"] == synthetic_slide.width
    conversation = services.store.load_conversation(result["conversation_id"])
    assert conversation["slide_id"] == result["slide_id"] and conversation["turns"] == []

    again = upload.upload_slide(services, synthetic_slide.path)
    assert again["slide_id"] == result["slide_id"]
    assert again["conversation_id"] != result["conversation_id"]  # a new slide upload, a new talk


def test_too_large_upload_is_refused_before_anything_is_read(services, synthetic_slide) -> None:
    small = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, max_upload_bytes=1024)
    )
    opened: list[Path] = []
    small.web.registry._opener = lambda path: opened.append(path)  # must never be called
    with pytest.raises(UploadTooLargeError, match="more than this server accepts"):
        upload.upload_slide(small, synthetic_slide.path)
    assert opened == [] and not any(small.settings.uploads_dir.iterdir())


def test_not_a_slide_is_refused_and_the_next_upload_works(
    services, synthetic_slide, tmp_path
) -> None:
    notes = tmp_path / "notes.tiff"
    notes.write_text("this is not a slide\n" * 50)
    with pytest.raises(SlideError) as caught:
        upload.upload_slide(services, notes)
    assert caught.value.message and "Traceback" not in caught.value.message
    assert not any(services.settings.uploads_dir.iterdir())  # the copy was removed
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideError):
        upload.upload_slide(services, empty)
    assert upload.upload_slide(services, synthetic_slide.path)["slide_id"]


def test_two_turns_stream_log_and_carry_the_history(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    partial, final = _finish(
        handlers.ask(services, conversation_id, "Where is the tumor?", OPTIONS)
    )
    assert final.done and final.turn_id and final.answer is not None
    assert all(not u.done for u in partial)
    assert [len(u.text) for u in partial] == sorted(len(u.text) for u in partial)
    assert final.answer["text"] == (partial[-1].text if partial else "")
    regions = final.layers["regions"]
    assert [r["number"] for r in regions] == [1, 2, 3]
    for region in regions:
        rect = region["l0_rect"]
        assert 0 <= rect["x"] and rect["x"] + rect["w"] <= uploaded["meta"]["l0_width"]

    _, second = _finish(handlers.ask(services, conversation_id, "What grade is it?", OPTIONS))
    assert second.done
    calls = services.engine.calls
    assert calls[0]["history"] == []
    assert [m["role"] for m in calls[1]["history"]] == ["user", "assistant"]
    assert calls[1]["history"][0]["content"] == "Where is the tumor?"

    turns = services.store.load_conversation(conversation_id)["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1]["pgdfc_mode"] == "attention" and turns[1]["s"] == 3
    assert len(turns[1]["regions"]) == 3 and turns[1]["model_id"] == "tiny"
    assert turns[1]["timings"] and turns[1]["tokens"]["detail_patches"] == 3
    messages = handlers.chat_messages(turns)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    json.dumps(second.to_dict())  # what gradio_client receives


def test_bad_questions_and_ids_raise_typed_errors_and_log_nothing(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    with pytest.raises(OptionsError, match="empty"):
        handlers.ask(services, conversation_id, "   ", OPTIONS)
    with pytest.raises(NotFoundError):
        handlers.ask(services, "0" * 32, "Where?", OPTIONS)
    with pytest.raises(NotFoundError):
        handlers.ask(services, "", "Where?", OPTIONS)
    with pytest.raises(OptionsError, match="at least one detail patch"):
        list(handlers.ask(services, conversation_id, "Where?", AnswerOptions(s=0)))
    with pytest.raises(OptionsError, match="region"):
        handlers.ask(services, conversation_id, "Where?", OPTIONS, region="{not json")
    assert services.store.load_conversation(conversation_id)["turns"] == []
    # and the conversation keeps working
    assert _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))[1].done


def test_region_goes_to_the_engine_and_into_the_log(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    region = json.dumps({"x": 100, "y": 200, "w": 800, "h": 600})
    _finish(handlers.ask(services, conversation_id, "What is here?", OPTIONS, region=region))
    assert services.engine.calls[-1]["l0_region"] == L0Rect(100, 200, 800, 600)
    user_turn = services.store.load_conversation(conversation_id)["turns"][0]
    assert user_turn["meta"]["l0_region"] == [100, 200, 800, 600]
    assert "about the region" in handlers.chat_messages([user_turn])[0]["content"]


def test_parse_region_clips_and_refuses() -> None:
    assert parse_region("", 1000, 500) is None
    assert parse_region(None, 1000, 500) is None
    assert parse_region({"x": -50, "y": 400, "w": 100, "h": 300}, 1000, 500) == L0Rect(
        0, 400, 50, 100
    )
    assert parse_region({"x": 300, "y": 300, "w": -100, "h": -100}, 1000, 500) == L0Rect(
        200, 200, 100, 100
    )
    with pytest.raises(OptionsError, match="outside the slide"):
        parse_region({"x": 2000, "y": 0, "w": 10, "h": 10}, 1000, 500)
    with pytest.raises(OptionsError):
        parse_region({"x": "a", "y": 0, "w": 10, "h": 10}, 1000, 500)


@pytest.mark.parametrize(
    "region",
    [
        '{"x": Infinity, "y": 0, "w": 10, "h": 10}',
        '{"x": 1e400, "y": 0, "w": 10, "h": 10}',
        '{"x": NaN, "y": 0, "w": 10, "h": 10}',
        '{"x": 10' + "0" * 400 + ', "y": 0, "w": 10, "h": 10}',
        '{"x": ' + "[" * 5000 + "]" * 5000 + ', "y": 0, "w": 10, "h": 10}',
        "[" * 100_000 + "]" * 100_000,  # json.loads alone would raise RecursionError
        {"x": [[[[[1]]]]], "y": 0, "w": 10, "h": 10},
        {"x": float("inf"), "y": 0, "w": 10, "h": 10},
        {"x": 10**400, "y": 0, "w": 10, "h": 10},
    ],
)
def test_parse_region_refuses_non_finite_huge_and_deep_values_in_a_sentence(region) -> None:
    with pytest.raises(OptionsError, match=r"rectangle \{x, y, w, h\}"):
        parse_region(region, 1000, 500)


def test_questions_are_shown_as_text_not_html_or_images() -> None:
    import gradio as gr

    question = 'Is <img src=x onerror="alert(1)"> here? ![x](http://127.0.0.1:9/x.png) & <b>'
    turns = [
        {"role": "user", "text": question, "meta": {}},
        {"role": "user", "text": question, "meta": {"l0_region": [1, 2, 3, 4]}},
    ]
    for message in handlers.chat_messages(turns):
        assert "&lt;img src=x" in message["content"] and "<img" not in message["content"]
        assert "<b>" not in message["content"] and "&amp;" in message["content"]
        assert "![" not in message["content"]  # Markdown images are defused too
    shown = gr.Chatbot().postprocess(handlers.chat_messages(turns)).model_dump_json()
    assert "<img" not in shown and "![" not in shown


def test_stop_keeps_the_text_so_far_and_logs_it_as_stopped(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    stop = threading.Event()
    assert not handlers.stop_answer(services, conversation_id)  # nothing running yet
    stream = handlers.ask(
        services,
        conversation_id,
        "Describe everything.",
        AnswerOptions(s=2, max_new_tokens=40),
        stop=stop,
    )
    first = next(stream)
    assert handlers.stop_answer(services, conversation_id)
    assert stop.is_set()
    final = list(stream)[-1]
    assert final.done and final.answer["stopped"]
    assert final.answer["tokens"]["generated"] < 40
    assert final.answer["text"].startswith(first.text)
    turn = services.store.load_conversation(conversation_id)["turns"][-1]
    assert (
        turn["meta"]["stopped"] is True
        and "stopped" in handlers.chat_messages([turn])[0]["content"]
    )
    assert turn["status"] == "done" and turn["id"] == final.turn_id
    assert conversation_id not in services.stops


def test_a_failing_model_is_logged_with_its_error_and_the_next_question_works(
    services, uploaded, tiny_engine
) -> None:
    conversation_id = uploaded["conversation_id"]
    real = services.engine
    services.engine = FailingEngine(tiny_engine)
    with pytest.raises(GenerationError, match="ran out of memory"):
        list(handlers.ask(services, conversation_id, "Where?", OPTIONS))
    turns = services.store.load_conversation(conversation_id)["turns"]
    # the answer begun with the question was completed as failed: no separate error row
    assert [(t["role"], t["status"]) for t in turns] == [("user", "done"), ("assistant", "failed")]
    assert turns[1]["text"] == "partial " and "out of memory" in turns[1]["error"]
    services.engine = real
    assert _finish(handlers.ask(services, conversation_id, "Again?", OPTIONS))[1].done


def test_retry_replaces_the_last_answer_and_undo_removes_the_exchange(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    with pytest.raises(OptionsError, match="no question"):
        handlers.retry(services, conversation_id, OPTIONS)
    _, first = _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))
    _, again = _finish(handlers.retry(services, conversation_id, OPTIONS))
    assert again.done and again.turn_id != first.turn_id
    turns = services.store.load_conversation(conversation_id)["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[1]["id"] == again.turn_id
    assert services.engine.calls[-1]["history"] == []  # the question is not its own history

    result = handlers.undo(services, conversation_id)
    assert result["question"] == "Where?" and result["messages"] == []
    assert result["layers"] == handlers.empty_layers()
    assert handlers.undo(services, conversation_id)["question"] is None


def test_feedback_is_logged_on_answers_only(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))
    assert handlers.feedback(services, conversation_id, 1, True) > 0
    assert handlers.feedback(services, conversation_id, 1, False) > 0
    turn = services.store.load_conversation(conversation_id)["turns"][1]
    assert [f["value"] for f in turn["feedback"]] == ["like", "dislike"]
    assert turn["liked"] == "dislike"
    with pytest.raises(OptionsError):
        handlers.feedback(services, conversation_id, 0, True)
    with pytest.raises(NotFoundError):
        handlers.feedback(services, conversation_id, 7, True)


def test_reopen_restores_slide_turns_and_layers_in_a_fresh_server(
    services, uploaded, tmp_path, tiny_engine
) -> None:
    conversation_id = uploaded["conversation_id"]
    _, final = _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))
    # a restarted server: new registry (nothing registered), same database
    fresh = build_chat_services(
        WebConfig(data_dir=services.settings.data_dir, sample_slide=False),
        engine=services.engine,
        store=services.store,
    )
    assert not fresh.registry.is_registered(uploaded["slide_id"])
    listed = handlers.list_conversations(fresh)
    assert conversation_id in [c["id"] for c in listed]
    restored = handlers.reopen_conversation(fresh, conversation_id)
    assert restored["slide_id"] == uploaded["slide_id"]
    assert [m["role"] for m in restored["messages"]] == ["user", "assistant"]
    assert restored["layers"]["regions"] == final.layers["regions"]
    state = json.loads(restored["viewer_state"])
    assert state["layers"]["regions"] == final.layers["regions"]
    assert fresh.web.tiles.meta(uploaded["slide_id"])["l0_width"] == uploaded["meta"]["l0_width"]
    with pytest.raises(NotFoundError):
        handlers.reopen_conversation(fresh, "f" * 32)
    fresh.web.registry.close()


def test_turn_layers_draw_masks_and_number_regions_by_rank() -> None:
    import io

    import numpy as np
    from PIL import Image

    bitmap = np.zeros((4, 6), dtype=np.uint8)
    bitmap[1:3, 2:5] = 255
    png = io.BytesIO()
    Image.fromarray(bitmap, "L").save(png, "PNG")
    turn = {
        "regions": [
            {"rank": 2, "score": 0.1, "l0_rect": [10, 10, 5, 5]},
            {"rank": 1, "score": 0.3, "l0_rect": [0, 0, 5, 5]},
        ],
        "boxes": [{"rel": [0, 0, 1, 1], "l0_rect": [1, 2, 3, 4], "label": "tumor"}],
        "masks": [{"index": 0, "l0_rect": [0, 0, 60, 40], "label": None, "png": png.getvalue()}],
    }
    layers = handlers.turn_layers(turn)
    assert [r["number"] for r in layers["regions"]] == [1, 2]
    assert layers["regions"][0]["l0_rect"] == {"x": 0, "y": 0, "w": 5, "h": 5}
    assert layers["boxes"] == [{"l0_rect": {"x": 1, "y": 2, "w": 3, "h": 4}, "label": "tumor"}]
    src = layers["masks"][0]["src"]
    assert src.startswith("data:image/png;base64,")
    import base64

    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    assert (drawn[..., 3] > 0).sum() == 6  # the 2×3 True pixels, the rest transparent


def test_exports_json_geojson_and_html(services, uploaded, tmp_path) -> None:
    conversation_id = uploaded["conversation_id"]
    for question in ("Where?", "Which grade?"):
        _finish(handlers.ask(services, conversation_id, question, OPTIONS))
    folder = tmp_path / "exports"
    logged = json.loads(
        exports.export_conversation(services, conversation_id, "json", folder).read_text()
    )
    assert len(logged["turns"]) == 4 and logged["conversation"]["id"] == conversation_id

    geo = json.loads(
        exports.export_conversation(services, conversation_id, "geojson", folder).read_text()
    )
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 6  # 3 regions × 2
    width, height = uploaded["meta"]["l0_width"], uploaded["meta"]["l0_height"]
    for feature in geo["features"]:
        for x, y in feature["geometry"]["coordinates"][0]:
            assert 0 <= x <= width and 0 <= y <= height

    page = exports.export_conversation(services, conversation_id, "html", folder).read_text()
    assert page.count("data:image/jpeg;base64,") == 2  # one snapshot per answer
    assert "Which grade?" in page and "Demonstration model" not in page  # banner wording
    assert "demonstration model" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page

    with pytest.raises(OptionsError, match="Export as one of"):
        exports.export_conversation(services, conversation_id, "pdf", folder)
    with pytest.raises(NotFoundError):
        exports.export_conversation(services, "1" * 32, "json", folder)


def test_errors_quote_only_the_start_of_a_huge_id_or_format(services, uploaded, tmp_path) -> None:
    huge = "9" * 100_000
    for call in (
        lambda: exports.export_conversation(services, huge, "json", tmp_path),
        lambda: exports.export_conversation(services, uploaded["conversation_id"], huge, tmp_path),
        lambda: handlers.ask(services, huge, "Where?", OPTIONS),
        lambda: handlers.undo(services, huge),
    ):
        with pytest.raises((NotFoundError, OptionsError)) as info:
            call()
        assert "9999999" in info.value.message and len(info.value.message) < 200


def test_exports_are_private_and_old_ones_are_swept(services, uploaded, tmp_path) -> None:
    import os
    import stat
    import time

    conversation_id = uploaded["conversation_id"]
    downloads = exports.DownloadFolder()
    first = downloads.export(services, conversation_id, "json")
    assert first.parent == downloads.path
    assert stat.S_IMODE(downloads.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    old = time.time() - exports.DOWNLOAD_KEEP_S - 60
    os.utime(first, (old, old))  # written 11 minutes ago
    second = downloads.export(services, conversation_id, "geojson")
    assert not first.exists() and second.exists()
    assert sorted(p.name for p in downloads.path.iterdir()) == [second.name]  # nothing partial
    assert stat.S_IMODE(second.stat().st_mode) == 0o600
    os.remove(second)
    os.rmdir(downloads.path)


def test_a_slide_opened_at_start_gets_recorded_when_its_first_conversation_starts(
    services, synthetic_slide
) -> None:
    slide_id = services.registry.register(synthetic_slide.path)
    with pytest.raises(NotFoundError):  # known to the server, but nobody's and not shown at start
        handlers.new_conversation(services, slide_id)
    services.web.initial_slide_id = slide_id  # as --slide / the sample does
    with pytest.raises(NotFoundError):
        services.store.get_slide(slide_id)
    conversation_id = handlers.new_conversation(services, slide_id)
    recorded = services.store.get_slide(slide_id)
    assert recorded["width"] == synthetic_slide.width
    assert recorded["size_bytes"] == synthetic_slide.path.stat().st_size
    assert _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))[1].done
    with pytest.raises(NotFoundError):
        handlers.new_conversation(services, "e" * 64)


def _statuses(services, conversation_id) -> list[tuple[str, str]]:
    turns = services.store.load_conversation(conversation_id)["turns"]
    return [(t["role"], t["status"]) for t in turns]


def test_an_answer_is_logged_in_progress_and_completed_in_place(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    stream = handlers.ask(
        services, conversation_id, "Describe everything.", AnswerOptions(s=2, max_new_tokens=40)
    )
    first = next(stream)
    # the question and its answer in progress, written together; the first text saved at once
    assert _statuses(services, conversation_id) == [("user", "done"), ("assistant", "in_progress")]
    begun = services.store.load_conversation(conversation_id)["turns"]
    assert begun[1]["text"] == first.text and begun[1]["meta"]["options"]["s"] == 2
    final = list(stream)[-1]
    turns = services.store.load_conversation(conversation_id)["turns"]
    assert [t["id"] for t in turns] == [t["id"] for t in begun] and final.turn_id == turns[1]["id"]
    assert turns[1]["status"] == "done" and turns[1]["text"] == final.answer["text"]
    assert turns[1]["tokens"]["generated"] == final.answer["tokens"]["generated"]


def test_the_text_so_far_is_saved_at_a_bounded_rate(
    services, uploaded, tiny_engine, monkeypatch
) -> None:
    from types import SimpleNamespace

    clock = FakeClock()
    monkeypatch.setattr(handlers, "time", SimpleNamespace(monotonic=clock.monotonic))
    services.engine = ScriptedEngine(tiny_engine, ["word "] * 50, clock=clock, step=0.1)
    real_save = services.store.save_answer_text
    saves: list[tuple[float, str]] = []

    def counting_save(turn_id: str, text: str) -> bool:
        saves.append((clock.now, text))
        return real_save(turn_id, text)

    monkeypatch.setattr(services.store, "save_answer_text", counting_save)
    _, final = _finish(handlers.ask(services, uploaded["conversation_id"], "Describe.", OPTIONS))
    interval = handlers.ANSWER_SAVE_INTERVAL_S
    assert saves[0][1] == "word "  # the first text at once
    pairs = list(zip(saves, saves[1:], strict=False))
    assert all(later - earlier >= interval for (earlier, _), (later, _) in pairs)
    assert 2 <= len(saves) <= 1 + 50 * 0.1 / interval  # 5 s of streaming: ≤ 11 UPDATEs, not 50
    assert all(later.startswith(earlier) for (_, earlier), (_, later) in pairs)
    assert services.store.get_turn(final.turn_id)["text"] == "word " * 50  # the end completes it


def test_a_waiting_question_is_told_its_place_then_answered(services, uploaded, tiny_engine):
    """While the engine's batch is busy, the question's place reaches the stream (and the
    chat bubble says it); then the answer streams as usual."""
    from web.chat_app import live_text

    services.engine = ScriptedEngine(tiny_engine, [Queued(2), Queued(0), "Three ", "lesions."])
    updates = list(handlers.ask(services, uploaded["conversation_id"], "How many?", OPTIONS))
    assert [(u.waiting, u.text) for u in updates[:2]] == [(2, ""), (0, "")]
    assert live_text(updates[0]) == "⏳ Waiting for the model: 2 questions are ahead of yours."
    assert "next" in live_text(updates[1])
    assert updates[2].waiting is None and live_text(updates[2]) == "Three "
    assert updates[-1].done and updates[-1].text == "Three lesions."
    assert updates[0].to_dict()["waiting"] == 2


def test_an_empty_answer_says_the_model_gave_none(services, uploaded, tiny_engine) -> None:
    services.engine = ScriptedEngine(tiny_engine, [])
    _, final = _finish(handlers.ask(services, uploaded["conversation_id"], "Hm?", OPTIONS))
    turn = services.store.get_turn(final.turn_id)
    assert (turn["status"], turn["text"], turn["error"]) == ("done", "", handlers.NO_ANSWER)
    assert "gave no answer" in final.text and "rephras" in final.text
    message = handlers.chat_messages([turn])[0]["content"]
    assert message == "⚠ The model gave no answer; try rephrasing the question."
    # an empty answer logged before this rule, and one stopped before any text
    old = {"role": "assistant", "text": "", "meta": {}, "error": None, "status": "done"}
    assert "gave no answer" in handlers.chat_messages([old])[0]["content"]
    stopped = {**old, "meta": {"stopped": True}}
    assert handlers.chat_messages([stopped])[0]["content"] == "⚠ stopped"


def test_s_above_the_tissue_cells_is_refused_before_anything_is_logged(services, uploaded) -> None:
    conversation_id = uploaded["conversation_id"]
    too_many = AnswerOptions(s=40, max_new_tokens=6)  # the synthetic slide has 29 tissue cells
    with pytest.raises(OptionsError, match="hold tissue") as caught:
        list(handlers.ask(services, conversation_id, "Where?", too_many))
    assert caught.value.message.endswith(".") and "choose S ≤ 29" in caught.value.message
    assert services.store.load_conversation(conversation_id)["turns"] == []
    # Retry with such an S keeps the answer it would have replaced
    _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))
    before = services.store.load_conversation(conversation_id)["turns"]
    with pytest.raises(OptionsError, match="hold tissue"):
        list(handlers.retry(services, conversation_id, too_many))
    assert services.store.load_conversation(conversation_id)["turns"] == before


def test_an_answer_cut_off_by_a_crash_reads_interrupted_and_retry_replaces_it(
    services, uploaded
) -> None:
    from web.app import app_services

    conversation_id = uploaded["conversation_id"]
    # what a server killed mid-answer leaves: the question and its answer in progress
    store = services.store
    cut = store.begin_answer(conversation_id, "Describe everything.", pgdfc_mode="attention", s=3)
    store.save_answer_text(cut, "A section of")
    # the restarted server
    config = WebConfig(data_dir=services.settings.data_dir, sample_slide=False)
    fresh = app_services(config, build_chat_services(config, engine=services.engine, store=store))
    assert _statuses(fresh, conversation_id) == [("user", "done"), ("assistant", "interrupted")]
    messages = handlers.reopen_conversation(fresh, conversation_id)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == (
        "A section of\n\n⚠ interrupted (the server stopped while answering); press Retry"
    )
    question_id = store.load_conversation(conversation_id)["turns"][0]["id"]
    _, again = _finish(handlers.retry(fresh, conversation_id, OPTIONS))
    turns = store.load_conversation(conversation_id)["turns"]
    assert [t["id"] for t in turns] == [question_id, again.turn_id] and again.turn_id != cut
    assert [t["status"] for t in turns] == ["done", "done"]
    assert "interrupted" not in handlers.chat_messages(turns)[1]["content"]
    assert services.engine.calls[-1]["history"] == []  # the question is not its own history
    fresh.web.registry.close()


def test_an_abandoned_answer_is_logged_as_cancelled_and_frees_the_engine(
    services, uploaded
) -> None:
    conversation_id = uploaded["conversation_id"]
    stream = handlers.ask(
        services, conversation_id, "Describe everything.", AnswerOptions(s=2, max_new_tokens=40)
    )
    first = next(stream)
    stream.close()  # what Gradio does when the page goes away mid-answer
    turn = services.store.load_conversation(conversation_id)["turns"][1]
    assert (turn["status"], turn["text"], turn["error"]) == (
        "failed",
        first.text,
        handlers.CANCELLED,
    )
    assert conversation_id not in services.stops
    assert _finish(handlers.ask(services, conversation_id, "Where?", OPTIONS))[1].done


class OverlayEngine(SpyEngine):
    """Answers with a region (its score unknown: NaN), a box and a mask, and a 'stopped' flag."""

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
        import numpy as np

        from omnipath.coords import RelBox
        from omnipath.engine import Box, MaskResult, Region

        bitmap = np.zeros((6, 9), dtype=bool)
        bitmap[1:4, 2:7] = True

        def stream():
            yield "A lesion"
            yield Answer(
                text="A lesion",
                regions=[
                    Region(2, float("nan"), L0Rect(10, 20, 30, 40)),
                    Region(1, 0.25, L0Rect(0, 0, 50, 50)),
                ],
                boxes=[Box(RelBox(0.1, 0.1, 0.2, 0.2), L0Rect(5, 6, 7, 8), "nucleus")],
                masks=[MaskResult(bitmap, L0Rect(100, 100, 90, 60))],
                stopped=True,
            )

        return stream()


def test_the_last_update_is_built_from_the_answer_in_memory_as_the_log_shows_it(
    services, uploaded, monkeypatch
) -> None:
    from web.messages import message_text, turn_layers

    services.engine = OverlayEngine(services.engine)
    conversation_id = uploaded["conversation_id"]
    stream = handlers.ask(
        services, conversation_id, "Where?", OPTIONS, region='{"x":1,"y":2,"w":3,"h":4}'
    )
    assert stream.question.l0_region == L0Rect(1, 2, 3, 4) and "about the region" in stream.message
    reads = []
    for name in ("get_turn", "load_conversation"):
        monkeypatch.setattr(services.store, name, lambda *a, _name=name, **k: reads.append(_name))
    _, final = _finish(stream)
    assert reads == []  # nothing read back from the log after the answer
    monkeypatch.undo()
    logged = services.store.load_conversation(conversation_id)["turns"][-1]
    assert final.text == message_text(logged) and "stopped" in final.text
    assert final.layers == turn_layers(logged)
    assert [r["number"] for r in final.layers["regions"]] == [1, 2]
    assert len(final.layers["boxes"]) == 1 and len(final.layers["masks"]) == 1


def test_a_question_is_checked_once_into_a_question_the_layers_below_trust() -> None:
    from web.question import Question, form_options

    conversation = {"id": "c" * 32, "slide": {"id": "a" * 64, "width": 1000, "height": 500}}
    question = Question.parse(
        conversation, "  Where?  ", OPTIONS, {"x": 900, "y": -10, "w": 400, "h": 100}
    )
    assert (question.text, question.slide_id, question.l0_region) == (
        "Where?", "a" * 64, L0Rect(900, 0, 100, 90)
    )  # fmt: skip
    assert question.region_meta == {"l0_region": [900, 0, 100, 90]}
    for text in ("", "   ", None, 3):
        with pytest.raises(OptionsError, match="question is empty"):
            Question.parse(conversation, text, OPTIONS)
    with pytest.raises(OptionsError, match="max_new_tokens"):
        Question.parse(conversation, "Where?", AnswerOptions(max_new_tokens=0))
    # the form's values: an empty mode is attention, S is ignored when PGDFC is off
    assert form_options("", 3, 8.0, 0.0).pgdfc_mode == "attention"
    assert form_options("off", float("nan"), 8, 0.0).s == 0

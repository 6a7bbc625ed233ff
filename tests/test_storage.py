"""The session log (storage.Store) on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from omnipath.errors import NotFoundError
from storage import Store
from storage.db import current_revision
from storage.errors import DatabaseError, InvalidRecordError
from tests import postgres
from tests.threads import run_together

postgres_server = postgres.postgres_server
database_url = postgres.database_url

REPO = Path(__file__).resolve().parents[1]
SLIDE_ID = "5e" * 32
SLIDE = dict(
    size_bytes=123_456,
    vendor="generic-tiff",
    width=4000,
    height=3000,
    mpp_x=0.25,
    mpp_y=0.25,
    objective_power=40.0,
)


def _png(bitmap: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(bitmap.astype(bool)).save(buf, format="PNG")
    return buf.getvalue()


def _row_count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


@pytest.fixture
def store(database_url: str) -> Store:
    with Store(database_url) as opened:
        yield opened


@pytest.fixture
def conversation(store: Store) -> str:
    store.record_slide(SLIDE_ID, stored_path="/slides/x.tiff", **SLIDE)
    return store.start_conversation(SLIDE_ID, "tiny")


def test_importing_storage_loads_no_torch_and_only_omnipath_errors_and_facts() -> None:
    code = (
        "import sys, storage, storage.export, storage.log, storage.db, storage.models\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "extra = sorted(m for m in sys.modules if m.startswith('omnipath')"
        " and m not in ('omnipath', 'omnipath.errors', 'omnipath.facts'))\n"
        "assert not extra, extra\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_record_slide_is_idempotent_and_keeps_file_names_out_by_default(store: Store) -> None:
    assert (
        store.record_slide(SLIDE_ID, stored_path="/a.tiff", file_name="patient-42.svs", **SLIDE)
        == SLIDE_ID
    )
    store.record_slide(SLIDE_ID, stored_path="/b.tiff", file_name="patient-42.svs", **SLIDE)
    slide = store.get_slide(SLIDE_ID)
    assert _row_count(store, "slides") == 1
    assert slide["file_name"] is None
    assert slide["stored_path"] == "/b.tiff"  # the latest copy of the same bytes
    assert (slide["width"], slide["height"], slide["mpp_x"]) == (4000, 3000, 0.25)


def test_file_names_are_logged_when_the_operator_turns_it_on(database_url: str) -> None:
    with Store(database_url, log_file_names=True) as store:
        store.record_slide(SLIDE_ID, file_name="case.svs", **SLIDE)
        assert store.get_slide(SLIDE_ID)["file_name"] == "case.svs"


def test_a_conversation_reloads_with_its_slide_turns_and_overlays(
    store: Store, conversation: str
) -> None:
    bitmap = np.zeros((16, 24), bool)
    bitmap[3:9, 5:20] = True
    store.log_turn(conversation, "user", "Where is the tumour?")
    answer = store.log_turn(
        conversation,
        "assistant",
        "Here [0.1, 0.2, 0.3, 0.4].",
        pgdfc_mode="attention",
        s=8,
        regions=[
            {"rank": 1, "score": 0.75, "l0_rect": [0, 0, 500, 500]},
            {"rank": 2, "score": 0.5, "l0_rect": [500, 0, 500, 500]},
        ],
        boxes=[{"rel": [0.1, 0.2, 0.3, 0.4], "l0_rect": [400, 600, 800, 600], "label": "tumour"}],
        masks=[
            {"l0_rect": [400, 600, 800, 600], "png": _png(bitmap)},
            {"l0_rect": [10, 20, 30, 40], "bitmap": bitmap[::-1]},
        ],
        timings={"vision": 0.5, "decode": 2.0},
        tokens={"prompt": 800, "generated": 12},
        model_id="tiny",
        revision="abc123",
        meta={"temperature": 0.0, "stopped": False},
    )
    loaded = store.load_conversation(conversation)
    assert loaded["slide"]["stored_path"] == "/slides/x.tiff"
    assert loaded["title"] == "Where is the tumour?"
    assert [t["role"] for t in loaded["turns"]] == ["user", "assistant"]
    assert [t["index"] for t in loaded["turns"]] == [0, 1]
    turn = loaded["turns"][1]
    assert turn["id"] == answer
    assert (turn["pgdfc_mode"], turn["s"], turn["model_id"], turn["revision"]) == (
        "attention",
        8,
        "tiny",
        "abc123",
    )
    assert turn["regions"][1] == {"rank": 2, "score": 0.5, "l0_rect": [500, 0, 500, 500]}
    assert turn["boxes"][0]["label"] == "tumour"
    assert turn["timings"] == {"vision": 0.5, "decode": 2.0}
    assert turn["tokens"] == {"prompt": 800, "generated": 12}
    assert turn["meta"] == {"temperature": 0.0, "stopped": False}
    assert [m["l0_rect"] for m in turn["masks"]] == [[400, 600, 800, 600], [10, 20, 30, 40]]
    for mask, expected in zip(turn["masks"], (bitmap, bitmap[::-1]), strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(mask["png"])).convert("L")) > 127
        np.testing.assert_array_equal(decoded, expected)
        assert (mask["width"], mask["height"]) == (24, 16)


def test_a_failed_model_call_is_logged_with_its_error(store: Store, conversation: str) -> None:
    store.log_turn(conversation, "user", "Describe the slide.")
    turn_id = store.log_turn(conversation, "assistant", "", error="The GPU ran out of memory.")
    assert store.get_turn(turn_id)["error"] == "The GPU ran out of memory."
    # A stray NUL from a model (PostgreSQL text cannot store it) does not lose the turn.
    turn_id = store.log_turn(conversation, "assistant", "half\x00 an answer", error="Stopped.")
    assert store.get_turn(turn_id)["text"] == "half an answer"


def _rle(bitmap: np.ndarray) -> list[int]:
    """Row-major run lengths starting with a run of False (the engine's format)."""
    runs, current, count = [], False, 0
    for value in bitmap.reshape(-1).tolist():
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    return [*runs, count]


def test_log_answer_maps_the_engines_answer_dict(store: Store, conversation: str) -> None:
    # The shape omnipath.engine's Answer.to_dict() writes (rects as {x, y, w, h},
    # rel as {x0, y0, x1, y1}, masks as shape + rle).
    bitmap = np.zeros((5, 7), bool)
    bitmap[1:4, 2:6] = True
    bitmap[0, 0] = True
    answer = {
        "text": "Grade 2.",
        "regions": [{"rank": 1, "score": None, "l0_rect": {"x": 1, "y": 2, "w": 3, "h": 4}}],
        "boxes": [
            {
                "rel": {"x0": 0.1, "y0": 0.2, "x1": 0.3, "y1": 0.4},
                "l0_rect": {"x": 400, "y": 600, "w": 800, "h": 600},
                "label": "gland",
            }
        ],
        "masks": [
            {"l0_rect": {"x": 0, "y": 0, "w": 70, "h": 50}, "shape": [5, 7], "rle": _rle(bitmap)}
        ],
        "timings": {"prefill": 0.1, "probe": None},
        "tokens": {"generated": 3},
        "model_id": "tiny",
        "revision": None,
        "stopped": True,
        "timed_out": False,
        "error": None,
    }
    turn = store.get_turn(store.log_answer(conversation, answer, pgdfc_mode="random", s=4))
    assert (turn["role"], turn["text"], turn["pgdfc_mode"], turn["s"]) == (
        "assistant",
        "Grade 2.",
        "random",
        4,
    )
    assert turn["regions"] == [{"rank": 1, "score": None, "l0_rect": [1, 2, 3, 4]}]
    assert turn["boxes"] == [
        {"rel": [0.1, 0.2, 0.3, 0.4], "l0_rect": [400, 600, 800, 600], "label": "gland"}
    ]
    assert turn["meta"] == {"stopped": True, "timed_out": False}
    assert turn["timings"] == {"prefill": 0.1}
    decoded = np.asarray(Image.open(io.BytesIO(turn["masks"][0]["png"])).convert("L")) > 127
    np.testing.assert_array_equal(decoded, bitmap)
    with pytest.raises(InvalidRecordError, match="add up"):
        store.log_answer(conversation, {**answer, "masks": [{**answer["masks"][0], "rle": [3, 4]}]})


def test_feedback_is_kept_and_the_last_click_counts(store: Store, conversation: str) -> None:
    store.log_turn(conversation, "user", "Q")
    answer = store.log_turn(conversation, "assistant", "A")
    store.add_feedback(answer, "like")
    store.add_feedback(answer, False, comment="wrong grade")
    turn = store.get_turn(answer)
    assert [f["value"] for f in turn["feedback"]] == ["like", "dislike"]
    assert turn["feedback"][1]["comment"] == "wrong grade"
    assert turn["liked"] == "dislike"
    with pytest.raises(InvalidRecordError, match="like"):
        store.add_feedback(answer, "meh")


def test_unknown_ids_raise_not_found_with_a_sentence(store: Store, conversation: str) -> None:
    cases = [
        lambda: store.get_slide("0" * 64),
        lambda: store.start_conversation("0" * 64, "tiny"),
        lambda: store.load_conversation("nope"),
        lambda: store.log_turn("nope", "user", "Q"),
        lambda: store.add_feedback("nope", "like"),
        lambda: store.get_turn("nope"),
        lambda: store.undo_last_exchange("nope"),
    ]
    for call in cases:
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.message.endswith(".") and " " in info.value.message


def test_a_failure_in_the_middle_of_a_turn_leaves_nothing(
    store: Store, conversation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import storage.rows

    store.log_turn(conversation, "user", "First question")
    before = store.load_conversation(conversation)
    real_mask_row = storage.rows.mask_row
    calls = []

    def failing_mask_row(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the turn row and the first mask are already flushed
            raise RuntimeError("disk full")
        return real_mask_row(*args, **kwargs)

    monkeypatch.setattr(storage.rows, "mask_row", failing_mask_row)
    bitmap = np.ones((4, 4), bool)
    with pytest.raises(RuntimeError, match="disk full"):
        store.log_turn(
            conversation,
            "assistant",
            "An answer",
            masks=[{"l0_rect": [0, 0, 4, 4], "bitmap": bitmap}] * 3,
        )
    assert len(calls) == 2
    after = store.load_conversation(conversation)
    assert [t["id"] for t in after["turns"]] == [t["id"] for t in before["turns"]]
    assert after["updated_at"] == before["updated_at"]
    assert _row_count(store, "masks") == 0
    assert _row_count(store, "turns") == 1


def test_bad_values_are_refused_before_anything_is_written(store: Store, conversation: str) -> None:
    bad = [
        dict(role="robot"),
        dict(regions=[{"rank": 1, "score": float("nan"), "l0_rect": [0, 0, 1, 1]}]),
        dict(regions=[{"rank": 1, "score": 0.1, "l0_rect": [0, 0, 0, 5]}]),
        dict(boxes=[{"rel": [0.5, 0.5, 0.1, 0.9], "l0_rect": [0, 0, 1, 1], "label": ""}]),
        dict(masks=[{"l0_rect": [0, 0, 4, 4], "png": b"\x89PNG not really"}]),
        dict(masks=[{"l0_rect": [0, 0, 4, 4]}]),
        dict(pgdfc_mode="sometimes"),
        dict(tokens={"prompt": 1.5}),
        dict(meta={"when": object()}),
    ]
    for kwargs in bad:
        role = kwargs.pop("role", "assistant")
        with pytest.raises(InvalidRecordError) as info:
            store.log_turn(conversation, role, "text", **kwargs)
        assert info.value.message
    with pytest.raises(InvalidRecordError):
        store.record_slide("not-a-hash", **SLIDE)
    assert _row_count(store, "turns") == 0


def test_undo_removes_the_last_question_and_its_answer(store: Store, conversation: str) -> None:
    assert store.undo_last_exchange(conversation) is None
    store.log_turn(conversation, "user", "Q1")
    store.log_turn(conversation, "assistant", "A1")
    q2 = store.log_turn(conversation, "user", "Q2")
    a2 = store.log_turn(
        conversation,
        "assistant",
        "A2",
        masks=[{"l0_rect": [0, 0, 2, 2], "bitmap": np.ones((2, 2), bool)}],
    )
    store.add_feedback(a2, "like")
    undone = store.undo_last_exchange(conversation)
    assert undone == {"question": "Q2", "removed_turn_ids": [q2, a2]}
    assert [t["text"] for t in store.load_conversation(conversation)["turns"]] == ["Q1", "A1"]
    assert _row_count(store, "masks") == 0 and _row_count(store, "feedback") == 0
    # The next turn takes the freed index.
    store.log_turn(conversation, "user", "Q2 again")
    assert store.load_conversation(conversation)["turns"][-1]["index"] == 2


def test_conversations_are_listed_newest_first_with_counts(store: Store) -> None:
    other = "ab" * 32
    store.record_slide(SLIDE_ID, **SLIDE)
    store.record_slide(other, **SLIDE)
    first = store.start_conversation(SLIDE_ID, "tiny")
    second = store.start_conversation(other, "tiny")
    store.log_turn(first, "user", "a newer question")
    listed = store.list_conversations()
    assert [c["id"] for c in listed] == [first, second]
    assert [c["turn_count"] for c in listed] == [1, 0]
    assert [c["id"] for c in store.list_conversations(slide_id=other)] == [second]


def test_concurrent_writers_get_distinct_turn_indexes(store: Store, conversation: str) -> None:
    def writer(n: int) -> None:
        for i in range(5):
            store.log_turn(conversation, "user", f"writer {n} message {i}")

    run_together(writer, 3)
    indexes = [t["index"] for t in store.load_conversation(conversation)["turns"]]
    assert indexes == list(range(15))


def test_data_survives_reopening_and_migrations_are_idempotent(database_url: str) -> None:
    with Store(database_url) as store:
        store.record_slide(SLIDE_ID, **SLIDE)
        conv = store.start_conversation(SLIDE_ID, "tiny")
        store.log_turn(conv, "user", "Persist me")
    with Store(database_url) as reopened:
        assert current_revision(reopened.engine) == "0004"
        assert reopened.load_conversation(conv)["turns"][0]["text"] == "Persist me"


def _roles_and_statuses(store: Store, conversation: str) -> list[tuple[str, str]]:
    return [(t["role"], t["status"]) for t in store.load_conversation(conversation)["turns"]]


def test_an_answer_is_begun_with_its_question_and_completed_in_place(
    store: Store, conversation: str
) -> None:
    answer_id = store.begin_answer(
        conversation,
        "Where is the lesion?",
        pgdfc_mode="attention",
        s=4,
        model_id="tiny",
        question_meta={"l0_region": [1, 2, 3, 4]},
        meta={"options": {"s": 4}},
    )
    # one transaction wrote both: the question and an empty answer in progress
    assert _roles_and_statuses(store, conversation) == [
        ("user", "done"),
        ("assistant", "in_progress"),
    ]
    question = store.load_conversation(conversation)["turns"][0]
    assert question["meta"] == {"l0_region": [1, 2, 3, 4]} and question["s"] == 4
    assert store.save_answer_text(answer_id, "The lesion is")
    assert store.get_turn(answer_id)["text"] == "The lesion is"
    store.finish_answer(
        answer_id,
        {
            "text": "The lesion is here.",
            "regions": [{"rank": 1, "score": 0.5, "l0_rect": [0, 0, 10, 10]}],
            "masks": [{"l0_rect": [0, 0, 4, 4], "bitmap": np.ones((4, 4), bool)}],
            "tokens": {"generated": 5},
            "model_id": "tiny",
            "stopped": True,
        },
        meta={"l0_region": [1, 2, 3, 4]},
    )
    turn = store.get_turn(answer_id)
    assert (turn["status"], turn["text"], turn["tokens"], turn["pgdfc_mode"]) == (
        "done",
        "The lesion is here.",
        {"generated": 5},
        "attention",
    )
    assert turn["meta"] == {"options": {"s": 4}, "l0_region": [1, 2, 3, 4], "stopped": True}
    assert len(turn["masks"]) == 1 and turn["regions"][0]["rank"] == 1
    assert len(store.load_conversation(conversation)["turns"]) == 2  # completed, not appended
    assert not store.save_answer_text(answer_id, "late text")  # a finished answer stays
    assert store.get_turn(answer_id)["text"] == "The lesion is here."

    failed = store.begin_answer(conversation, "And the grade?")
    store.fail_answer(failed, "Grade", "The GPU ran out of memory.")
    turn = store.get_turn(failed)
    assert (turn["status"], turn["text"], turn["error"]) == (
        "failed",
        "Grade",
        "The GPU ran out of memory.",
    )
    store.undo_last_exchange(conversation)
    with pytest.raises(NotFoundError, match="no longer in the conversation"):
        store.fail_answer(failed, "", "late")
    assert not store.save_answer_text(failed, "late")


def test_answers_cut_off_by_a_crash_are_marked_interrupted_with_their_text(
    database_url: str,
) -> None:
    with Store(database_url) as store:
        store.record_slide(SLIDE_ID, **SLIDE)
        conversation = store.start_conversation(SLIDE_ID, "tiny")
        done = store.begin_answer(conversation, "Q1")
        store.finish_answer(done, {"text": "A1"})
        cut = store.begin_answer(conversation, "Q2")
        store.save_answer_text(cut, "half an ans")
        # the process dies here: nothing completes the answer
    with Store(database_url) as reopened:
        assert reopened.interrupt_answers_in_progress() == 1
        assert reopened.interrupt_answers_in_progress() == 0
        assert _roles_and_statuses(reopened, conversation) == [
            ("user", "done"),
            ("assistant", "done"),
            ("user", "done"),
            ("assistant", "interrupted"),
        ]
        assert reopened.get_turn(cut)["text"] == "half an ans"
        # Retry: the interrupted answer is replaced in the same transaction as the new begins
        q2 = reopened.load_conversation(conversation)["turns"][2]["id"]
        with pytest.raises(NotFoundError, match="no longer the last"):
            reopened.begin_answer(conversation, retry_of=done)
        again = reopened.begin_answer(conversation, retry_of=q2)
        turns = reopened.load_conversation(conversation)["turns"]
        assert [t["id"] for t in turns[2:]] == [q2, again]
        assert turns[3]["status"] == "in_progress" and turns[3]["text"] == ""
        with pytest.raises(InvalidRecordError):
            reopened.begin_answer(conversation)


def test_beginning_an_answer_writes_both_turns_or_neither(
    store: Store, conversation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = Store._append
    calls = []

    def failing_append(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the question is already flushed
            raise RuntimeError("disk full")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(Store, "_append", failing_append)
    with pytest.raises(RuntimeError, match="disk full"):
        store.begin_answer(conversation, "Q")
    assert _row_count(store, "turns") == 0


def test_the_status_migration_keeps_existing_turns_as_done(tmp_path: Path) -> None:
    from alembic import command

    from storage.db import alembic_config, create_database_engine, resolve_url

    engine = create_database_engine(resolve_url(tmp_path / "old.db"))
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO slides (id, size_bytes, vendor, width, height, created_at) "
                "VALUES (:id, 1, 'x', 1, 1, '2026-01-01')"
            ),
            {"id": SLIDE_ID},
        )
        conn.exec_driver_sql(
            "INSERT INTO conversations VALUES ('c1', ?, NULL, 't', '2026-01-01', '2026-01-01')",
            (SLIDE_ID,),
        )
        conn.exec_driver_sql(
            "INSERT INTO turns VALUES ('t1', 'c1', 0, 'user', 'Q', NULL, NULL, '[]', '[]', "
            "'{}', '{}', '{}', NULL, NULL, NULL, '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO feedback (turn_id, value, created_at) VALUES ('t1', 'like', '2026-01-01')"
        )
    engine.dispose()
    with Store(tmp_path / "old.db") as store:
        turn = store.get_turn("t1")
        assert (turn["text"], turn["status"], turn["liked"]) == ("Q", "done", "like")
        # 0003: what was there belongs to the local user, slides included.
        assert [c["id"] for c in store.list_conversations(owner="local")] == ["c1"]
        assert store.load_conversation("c1", owner="local")["turns"][0]["text"] == "Q"
        assert store.may_see_slide(SLIDE_ID, "local")
        assert store.list_conversations(owner="someone") == []


def test_a_conversation_is_seen_only_by_its_owner(store: Store) -> None:
    store.record_slide(SLIDE_ID, **SLIDE)
    mine = store.start_conversation(SLIDE_ID, owner="alice")
    store.log_turn(mine, "user", "Alice's question")
    theirs = store.start_conversation(SLIDE_ID, owner="bob")
    assert [c["id"] for c in store.list_conversations(owner="alice")] == [mine]
    assert [c["id"] for c in store.list_conversations(owner="bob")] == [theirs]
    assert store.list_conversations() == []  # the local user has none
    assert store.load_conversation(mine, owner="alice")["turns"][0]["text"] == "Alice's question"
    # A stranger's id is answered exactly as an id that does not exist.
    with pytest.raises(NotFoundError) as stranger:
        store.load_conversation(mine, owner="bob")
    with pytest.raises(NotFoundError) as missing:
        store.load_conversation("0" * 32, owner="bob")
    assert stranger.value.message == missing.value.message.replace("0" * 32, mine)
    for call in (store.undo_last_exchange, store.delete_conversation):
        with pytest.raises(NotFoundError):
            call(mine, owner="bob")
    assert store.load_conversation(mine, owner="alice")["turns"]


def test_a_slide_is_stored_once_and_granted_to_each_owner(store: Store) -> None:
    store.record_slide(SLIDE_ID, **SLIDE)
    assert not store.may_see_slide(SLIDE_ID, "alice")
    store.grant_slide(SLIDE_ID, "alice")
    store.grant_slide(SLIDE_ID, "alice")  # idempotent
    store.start_conversation(SLIDE_ID, owner="bob")  # granted with the conversation
    assert store.may_see_slide(SLIDE_ID, "alice") and store.may_see_slide(SLIDE_ID, "bob")
    assert not store.may_see_slide(SLIDE_ID, "carol")
    assert _row_count(store, "slides") == 1 and _row_count(store, "slide_grants") == 2
    with pytest.raises(NotFoundError):
        store.grant_slide("ab" * 32, "alice")


def test_deleting_a_conversation_deletes_its_turns(store: Store) -> None:
    store.record_slide(SLIDE_ID, **SLIDE)
    conv = store.start_conversation(SLIDE_ID, owner="alice")
    question = store.log_turn(conv, "user", "Q")
    store.add_feedback(store.log_turn(conv, "assistant", "A"), "like")
    store.delete_conversation(conv, owner="alice")
    assert store.list_conversations(owner="alice") == []
    with pytest.raises(NotFoundError):
        store.get_turn(question)
    assert _row_count(store, "turns") == 0 and _row_count(store, "feedback") == 0


def test_migrations_match_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.models import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    with Store(tmp_path / "db" / "omnipath.db") as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    assert (tmp_path / "db" / "omnipath.db").exists()


def test_an_unreachable_database_is_a_typed_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatabaseError, match="cannot be opened") as info:
        Store(f"postgresql://nobody:secret@127.0.0.1:{port}/none")
    assert "secret" not in info.value.message


def test_a_busy_sqlite_log_says_so_without_naming_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    import storage.db

    monkeypatch.setattr(storage.db, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "private-folder" / "omnipath.db"
    with Store(path) as store:
        store.record_slide(SLIDE_ID, **SLIDE)
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
            with pytest.raises(DatabaseError) as info:
                store.start_conversation(SLIDE_ID, "tiny")
        finally:
            holder.close()
        assert info.value.message == "The session log is busy; try again."
        assert "private-folder" not in str(info.value)
        assert str(path) in caplog.text  # the server log still says which database
        assert store.start_conversation(SLIDE_ID, "tiny")  # free again: it works


def test_errors_quote_at_most_a_line_of_what_was_sent(store: Store, conversation: str) -> None:
    huge = "7" * 100_000
    for call in (
        lambda: store.load_conversation(huge),
        lambda: store.get_turn(huge),
        lambda: store.add_feedback(huge, True),
        lambda: store.log_turn(conversation, huge, "question?"),
    ):
        with pytest.raises((NotFoundError, InvalidRecordError)) as info:
            call()
        assert "7777777" in info.value.message and len(info.value.message) < 200


def test_idle_anonymous_owners_are_purged_and_others_kept(store: Store) -> None:
    store.record_slide(SLIDE_ID, **SLIDE)
    old = store.start_conversation(SLIDE_ID, owner="anon:old")
    store.log_turn(old, "user", "Forget me")
    fresh = store.start_conversation(SLIDE_ID, owner="anon:fresh")
    user = store.start_conversation(SLIDE_ID, owner="user:alice")
    with store.engine.begin() as conn:
        for table, column in (("conversations", "updated_at"), ("slide_grants", "created_at")):
            conn.execute(
                text(f"UPDATE {table} SET {column} = :t WHERE owner IN ('anon:old', 'user:alice')"),
                {"t": datetime(2020, 1, 1, tzinfo=UTC)},
            )
    assert store.purge_idle_owners("anon:", idle_s=7 * 24 * 3600) == 1
    assert store.list_conversations(owner="anon:old") == []
    assert not store.may_see_slide(SLIDE_ID, "anon:old")
    assert _row_count(store, "turns") == 0
    assert [c["id"] for c in store.list_conversations(owner="anon:fresh")] == [fresh]
    assert [c["id"] for c in store.list_conversations(owner="user:alice")] == [user]
    assert store.purge_idle_owners("anon:", idle_s=7 * 24 * 3600) == 0


def test_the_operator_lists_exports_and_purges_by_owner(tmp_path: Path) -> None:
    import json

    url = str(tmp_path / "log.db")
    with Store(url) as store:
        store.record_slide(SLIDE_ID, **SLIDE)
        alice = store.start_conversation(SLIDE_ID, owner="user:alice")
        store.log_turn(alice, "user", "Alice asks")
        store.start_conversation(SLIDE_ID, owner="user:bob")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "storage.owners", "--database-url", url, *args],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip

    assert cli("list").stdout.splitlines() == ["user:alice\t1\t1", "user:bob\t1\t1"]
    assert cli("export", "user:alice", str(tmp_path / "out")).returncode == 0
    (exported,) = (tmp_path / "out").iterdir()
    assert json.loads(exported.read_text())["turns"][0]["text"] == "Alice asks"
    assert cli("purge", "user:alice").returncode == 0
    assert cli("list").stdout.splitlines() == ["user:bob\t1\t1"]


def test_a_share_link_opens_its_conversation_until_revoked_or_expired(store: Store) -> None:
    from storage.log import NO_SHARE

    store.record_slide(SLIDE_ID, **SLIDE)
    mine = store.start_conversation(SLIDE_ID, owner="alice")
    store.log_turn(mine, "user", "Alice's question")
    token = store.create_share(mine, "alice", expires_in_s=3600)
    assert len(token) >= 32 and token != store.create_share(mine, "alice")
    shared = store.load_shared(token)
    assert shared["id"] == mine and shared["slide"]["id"] == SLIDE_ID
    assert shared["turns"][0]["text"] == "Alice's question"
    # A stranger cannot share Alice's conversation: refused like an id that does not exist.
    with pytest.raises(NotFoundError) as stranger:
        store.create_share(mine, "bob")
    with pytest.raises(NotFoundError) as missing:
        store.create_share("0" * 32, "bob")
    assert stranger.value.message == missing.value.message.replace("0" * 32, mine)
    with pytest.raises(InvalidRecordError):
        store.create_share(mine, "alice", expires_in_s=0)
    # Nor revoke her link; she can.
    with pytest.raises(NotFoundError):
        store.revoke_share(token, "bob")
    store.load_shared(token)
    store.revoke_share(token, "alice")
    expired = store.create_share(mine, "alice", expires_in_s=3600)
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE shares SET expires_at = :t WHERE token = :k"),
            {"t": datetime(2020, 1, 1, tzinfo=UTC), "k": expired},
        )
    # Revoked, expired and unknown links: one sentence for all three.
    for refused in (token, expired, "x" * 32):
        with pytest.raises(NotFoundError) as info:
            store.load_shared(refused)
        assert info.value.message == NO_SHARE
    never = store.create_share(mine, "alice")
    assert store.revoke_shares(mine, "alice") == 3  # all not yet revoked: expired ones too
    with pytest.raises(NotFoundError):
        store.load_shared(never)
    # Deleting the conversation deletes its links.
    store.delete_conversation(mine, owner="alice")
    assert _row_count(store, "shares") == 0

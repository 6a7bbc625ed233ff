"""Uploads into the slide store: one pass that stores and hashes, Gradio's received file moved
(never a file from elsewhere), the first look read from the smallest level, and nothing left
behind by a refused upload (stored file, SQLite -wal/-shm, registry entry, Gradio's copy)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from omnipath.errors import SlideError, UploadTooLargeError
from omnipath.slide import Slide, content_hash, open_slide
from storage import DatabaseError, Store
from web import upload
from web.chat_services import build_chat_services
from web.config import WebConfig

BUSY = "The database is busy right now; please try again in a moment."


@pytest.fixture()
def services(tmp_path: Path, tiny_engine):
    store = Store(tmp_path / "log.db")
    config = WebConfig(data_dir=tmp_path / "data", sample_slide=False)
    chat = build_chat_services(config, engine=tiny_engine, store=store)
    yield chat
    chat.web.registry.close()
    store.close()


@pytest.fixture()
def gradio_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Gradio's upload folder for this test (it reads GRADIO_TEMP_DIR at each call)."""
    folder = tmp_path / "gradio"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def _received(gradio_dir: Path, source: Path, name: str) -> Path:
    """A copy of `source` where Gradio puts a received file: <folder>/<its hash>/<name>."""
    folder = gradio_dir / f"sha-{name}"
    folder.mkdir()
    return Path(shutil.copyfile(source, folder / name))


def _wal_database(path: Path) -> Path:
    path.parent.mkdir()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE notes (text TEXT)")
    connection.execute("INSERT INTO notes VALUES ('not a slide')")
    connection.commit()
    connection.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # checkpointed
    return path


def _store_contents(services) -> list[str]:
    return sorted(p.name for p in services.settings.uploads_dir.iterdir())


def test_a_file_from_elsewhere_is_copied_and_hashed_in_one_pass_and_left_in_place(
    services, synthetic_slide, gradio_dir
) -> None:
    source = synthetic_slide.path
    result = upload.upload_slide(services, source, file_name="case.TIFF")
    slide_id = content_hash(source)
    assert result["slide_id"] == slide_id
    assert _store_contents(services) == [f"{slide_id}.tiff"]  # no .partial left
    stored = services.settings.uploads_dir / f"{slide_id}.tiff"
    assert source.is_file() and not os.path.samefile(source, stored)  # a copy, not a link
    assert stored.read_bytes() == source.read_bytes()


def test_content_hash_copies_while_it_hashes(synthetic_slide, tmp_path: Path) -> None:
    copy = tmp_path / "copy.partial"
    seen: list[int] = []
    digest = content_hash(synthetic_slide.path, seen.append, copy_to=copy)
    assert digest == content_hash(synthetic_slide.path)
    assert copy.read_bytes() == synthetic_slide.path.read_bytes()
    assert seen[-1] == copy.stat().st_size
    with pytest.raises(FileExistsError):  # never writes over a file
        content_hash(synthetic_slide.path, copy_to=copy)


def test_gradios_received_file_is_moved_into_the_store(
    services, synthetic_slide, gradio_dir
) -> None:
    received = _received(gradio_dir, synthetic_slide.path, "case.tiff")
    inode = received.stat().st_ino
    result = upload.upload_slide(services, received, file_name="case.tiff")
    stored = services.settings.uploads_dir / f"{result['slide_id']}.tiff"
    assert stored.stat().st_ino == inode  # renamed, not copied
    assert not any(gradio_dir.iterdir())  # neither the file nor Gradio's folder for it

    again = _received(gradio_dir, synthetic_slide.path, "case.tiff")
    second = upload.upload_slide(services, again, file_name="case.tiff")
    assert second["slide_id"] == result["slide_id"]
    assert _store_contents(services) == [stored.name]  # the same bytes: the new copy dropped
    assert stored.stat().st_ino == inode and not any(gradio_dir.iterdir())


def test_a_refused_received_file_is_deleted_and_others_are_kept(
    services, gradio_dir, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.tiff"
    notes.write_text("this is not a slide\n" * 50)
    received = _received(gradio_dir, notes, "notes.tiff")
    with pytest.raises(SlideError) as caught:
        upload.upload_slide(services, received)
    assert caught.value.message.endswith(".") and "Traceback" not in caught.value.message
    assert not any(gradio_dir.iterdir()) and _store_contents(services) == []

    with pytest.raises(SlideError):  # the same file outside Gradio's folder: never deleted
        upload.upload_slide(services, notes)
    assert notes.is_file() and _store_contents(services) == []

    small = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, max_upload_bytes=16)
    )
    received = _received(gradio_dir, notes, "notes.tiff")
    with pytest.raises(UploadTooLargeError):  # refused before reading: deleted all the same
        upload.upload_slide(small, received)
    assert not any(gradio_dir.iterdir()) and notes.is_file()


def test_a_refused_wal_mode_sqlite_file_leaves_nothing_in_the_store(
    services, gradio_dir, tmp_path: Path
) -> None:
    database = _wal_database(tmp_path / "wal" / "scan.svslide")
    probe = tmp_path / "probe" / "scan.svslide"
    probe.parent.mkdir()
    shutil.copyfile(database, probe)
    with pytest.raises(SlideError):
        open_slide(probe)
    assert {p.name for p in probe.parent.iterdir()} > {"scan.svslide"}  # the probe made -wal/-shm

    for path in (database, _received(gradio_dir, database, "scan.svslide")):
        with pytest.raises(SlideError) as caught:
            upload.upload_slide(services, path, file_name="scan.svslide")
        assert caught.value.message.startswith("This file is not a slide")
        assert _store_contents(services) == []
        assert not services.registry.is_registered(content_hash(database))
    assert not any(gradio_dir.iterdir())
    assert sorted(p.name for p in database.parent.iterdir()) == ["scan.svslide"]


@pytest.mark.parametrize("failing", ["record_slide_info", "start_conversation"])
def test_an_upload_the_busy_database_refuses_leaves_no_file(
    services, synthetic_slide, gradio_dir, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def busy(*args, **kwargs):
        raise DatabaseError(BUSY, detail="database is locked")

    monkeypatch.setattr(services.store, failing, busy)
    received = _received(gradio_dir, synthetic_slide.path, "case.tiff")
    with pytest.raises(DatabaseError) as caught:
        upload.upload_slide(services, received, file_name="case.tiff")
    assert caught.value.message == BUSY
    slide_id = content_hash(synthetic_slide.path)
    assert _store_contents(services) == [] and not any(gradio_dir.iterdir())
    assert not services.registry.is_registered(slide_id)

    monkeypatch.undo()  # the database is free again: the same upload works
    assert upload.upload_slide(services, synthetic_slide.path)["slide_id"] == slide_id


def test_a_failed_upload_of_bytes_already_stored_keeps_the_stored_slide(
    services, synthetic_slide, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = upload.upload_slide(services, synthetic_slide.path, file_name="case.tiff")

    def busy(*args, **kwargs):
        raise DatabaseError(BUSY)

    monkeypatch.setattr(services.store, "start_conversation", busy)
    with pytest.raises(DatabaseError):
        upload.upload_slide(services, synthetic_slide.path, file_name="case.tiff")
    assert _store_contents(services) == [f"{first['slide_id']}.tiff"]  # not this upload's
    with services.registry.lease(first["slide_id"]) as opened:
        assert opened.slide.info.l0_width == synthetic_slide.width


def test_the_upload_looks_only_at_the_smallest_level(
    services, synthetic_slide, monkeypatch: pytest.MonkeyPatch
) -> None:
    levels: list[int] = []
    read = Slide._read_region

    def spy(self, location, level, size):
        levels.append(level)
        return read(self, location, level, size)

    monkeypatch.setattr(Slide, "_read_region", spy)
    upload.upload_slide(services, synthetic_slide.path)
    smallest = len(synthetic_slide.level_dimensions) - 1
    assert levels and set(levels) == {smallest}


def test_overview_is_the_smallest_level_shrunk_to_fit(synthetic_slide) -> None:
    with open_slide(synthetic_slide.path) as slide:
        smallest = slide.info.level_dimensions[-1]
        assert max(smallest) <= 512
        whole = slide.overview(512)
        assert whole.mode == "RGB" and whole.size == smallest  # never enlarged
        small = slide.overview(64)
        assert max(small.size) == 64
        assert small.size[0] / small.size[1] == pytest.approx(smallest[0] / smallest[1], rel=0.05)
        assert slide.thumbnail(512).size == (512, 384)  # the exact, cached thumbnail unchanged
        with pytest.raises(ValueError):
            slide.overview(0)


def test_through_gradio_nothing_stays_in_its_upload_folder(
    gradio_dir, synthetic_slide, tmp_path: Path
) -> None:
    """The real server: Gradio receives each file into GRADIO_TEMP_DIR; the accepted one is
    moved into the store, the refused one deleted."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from tests.live_server import require_viewer_assets, serving_app

    require_viewer_assets()
    notes = tmp_path / "notes.svs"
    notes.write_text("patient notes, not pixels\n" * 40)
    with serving_app(tmp_path / "app") as (url, services):
        client = Client(url, verbose=False)
        uploaded = client.predict(handle_file(str(synthetic_slide.path)), api_name="/upload")
        with pytest.raises(AppError, match="not a slide"):
            client.predict(handle_file(str(notes)), api_name="/upload")
        stored = _store_contents(services)
    assert stored == [f"{uploaded['slide_id']}.tiff"]
    received = [p for p in gradio_dir.rglob("*") if p.is_file() and p.stat().st_size]
    assert received == []  # (Gradio leaves empty temporary files of its own there)
    assert synthetic_slide.path.is_file() and notes.is_file()  # the client's own files


# --- a slide's file goes with its last grant ------------------------------------------------


def _upload(services, synthetic_slide, owner: str) -> dict:
    return upload.upload_slide(services, synthetic_slide.path, file_name="case.tiff", owner=owner)


def _gone(services, slide_id: str) -> bool:
    stored = services.settings.uploads_dir / f"{slide_id}.tiff"
    return not stored.exists() and not services.registry.is_registered(slide_id)


def test_deleting_the_only_conversation_about_a_slide_deletes_its_file(
    services, synthetic_slide
) -> None:
    from web import handlers

    first = _upload(services, synthetic_slide, "user:alice")
    slide_id = first["slide_id"]
    second = services.store.start_conversation(slide_id, owner="user:alice")
    handlers.delete_conversation(services, first["conversation_id"], owner="user:alice")
    assert not _gone(services, slide_id)  # alice still has a conversation about it
    assert services.store.may_see_slide(slide_id, "user:alice")
    handlers.delete_conversation(services, second, owner="user:alice")
    assert _gone(services, slide_id)
    assert not services.store.may_see_slide(slide_id, "user:alice")
    assert services.store.get_slide(slide_id)["stored_path"] is None  # the row stays, no path
    assert _store_contents(services) == []
    again = _upload(services, synthetic_slide, "user:alice")  # the same bytes come back
    assert services.web.tiles.tile(slide_id, 0, 0, 0, "jpeg")
    assert services.store.get_slide(slide_id)["stored_path"] is not None
    assert again["slide_id"] == slide_id


def test_a_file_someone_else_holds_stays_and_still_serves_tiles(services, synthetic_slide) -> None:
    from web import handlers

    alice = _upload(services, synthetic_slide, "user:alice")
    bob = _upload(services, synthetic_slide, "user:bob")
    slide_id = alice["slide_id"]
    services.registry.forget(slide_id)  # bob's tiles must open the file anew
    handlers.delete_conversation(services, alice["conversation_id"], owner="user:alice")
    assert not services.store.may_see_slide(slide_id, "user:alice")
    assert services.store.may_see_slide(slide_id, "user:bob")
    assert services.web.tiles.tile(slide_id, 0, 0, 0, "jpeg")
    handlers.delete_conversation(services, bob["conversation_id"], owner="user:bob")
    assert _gone(services, slide_id)


def test_a_remembered_grant_is_forgotten_once_it_goes(services, synthetic_slide) -> None:
    """The tile routes remember who may see a slide; a deleted grant must not stay open."""
    from types import SimpleNamespace

    from web import handlers
    from web.access import SlideAccess

    alice = _upload(services, synthetic_slide, "user:alice")
    _upload(services, synthetic_slide, "user:bob")  # bob keeps the file alive
    slide_id = alice["slide_id"]
    services.identity = SimpleNamespace(owner_of=lambda request: request.owner)
    access = SlideAccess(services)
    as_alice = SimpleNamespace(owner="user:alice", query_params={}, headers={}, cookies={})
    assert access.may_see(as_alice, slide_id) and access.may_see(as_alice, slide_id)
    handlers.delete_conversation(services, alice["conversation_id"], owner="user:alice")
    assert not access.may_see(as_alice, slide_id)


def test_the_slide_opened_at_start_is_never_deleted(services, synthetic_slide) -> None:
    from web import handlers

    result = _upload(services, synthetic_slide, "user:alice")
    services.web.initial_slide_id = result["slide_id"]
    handlers.delete_conversation(services, result["conversation_id"], owner="user:alice")
    assert not _gone(services, result["slide_id"])
    assert services.web.tiles.tile(result["slide_id"], 0, 0, 0, "jpeg")


def test_an_offline_purge_leaves_files_the_next_start_deletes(
    services, synthetic_slide, tmp_path: Path, capsys
) -> None:
    """`python -m storage.owners purge` runs beside (or without) the server: the grants go at
    once, and the files nobody holds go when the app next starts."""
    from storage.owners import main as owners
    from web.app import app_services

    slide_id = _upload(services, synthetic_slide, "anon:gone")["slide_id"]
    assert (
        owners(
            [
                "--database-url",
                services.store.url.render_as_string(hide_password=False),
                "purge",
                "anon:gone",
            ]
        )
        == 0
    )
    assert "next starts" in capsys.readouterr().out
    assert not _gone(services, slide_id) and services.store.unheld_stored_slides() == [slide_id]
    restarted = app_services(services.settings, services)
    assert _gone(restarted, slide_id) and services.store.unheld_stored_slides() == []


def test_purging_an_owner_deletes_the_files_nobody_else_holds(
    services, synthetic_slide, tmp_path: Path
) -> None:
    other = tmp_path / "other.tiff"
    other.write_bytes(synthetic_slide.path.read_bytes() + b"\0")  # other bytes, still a TIFF
    shared = _upload(services, synthetic_slide, "anon:x")["slide_id"]
    _upload(services, synthetic_slide, "user:bob")
    own = upload.upload_slide(services, other, file_name="own.tiff", owner="anon:x")["slide_id"]
    assert services.store.purge_owner("anon:x") == 2
    assert _gone(services, own)
    assert not _gone(services, shared)
    assert services.web.tiles.tile(shared, 0, 0, 0, "jpeg")

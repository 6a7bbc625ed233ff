"""Where the database lives: argument, OMNIPATH_DATABASE_URL, default path, Spaces."""

from __future__ import annotations

from pathlib import Path

import pytest

import storage.db as db
from storage.errors import DatabaseError


def test_a_path_means_a_sqlite_file(tmp_path: Path) -> None:
    url = db.resolve_url(tmp_path / "x.db")
    assert url.get_backend_name() == "sqlite"
    assert url.database == str((tmp_path / "x.db").resolve())


def test_the_environment_variable_is_used_when_no_url_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(db.DATABASE_URL_ENV, f"sqlite:///{tmp_path}/env.db")
    assert db.resolve_url(None).database == f"{tmp_path}/env.db"
    # An explicit argument (the web config's value) wins over the environment.
    assert db.resolve_url(tmp_path / "arg.db").database == str(tmp_path / "arg.db")


def test_plain_postgresql_urls_use_psycopg3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(db.DATABASE_URL_ENV, raising=False)
    for raw in ("postgresql://u:p@db:5432/omni", "postgres://u:p@db/omni"):
        assert db.resolve_url(raw).drivername == "postgresql+psycopg"
    assert db.resolve_url("postgresql+psycopg://u@db/omni").drivername == "postgresql+psycopg"
    assert "p@" not in db.describe_url(db.resolve_url("postgresql://u:p@db/omni"))


def test_default_path_is_data_folder_or_spaces_persistent_storage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(db.DATABASE_URL_ENV, raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert db.default_database_path() == Path("data") / "omnipath.db"
    monkeypatch.chdir(tmp_path)
    assert db.resolve_url(None).database == str(tmp_path / "data" / "omnipath.db")
    monkeypatch.setenv("SPACE_ID", "someone/omnipath")
    monkeypatch.setattr(db, "SPACES_DATA_DIR", tmp_path / "mounted")
    assert db.default_database_path() == Path("data") / "omnipath.db"  # not mounted
    (tmp_path / "mounted").mkdir()
    assert db.default_database_path() == tmp_path / "mounted" / "omnipath.db"


def test_bad_urls_and_in_memory_sqlite_are_refused() -> None:
    with pytest.raises(DatabaseError, match="not a valid"):
        db.resolve_url("://no-scheme")
    with pytest.raises(DatabaseError, match="No database engine"):
        db.create_database_engine(db.resolve_url("nonsense://host/db"))
    with pytest.raises(DatabaseError, match="in-memory"):
        db.create_database_engine(db.resolve_url("sqlite://"))

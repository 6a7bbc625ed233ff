"""Engine setup: where the database lives, how connections are configured, migrations.

SQLite is the default (one file, WAL mode, busy timeout, foreign keys on, set by a
listener on every new connection); any SQLAlchemy URL works through
`OMNIPATH_DATABASE_URL` or the `url` argument (PostgreSQL: ``postgresql+psycopg://...``).
The schema is created and upgraded by Alembic (`storage/migrations`), the same
migrations for every backend, applied at start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from storage.errors import DatabaseError

DATABASE_URL_ENV = "OMNIPATH_DATABASE_URL"
DEFAULT_DB_PATH = Path("data") / "omnipath.db"
SPACES_DATA_DIR = Path("/data")
# Milliseconds a connection waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# SQLSTATEs of a PostgreSQL statement that waited on a lock: lock_not_available, deadlock.
_PG_BUSY_SQLSTATES = ("55P03", "40P01")


def default_database_path() -> Path:
    """`/data/omnipath.db` on Hugging Face Spaces with persistent storage mounted,
    else `./data/omnipath.db` (relative to the working directory)."""
    on_spaces = bool(os.environ.get("SPACE_ID"))
    if on_spaces and SPACES_DATA_DIR.is_dir() and os.access(SPACES_DATA_DIR, os.W_OK):
        return SPACES_DATA_DIR / "omnipath.db"
    return DEFAULT_DB_PATH


def resolve_url(url_or_path: str | os.PathLike[str] | None = None) -> URL:
    """The database URL to use.

    Order: the argument (a SQLAlchemy URL, or a filesystem path meaning a SQLite
    file), then `OMNIPATH_DATABASE_URL`, then `default_database_path()`.
    ``postgresql://`` and ``postgres://`` are read as psycopg 3 (the driver we ship).
    """
    raw: str | os.PathLike[str] | None = url_or_path
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raw = os.environ.get(DATABASE_URL_ENV) or None
    if raw is None:
        raw = default_database_path()
    text = os.fspath(raw).strip()
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().resolve()))
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise DatabaseError(
            f"The database URL {text!r} is not a valid SQLAlchemy URL.", detail=str(exc)
        ) from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe_url(url: URL) -> str:
    """The URL as text with the password hidden (for messages and logs)."""
    return url.render_as_string(hide_password=True)


def unavailable_sentence(exc: OperationalError) -> str:
    """What a person is told when a statement fails on an OperationalError: "busy" when another
    connection holds the lock (SQLite's "database is locked", a PostgreSQL lock timeout or
    deadlock), else "not available". Neither names the database: its URL is a file path or a
    host, for the server log only."""
    orig = exc.orig
    if "database is locked" in str(orig) or getattr(orig, "sqlstate", None) in _PG_BUSY_SQLSTATES:
        return "The session log is busy; try again."
    return "The session log is not available right now; try again later."


def _configure_sqlite(engine: Engine) -> None:
    """PRAGMAs on every new connection; SQLAlchemy (not sqlite3) emits BEGIN.

    sqlite3's legacy transaction control does not BEGIN before SELECT, so reads inside
    a write transaction would not be isolated; we disable it and emit BEGIN ourselves.
    Write transactions ask for ``BEGIN IMMEDIATE`` (execution option
    ``omnipath_write``), so two writers never both read a conversation's last turn
    index and then collide: the second waits (busy_timeout) for the first.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("omnipath_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def create_database_engine(url: URL) -> Engine:
    """An Engine for `url`; for SQLite, creates the file's folder and sets the PRAGMAs."""
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise DatabaseError(
                "OmniPath needs a SQLite file, not an in-memory database; give a file path."
            )
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"The folder for the database file {database} cannot be created.",
                detail=str(exc),
            ) from exc
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        _configure_sqlite(engine)
        return engine
    try:
        # pool_pre_ping: a PostgreSQL restart must not leave dead pooled connections.
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise DatabaseError(
            f"No database engine can be made for {describe_url(url)}.", detail=str(exc)
        ) from exc


def alembic_config(engine: Engine) -> Any:
    """An Alembic Config pointing at `storage/migrations` (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration (idempotent; safe with several app replicas on
    PostgreSQL, where env.py takes an advisory lock)."""
    from alembic import command

    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise DatabaseError(
            f"The database at {describe_url(engine.url)} cannot be opened or upgraded.",
            detail=str(exc),
        ) from exc


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()

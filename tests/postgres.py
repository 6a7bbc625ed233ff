"""A throwaway PostgreSQL server for the storage tests, and the `database_url` fixture
that runs a test against SQLite and against PostgreSQL.

The server: initdb + pg_ctl from Debian's postgresql package (/usr/lib/postgresql/*/bin),
a cluster in a temp dir, listening on 127.0.0.1 at a free port, fsync off; it runs as
the `postgres` user when the tests run as root (PostgreSQL refuses root). Each test gets
a fresh database. When the server cannot start, the PostgreSQL tests are skipped with
the captured error; with OMNIPATH_REQUIRE_POSTGRES=1 (for CI) they fail instead.

Use in a test module:
    from tests import postgres
    postgres_server = postgres.postgres_server
    database_url = postgres.database_url
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.live_server import free_port

REQUIRE_ENV = "OMNIPATH_REQUIRE_POSTGRES"


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str = "postgres"
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"omnipath_test_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists() and Path(candidate, "initdb").exists():
            return Path(candidate)
    return None


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *command]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but cannot start: {reason}")
    pytest.skip(f"PostgreSQL cannot start: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session, stopped and deleted at the end."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable(
            "no initdb/pg_ctl under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
        )
    root = Path(tempfile.mkdtemp(prefix="omnipath-pg-"))
    data = root / "data"
    log = root / "server.log"
    started = False
    try:
        if os.geteuid() == 0:
            try:
                shutil.chown(root, "postgres", "postgres")
            except (LookupError, PermissionError, OSError) as exc:
                _unavailable(f"cannot hand {root} to the postgres user: {exc}")
        root.chmod(0o700)
        port = free_port()
        try:
            _run(
                _as_postgres(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--no-sync",
                    ]
                ),
                "initdb",
            )
            options = f"-h 127.0.0.1 -p {port} -k {root} -F -c fsync=off -c full_page_writes=off"
            _run(
                _as_postgres(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ]
                ),
                "pg_ctl start",
            )
            started = True
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            _unavailable(f"{exc} {tail}".strip())
        yield PostgresServer(host="127.0.0.1", port=port)
    finally:
        if started:
            subprocess.run(
                _as_postgres(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "omnipath.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()

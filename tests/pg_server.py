"""A throwaway PostgreSQL 15 cluster on 127.0.0.1, for tests and benchmarks.

`initdb` + `pg_ctl` from Debian's `postgresql-15`, data directory in a temporary folder,
password (SCRAM) authentication over TCP so wrong-password paths are real, stopped and removed
at the end. Running as root (CI), the server runs as the `postgres` OS user via `runuser`;
as any other user, as that user. A server that cannot start raises: tests must fail, not skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

BIN = Path(os.environ.get("HYGGE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
S = TypeVar("S")
PASSWORD = "s3cret-pg-PW"  # a test-only secret; tests assert it never leaks into messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running cluster: connection details and a way to stop it."""

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    password: str = PASSWORD
    dbname: str = "postgres"
    _as_root: bool = field(default=False, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> PgServer:
        if not (BIN / "initdb").exists():
            msg = (
                f"PostgreSQL binaries not found in {BIN}: install Debian's `postgresql` "
                "(.ci/run does) or set HYGGE_PG_BIN"
            )
            raise RuntimeError(msg)
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        init = self._run(
            BIN / "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        _check(init, "initdb")
        self.port = free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        started = self._run(
            BIN / "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )
        _check(started, "pg_ctl start", self.root / "log")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        msg = f"PostgreSQL did not accept connections on port {self.port}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.data.exists():
            self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self) -> Any:
        """An ADBC connection with autocommit, for setting up test data."""
        import adbc_driver_postgresql.dbapi as pg

        return pg.connect(self.uri, autocommit=True)

    def execute(self, *statements: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())


def _check(result: subprocess.CompletedProcess[str], what: str, log: Path | None = None) -> None:
    if result.returncode == 0:
        return
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    msg = f"{what} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
    raise RuntimeError(msg)


def serve(start: Callable[[], S]) -> Iterator[S]:
    """A fixture's body: the server `start` returns, stopped when the fixture ends."""
    server = start()
    try:
        yield server
    finally:
        server.stop()  # type: ignore[attr-defined]


def scratch(execute: Callable[[str], None], create: str, drop: str) -> Iterator[str]:
    """A fixture's body: a fresh schema or database `{name}`, dropped when the fixture ends."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    execute(create.format(name=name))
    try:
        yield name
    finally:
        execute(drop.format(name=name))


def start_server() -> PgServer:
    root = Path(tempfile.mkdtemp(prefix="hygge-pg-"))
    # the postgres OS user must reach the folder; mkdtemp makes it 0700
    os.chmod(root, 0o755)
    server = PgServer(root)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One PostgreSQL server for the session; a failure to start fails the tests using it."""
    yield from serve(start_server)


@pytest.fixture
def pg_schema(pg: PgServer) -> Iterator[str]:
    """A fresh schema per test (dropped afterwards), so tests never see each other's tables."""
    yield from scratch(pg.execute, 'CREATE SCHEMA "{name}"', 'DROP SCHEMA "{name}" CASCADE')


def pg_home(server: PgServer, **extra: Any) -> dict[str, Any]:
    """An inline `type: postgres` Home for a spec."""
    return {
        "type": "postgres",
        "host": server.host,
        "port": server.port,
        "database": server.dbname,
        "credentials": {"username": server.user, "password": server.password},
        **extra,
    }

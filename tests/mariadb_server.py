"""A throwaway MariaDB server on 127.0.0.1, for tests and benchmarks.

`mariadb-install-db` + `mariadbd` from Debian's `mariadb-server`, data directory in a temporary
folder, TCP on a free loopback port, and a user with a real password (`mysql_native_password`),
so wrong-password paths are real; `root` logs in over the server's own socket only. The server
offers TLS with a certificate for 127.0.0.1 from a throwaway CA (`ca_file`); plain connections
work as before, except for a user created `REQUIRE SSL`. Stopped and
removed at the end. Running as root (CI), the server runs as root (`--user=root`). A server
that cannot start raises: tests must fail, not skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.pg_server import free_port, scratch, serve

USER = "hygge"
PASSWORD = "s3cret-maria-PW"  # a test-only secret; tests assert it never leaks into messages
DATABASE = "hygge"


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        msg = (
            f"MariaDB's `{name}` not found: install Debian's `mariadb-server` (.ci/run does) "
            "or put it on PATH"
        )
        raise RuntimeError(msg)
    return found


def _run(what: str, cmd: list[str], stdin: str | None = None, timeout: float = 60) -> None:
    done = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        msg = f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        raise RuntimeError(msg)


def make_certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 (subjectAltName IP).

    The `openssl` CLI: a second each, no Python dependency. The keys never leave `folder`.
    """
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    key, csr, cert = folder / "server-key.pem", folder / "server.csr", folder / "server.pem"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n")
    common = ["-days", "2", "-sha256"]
    _run(
        "openssl (CA)",
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
            "-subj",
            "/CN=hygge test CA",
            *common,
        ],
    )
    _run(
        "openssl (server key)",
        [
            openssl,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
    )
    _run(
        "openssl (server certificate)",
        [
            openssl,
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-extfile",
            str(ext),
            *common,
        ],
    )
    return folder


@dataclass
class MariaServer:
    """A running server: connection details and a way to stop it."""

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE
    tls: bool = True  # offer TLS (a throwaway CA's certificate for 127.0.0.1)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "sock"

    @property
    def ca_file(self) -> Path:
        """The throwaway CA that signed the server's certificate (for 127.0.0.1 by IP)."""
        return self.root / "tls" / "ca.pem"

    @property
    def uri(self) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def start(self) -> MariaServer:
        data = self.root / "data"
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        _run(
            "mariadb-install-db",
            [
                _binary("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
                *as_root,
            ],
            timeout=120,
        )
        tls_flags = []
        if self.tls:
            tls = make_certificates(self.root / "tls")
            tls_flags = [
                f"--ssl-ca={tls / 'ca.pem'}",
                f"--ssl-cert={tls / 'server.pem'}",
                f"--ssl-key={tls / 'server-key.pem'}",
            ]
        self.port = free_port()
        log = self.root / "log"
        self._proc = subprocess.Popen(
            [
                _binary("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.socket}",
                f"--pid-file={self.root / 'pid'}",
                f"--log-error={log}",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--innodb-buffer-pool-size=256M",
                "--max-connections=80",
                "--max-allowed-packet=256M",
                *tls_flags,
                *as_root,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready(log)
        self.root_sql(
            f"CREATE DATABASE `{self.database}`",
            f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}'",
            f"GRANT ALL ON *.* TO '{self.user}'@'127.0.0.1' WITH GRANT OPTION",
        )
        return self

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                msg = f"mariadbd exited ({self._proc.returncode}):\n{tail}"
                raise RuntimeError(msg)
            if self.socket.exists():
                try:
                    self.root_sql("SELECT 1")
                    return
                except RuntimeError:
                    pass
            time.sleep(0.1)
        msg = f"MariaDB did not accept connections on port {self.port}"
        raise RuntimeError(msg)

    def root_sql(self, *statements: str) -> None:
        """Run statements as root over the socket (the `mariadb` client; set-up only)."""
        _run(
            "the mariadb client",
            [_binary("mariadb"), "--no-defaults", f"--socket={self.socket}", "-uroot"],
            stdin=";\n".join(statements) + ";\n",
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)  # a throwaway: nothing to flush
            self._proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, database: str | None = None) -> Any:
        """A pymysql connection as the test user (autocommit), for setting up test data."""
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database or self.database,
            autocommit=True,
            charset="utf8mb4",
        )

    def execute(self, *statements: str, database: str | None = None) -> None:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def query(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()


def start_server(tls: bool = True) -> MariaServer:
    root = Path(tempfile.mkdtemp(prefix="hygge-maria-"))
    server = MariaServer(root, tls=tls)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaServer]:
    """One MariaDB server for the session; a failure to start fails the tests using it."""
    yield from serve(start_server)


@pytest.fixture
def maria_db(mariadb: MariaServer) -> Iterator[str]:
    """A fresh database per test (dropped afterwards), so tests never see each other's tables."""
    yield from scratch(mariadb.execute, "CREATE DATABASE `{name}`", "DROP DATABASE `{name}`")


def maria_home(server: MariaServer, database: str | None = None, **extra: Any) -> dict[str, Any]:
    """An inline `type: mysql` Home for a spec."""
    return {
        "type": "mysql",
        "host": server.host,
        "port": server.port,
        "database": database or server.database,
        "credentials": {"username": server.user, "password": server.password},
        **extra,
    }

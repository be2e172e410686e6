"""A canary secret through every kind of failure, searched for everywhere a run leaves text.

Each case is a real `python -m flows.run` whose credentials carry the canary and which fails
in one way: the spec does not validate, the host does not answer, the password is wrong (a real
PostgreSQL), the SQL is wrong (the canary is then the right password), the Store refuses its
key (Azurite). The canary must not be in the run's stdout or stderr, in the journal or any other
file the run wrote beside the data, or anywhere in the Prefect server's database: its log
table (every log line of the run, tracebacks included), the artifacts, the states' messages.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from tests.azurite import Azurite
from tests.pg_server import PgServer, free_port
from tests.s3_server import S3Server

CANARY = "Canary-7f3a9c-Sweep"
#: an account key must be base64; this one spells the canary when decoded, and is searched
#: for as it is written
CANARY_KEY = base64.b64encode(b"hygge-canary-key-" + b"\x17" * 47).decode()
#: the database the unreachable host would serve (a mutation test puts the canary here)
DATABASE = "postgres"
SWEEPER = "sweeper"  # the PostgreSQL role whose password is the canary


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module's runs: Prefect's temporary server keeps its database there."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="module")
def sweeper(pg: PgServer) -> Iterator[str]:
    """A role that logs in with the canary, and a table it may read."""
    pg.execute(
        f"CREATE ROLE {SWEEPER} LOGIN PASSWORD '{CANARY}'",
        "CREATE TABLE IF NOT EXISTS sweep_t (id int primary key, name text)",
        "INSERT INTO sweep_t VALUES (1, 'a') ON CONFLICT DO NOTHING",
        f"GRANT SELECT ON sweep_t TO {SWEEPER}",
    )
    try:
        yield SWEEPER
    finally:
        pg.execute("DROP TABLE sweep_t", f"DROP ROLE {SWEEPER}")


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    lake: Path
    db: Path
    logs_before: int  # the log table's last row before the run (the module shares a server)


def run(tmp: Path, prefect_home: Path, spec: dict[str, Any]) -> Outcome:
    db = prefect_home / "prefect.db"
    before = 0
    if db.exists():
        con = sqlite3.connect(db)
        before = con.execute("SELECT coalesce(max(rowid), 0) FROM log").fetchone()[0]
        con.close()
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HYGGE_"))}
    env.update(
        PREFECT_HOME=str(prefect_home),
        HYGGE_LOCAL_SERVER="0",  # Prefect's temporary server: its database is in PREFECT_HOME
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    done = subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(path), "--verbose"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr, tmp / "lake", db, before)


def assert_no_canary(outcome: Outcome, *canaries: str) -> None:
    places = {"stdout": outcome.out, "stderr": outcome.err}
    errors: list[Any] = []
    # everything the run wrote beside the data: journal, manifests, locks, staging
    for path in sorted(outcome.lake.rglob("*")) if outcome.lake.exists() else []:
        if path.is_file():
            places[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
            if path.suffix == ".parquet" and "_journal" in path.parts:
                places[f"{path} (rows)"] = str(pq.read_table(path).to_pylist())
    if outcome.db.exists():
        con = sqlite3.connect(outcome.db)
        try:
            logs = con.execute("SELECT name, level, message FROM log").fetchall()
            places["log table"] = "\n".join(map(str, logs))
            new = con.execute("SELECT level FROM log WHERE rowid > ?", (outcome.logs_before,))
            errors = [level for (level,) in new if level >= 40]
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
                places[f"table {table}"] = "\n".join(map(str, rows))
        finally:
            con.close()
        for suffix in ("", "-wal"):
            raw = Path(f"{outcome.db}{suffix}")
            if raw.exists():
                places[raw.name] = raw.read_bytes().decode("utf-8", errors="replace")
    if outcome.code == 1:  # the run reached Prefect: its failure is in the log table
        assert errors, "the run's error records never reached the server's log table"
    for canary in canaries:
        leaks = [where for where, text in places.items() if canary in text]
        assert not leaks, f"{canary!r} found in {leaks}"


def pg_spec(name: str, home: dict[str, Any], **entity: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "postgres", "connect_timeout": 3, **home},
        "store": {"type": "parquet", "path": "lake"},
        "retries": 0,
        "entities": [{"name": "t", "table": "sweep_t", **entity}],
    }


def test_sweep_validation_errors(tmp_path: Path, prefect_home: Path) -> None:
    dsn = f"postgresql://{SWEEPER}:{CANARY}@db.example/x"
    spec = pg_spec("sweep-valid", {"host": "db", "credentials": {"dsn": dsn, "password": CANARY}})
    outcome = run(tmp_path, prefect_home, spec)
    assert outcome.code == 2, outcome.err
    assert "credentials" in outcome.err
    assert_no_canary(outcome, CANARY)


@pytest.mark.parametrize("form", ["fields", "dsn"])
def test_sweep_unreachable_host(tmp_path: Path, prefect_home: Path, form: str) -> None:
    port = free_port()  # nothing listens there
    creds: dict[str, Any] = (
        {"username": SWEEPER, "password": CANARY}
        if form == "fields"
        else {"dsn": f"postgresql://{SWEEPER}:{CANARY}@127.0.0.1:{port}/postgres"}
    )
    home: dict[str, Any] = {"credentials": creds}
    if form == "fields":
        home |= {"host": "127.0.0.1", "port": port, "database": DATABASE}
    outcome = run(tmp_path, prefect_home, pg_spec(f"sweep-host-{form}", home))
    assert outcome.code == 1, outcome.err
    assert_no_canary(outcome, CANARY)


#: DSNs libpq cannot parse: it echoes the whole URI, or the password's own text
MALFORMED = {
    "unclosed-ipv6": f"postgresql://{SWEEPER}:{CANARY}@[::1/postgres",
    "bad-percent-escape": f"postgresql://{SWEEPER}:{CANARY}%zz@127.0.0.1:1/postgres",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_sweep_a_dsn_the_driver_cannot_parse(tmp_path: Path, prefect_home: Path, case: str) -> None:
    spec = pg_spec(f"sweep-dsn-{case}", {"credentials": {"dsn": MALFORMED[case]}})
    outcome = run(tmp_path, prefect_home, spec)
    assert outcome.code in (1, 2), outcome.err  # a URI Python cannot split is a config error
    assert "DSN" in outcome.err + outcome.out
    assert_no_canary(outcome, CANARY)


def _pg_home(pg: PgServer, password: str) -> dict[str, Any]:
    return {
        "host": pg.host,
        "port": pg.port,
        "database": pg.dbname,
        "credentials": {"username": SWEEPER, "password": password},
    }


@pytest.mark.parametrize("form", ["fields", "dsn"])
def test_sweep_wrong_password(
    tmp_path: Path, prefect_home: Path, pg: PgServer, sweeper: str, form: str
) -> None:
    wrong = f"{CANARY}-wrong"
    home = _pg_home(pg, wrong)
    if form == "dsn":
        url = f"postgresql://{sweeper}:{wrong}@{pg.host}:{pg.port}/{pg.dbname}"
        home = {"credentials": {"dsn": url}}
    outcome = run(tmp_path, prefect_home, pg_spec(f"sweep-pw-{form}", home))
    assert outcome.code == 1, outcome.err
    assert "password" in outcome.err + outcome.out  # the failure is named
    assert_no_canary(outcome, CANARY)


def test_sweep_bad_sql(tmp_path: Path, prefect_home: Path, pg: PgServer, sweeper: str) -> None:
    spec = pg_spec("sweep-sql", _pg_home(pg, CANARY))
    spec["entities"] = [
        {"name": "bad", "query": "SELEC id FROM sweep_t"},
        {"name": "missing", "table": "no_such_table"},
        {"name": "t", "table": "sweep_t"},  # and one that works, so the run has a journal
    ]
    outcome = run(tmp_path, prefect_home, spec)
    assert outcome.code == 1, outcome.err
    assert "bad" in outcome.err + outcome.out and "missing" in outcome.err + outcome.out
    assert list((outcome.lake / "t").glob("*.parquet")), outcome.err
    assert_no_canary(outcome, CANARY)


def test_sweep_store_refuses_its_key(tmp_path: Path, prefect_home: Path, azurite: Azurite) -> None:
    from tests.azurite import KEY

    container = azurite.new_container()
    db = tmp_path / "src.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO t VALUES (1, 'a')")
    con.commit()
    con.close()
    spec = {
        "name": "sweep-store",
        "home": {"type": "sqlite", "path": str(db)},
        "store": {
            "type": "adls",
            "container": container,
            "path": "lake",
            "credentials": {
                "connection_string": azurite.connection_string.replace(KEY, CANARY_KEY)
            },
        },
        "retries": 0,
        "entities": [{"name": "t", "table": "t"}],
    }
    outcome = run(tmp_path, prefect_home, spec)
    assert outcome.code == 1, outcome.err
    assert "credentials" in outcome.err + outcome.out
    assert_no_canary(outcome, CANARY_KEY, CANARY_KEY[:24])


@pytest.mark.parametrize("place", ["s3", "blob"])
def test_sweep_file_home_refuses_its_key(
    tmp_path: Path, prefect_home: Path, azurite: Azurite, s3_server: S3Server, place: str
) -> None:
    # a file Home in an S3 bucket whose secret is the canary, or in a container whose key is
    from tests.azurite import KEY

    if place == "s3":
        bucket = s3_server.new_bucket()
        s3_server.client().put_object(Bucket=bucket, Key="in/a.csv", Body=b"id\n1\n")
        home = {"bucket": bucket, "aws_credentials": s3_server.credentials(CANARY)}
        code = "SignatureDoesNotMatch"
    else:
        container = azurite.new_container()
        azurite.container(container).upload_blob("in/a.csv", b"id\n1\n")
        canary_conn = azurite.connection_string.replace(KEY, CANARY_KEY)
        home = {"container": container, "credentials": {"connection_string": canary_conn}}
        code = "AuthorizationFailure"
    spec = {
        "name": f"sweep-file-home-{place}",
        "home": {"type": "csv", **home},
        "store": {"type": "parquet", "path": "lake"},
        "retries": 0,
        "entities": [{"name": "t", "path": "in"}],
    }
    outcome = run(tmp_path, prefect_home, spec)
    assert outcome.code == 1, outcome.err
    assert code in outcome.err + outcome.out
    assert_no_canary(outcome, CANARY, CANARY_KEY, CANARY_KEY[:24])

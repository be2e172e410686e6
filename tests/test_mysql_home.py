"""MysqlHome end to end against a real MariaDB (tests/mariadb_server.py), nothing faked."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from blocks import MysqlCredentials, MysqlHome
from blocks.base import ReadRequest, Since
from hygge_core.errors import ConfigError, HomeError, TransientHomeError, is_transient
from hygge_core.timestamps import NanoTimestamp
from tests.conftest import ledger_of, run_flow
from tests.login_helpers import refused_login
from tests.mariadb_server import MariaServer, maria_home
from tests.pg_server import free_port
from tests.test_mysql_types import home
from tests.test_postgres_home import lake_rows

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0)
D0 = dt.date(2024, 5, 1)
BIG = 2**64 - 100  # BIGINT UNSIGNED values past int64


def events_table(server: MariaServer, db: str) -> str:
    # `code` under a case-insensitive collation: there 'a' < 'B', while Arrow has 'B' < 'a'
    server.execute(
        f"CREATE TABLE `{db}`.events (id INT, ts DATETIME(6), tsz TIMESTAMP(6) NULL, day DATE,"
        " seq BIGINT, useq BIGINT UNSIGNED,"
        " code VARCHAR(8) COLLATE utf8mb4_general_ci, amount DECIMAL(10, 2))"
    )
    return f"`{db}`.events"


def ev(i: int, step: int | None, code: str | None) -> tuple[Any, ...]:
    """Row `i` whose watermarks all sit at position `step` (None: NULL watermarks)."""
    if step is None:
        return (i, None, None, None, None, None, code, f"{i}.25")
    at = T0 + dt.timedelta(seconds=step)
    day = D0 + dt.timedelta(days=step)
    return (i, at, at, day, step, BIG + step, code, f"{i}.25")


def insert_events(server: MariaServer, table: str, rows: list[tuple[Any, ...]]) -> None:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    finally:
        conn.close()


def source_ids(server: MariaServer, table: str, column: str) -> list[int]:
    sql = f"SELECT id FROM {table} WHERE {column} IS NOT NULL ORDER BY id"
    return [r[0] for r in server.query(sql)]


def test_incremental_runs_load_each_row_once_for_every_watermark_kind(
    mariadb: MariaServer, maria_db: str, tmp_path: Path, spec_name: str
) -> None:
    table = events_table(mariadb, maria_db)
    # ties at every step; rows 90-91 have NULL watermarks (loaded by the first, full load;
    # skipped and counted by the incremental runs: `nulls: skip`)
    insert_events(mariadb, table, [ev(i, i // 3, "B") for i in range(30)])
    insert_events(mariadb, table, [ev(90, None, None), ev(91, None, None)])
    lake = tmp_path / "lake"
    by = {
        "by_ts": "ts",
        "by_tsz": "tsz",
        "by_day": "day",
        "by_seq": "seq",
        "by_useq": "useq",
        "by_code": "code",
    }
    spec = {
        "name": spec_name,
        "home": maria_home(mariadb, maria_db),
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "defaults": {"batch_size": 7},
        "entities": [
            {
                "name": n,
                "table": "events",
                "watermark": {"column": c, "keys": ["id"], "nulls": "skip"},
            }
            for n, c in by.items()
        ],
    }
    first = run_flow(spec)
    assert first.is_completed(), first
    rows = {r["entity"]: r for r in first.result()}
    assert {n: rows[n]["rows"] for n in by} == dict.fromkeys(by, 32)

    # late rows tied with the stored watermark (step 9 / code 'B'), newer ones, and a code
    # 'a' that only a bytewise comparison puts after 'B'
    insert_events(
        mariadb, table, [ev(30, 9, "B"), ev(31, 9, "B"), ev(32, 10, "a"), ev(33, 11, "a")]
    )
    second = run_flow(spec)
    assert second.is_completed(), second
    rows = {r["entity"]: r for r in second.result()}
    assert {n: rows[n]["rows"] for n in by} == dict.fromkeys(by, 4)
    assert all("2 NULL-watermark rows skipped" in rows[n]["detail"] for n in by)
    for entity, column in by.items():
        got = sorted(r["id"] for r in lake_rows(lake, entity))
        assert got == [*source_ids(mariadb, table, column), 90, 91], entity

    # nothing new: nothing moves and the ledger stays put
    before = ledger_of(spec)
    third = run_flow(spec)
    assert all(r["rows"] == 0 for r in third.result())
    assert ledger_of(spec) == before
    assert before["by_ts"]["watermark"]["value"] == (T0 + dt.timedelta(seconds=11)).isoformat()
    assert before["by_code"]["watermark"]["value"] == "a"
    assert before["by_code"]["watermark"]["boundary"] == ["32", "33"]
    full = lake_rows(lake, "by_ts")
    assert full[0] == {
        "id": 0,
        "ts": T0,
        "tsz": T0.replace(tzinfo=UTC),
        "day": D0,
        "seq": 0,
        "useq": Decimal(BIG),
        "code": "B",
        "amount": Decimal("0.25"),
    }


def test_wrong_password_fails_clearly_once_and_never_shows_it(
    mariadb: MariaServer, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "n0t-the-Pa55word'\\@:/"
    home_spec = maria_home(mariadb)
    home_spec["credentials"] = {"username": mariadb.user, "password": wrong}
    text, reads = refused_login(
        home_spec, MysqlHome, "orders", tmp_path / "lake", spec_name, monkeypatch
    )
    assert "refused the login" in text and "Access denied" in text
    assert "credentials block" in text
    assert wrong not in text and mariadb.password not in text
    assert reads == 1  # not transient: never retried


def test_errors_name_the_entity_cause_and_fix(mariadb: MariaServer, maria_db: str) -> None:
    h = home(mariadb, maria_db)
    with pytest.raises(HomeError, match=r"entity 'ghost'.*doesn't exist.*Check `table`") as info:
        list(h.read(ReadRequest(entity="ghost", table="no_such_table")))
    assert not is_transient(info.value)
    with pytest.raises(HomeError, match=r"rejected the SQL: You have an error in your SQL"):
        list(h.read(ReadRequest(entity="bad", query="SELEC 1")))
    with pytest.raises(HomeError, match=r"rejected the SQL: Unknown column 'nope'"):
        list(h.read(ReadRequest(entity="col", query="SELECT 1 AS a", where="nope = 1")))
    with pytest.raises(ConfigError, match=r"exactly one of `table` or `query`"):
        list(h.read(ReadRequest(entity="none")))
    # the server itself refuses a derived table with one name twice
    with pytest.raises(HomeError, match=r"rejected the SQL: Duplicate column name 'a'"):
        list(h.read(ReadRequest(entity="dup", query="SELECT 1 AS a, 2 AS a")))
    with pytest.raises(HomeError, match=r"Unknown database 'nope'.*`database`"):
        list(home(mariadb, "nope").read(ReadRequest(entity="db", query="SELECT 1")))
    # the user may read only what it was granted
    mariadb.execute(
        f"CREATE TABLE `{maria_db}`.secret (id INT)",
        "CREATE USER IF NOT EXISTS 'narrow'@'127.0.0.1' IDENTIFIED BY 'narrow pw'",
        f"GRANT USAGE ON `{maria_db}`.* TO 'narrow'@'127.0.0.1'",
    )
    narrow = MysqlHome(
        host=mariadb.host,
        port=mariadb.port,
        credentials=MysqlCredentials(username="narrow", password="narrow pw"),
    )
    with pytest.raises(HomeError, match=r"denied.*Grant SELECT to the Home's user"):
        list(narrow.read(ReadRequest(entity="s", table=f"{maria_db}.secret")))
    # the Home's `check` reads nothing and fails where a read would
    h.check(ReadRequest(entity="ok", query="SELECT 1 AS one"))
    with pytest.raises(HomeError, match=r"doesn't exist"):
        h.check(ReadRequest(entity="ghost", table="no_such_table"))


def test_unreachable_server_is_a_transient_error(mariadb: MariaServer) -> None:
    h = home(mariadb, mariadb.database, port=free_port(), connect_timeout=2)
    with pytest.raises(TransientHomeError, match=r"unreachable.*Can't connect") as info:
        list(h.read(ReadRequest(entity="e", query="SELECT 1")))
    assert is_transient(info.value)
    assert mariadb.password not in str(info.value)


def test_stored_watermark_of_another_type_is_refused_and_bounds_are_exact(
    mariadb: MariaServer, maria_db: str
) -> None:
    table = events_table(mariadb, maria_db)
    h = home(mariadb, maria_db)
    request = ReadRequest(entity="e", table="events")
    with pytest.raises(ConfigError, match=r"does not fit column 'ts'.*--full-drop"):
        list(h.read(ReadRequest(**{**request.__dict__, "since": Since("ts", 17)})))
    with pytest.raises(ConfigError, match=r"'missing' is not among the columns"):
        list(h.read(ReadRequest(**{**request.__dict__, "since": Since("missing", 1)})))
    insert_events(mariadb, table, [ev(1, 1, "x"), ev(2, 2, "x') OR 1")])
    got = list(
        h.read(ReadRequest(**{**request.__dict__, "since": Since("amount", Decimal("1.25"))}))
    )
    assert sum(b.num_rows for b in got) == 2
    # a text bound holding quotes and SQL is a value, never SQL
    bound = Since("code", "x') OR 1")
    got = list(h.read(ReadRequest(**{**request.__dict__, "since": bound})))
    assert [i for b in got for i in b.column("id").to_pylist()] == [2]
    # a nanosecond bound pushes down its microsecond floor: the row at the cut is read
    mariadb.execute(
        f"CREATE TABLE `{maria_db}`.ns (id INT, ts DATETIME(6), tz TIMESTAMP(6) NULL)",
        "SET time_zone = '+00:00'",
        f"INSERT INTO `{maria_db}`.ns VALUES (1, '2024-05-01 12:00:00.123455', NULL),"
        " (2, '2024-05-01 12:00:00.123456', '2024-05-01 12:00:00.123456'),"
        " (3, '2024-05-01 12:00:00.123457', '2024-05-01 12:00:00.123457'), (4, NULL, NULL)",
    )
    ns = ReadRequest(
        entity="e", table="ns", since=Since("ts", NanoTimestamp(1_714_564_800_123_456_789))
    )
    assert sorted(pa.Table.from_batches(list(h.read(ns))).column("id").to_pylist()) == [2, 3, 4]
    # an aware bound on a TIMESTAMP compares as the UTC instant it is
    cet = dt.timezone(dt.timedelta(hours=2))
    aware = Since("tz", dt.datetime(2024, 5, 1, 14, 0, 0, 123457, tzinfo=cet))
    tz = ReadRequest(entity="e", table="ns", since=aware)
    assert sorted(pa.Table.from_batches(list(h.read(tz))).column("id").to_pylist()) == [1, 3, 4]


# polls the server from its own process: a connectorx read holds the GIL while it waits for a
# batch, so a watcher thread in the test's process would miss what it should count
WATCH = """
import sys, time, pathlib, pymysql
host, port, user, password, stop = sys.argv[1:]
conn = pymysql.connect(host=host, port=int(port), user=user, password=password, autocommit=True)
cur, peak = conn.cursor(), 0
while not pathlib.Path(stop).exists():
    cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'counted'")
    peak = max(peak, cur.fetchone()[0])
    time.sleep(0.01)
print(peak)
"""


def test_max_connections_is_honoured_across_entities(
    mariadb: MariaServer, maria_db: str, tmp_path: Path, spec_name: str
) -> None:
    table = events_table(mariadb, maria_db)
    insert_events(mariadb, table, [ev(i, i, "x") for i in range(10)])
    mariadb.execute(
        "CREATE USER IF NOT EXISTS 'counted'@'127.0.0.1' IDENTIFIED BY 'counted pw'",
        "GRANT SELECT ON *.* TO 'counted'@'127.0.0.1'",
    )
    stop = tmp_path / "stop"
    args = [mariadb.host, str(mariadb.port), mariadb.user, mariadb.password, str(stop)]
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCH, *args], stdout=subprocess.PIPE, text=True
    )
    home_spec = maria_home(mariadb, maria_db, max_connections=2)
    home_spec["credentials"] = {"username": "counted", "password": "counted pw"}
    try:
        spec = {
            "name": spec_name,
            "home": home_spec,
            "store": {"type": "parquet", "path": str(tmp_path / "lake")},
            "concurrency": 5,
            "retries": 0,
            # each read holds its connection ~0.3 s (20 ms a row)
            "entities": [
                {"name": f"e{i}", "table": "events", "where": "SLEEP(0.02) = 0"} for i in range(5)
            ],
        }
        state = run_flow(spec)
    finally:
        stop.touch()
        out, _ = watcher.communicate(timeout=30)
    assert state.is_completed(), state
    assert all(r["rows"] == 10 for r in state.result())
    # never more than the limit; how many overlap depends on connectorx, which keeps the GIL
    # while it fetches a batch, so reads in one process overlap less than PostgreSQL's
    assert 1 <= int(out) <= 2


def test_partitioned_read_equals_the_unpartitioned_one(mariadb: MariaServer, maria_db: str) -> None:
    mariadb.execute(
        f"CREATE TABLE `{maria_db}`.big (id INT, s CHAR(32), ts DATETIME(6))",
        f"INSERT INTO `{maria_db}`.big SELECT seq, MD5(seq), "
        "TIMESTAMP('2024-01-01') + INTERVAL seq MINUTE FROM seq_1_to_20000",
        f"INSERT INTO `{maria_db}`.big VALUES (NULL, 'null id', NULL)",
    )
    whole = pa.Table.from_batches(
        list(home(mariadb, maria_db).read(ReadRequest(entity="big", table="big")))
    ).sort_by("s")
    assert whole.num_rows == 20001
    # progress gets the server's estimate (InnoDB's is approximate), without reading the rows
    mariadb.execute(f"ANALYZE TABLE `{maria_db}`.big")
    estimate = home(mariadb, maria_db).estimate_rows(ReadRequest(entity="big", table="big"))
    assert estimate is not None and 10_000 < estimate < 40_000
    for column in ("id", "ts"):
        h = home(mariadb, maria_db, partition_column=column, partitions=4, max_connections=3)
        batches = list(h.read(ReadRequest(entity="big", table="big", batch_size=999)))
        assert all(b.num_rows <= 999 for b in batches)
        assert len({b.schema for b in batches}) == 1
        assert pa.Table.from_batches(batches).sort_by("s").equals(whole), column
    # with a watermark bound, the split covers only the rows the bound admits
    h = home(mariadb, maria_db, partition_column="id", partitions=3)
    req = ReadRequest(entity="big", table="big", since=Since("id", 19990))
    got = sorted(i for b in h.read(req) for i in b.column("id").to_pylist() if i is not None)
    assert got == list(range(19990, 20001))
    with pytest.raises(ConfigError, match=r"partition_column 's' must be an integer, date"):
        list(home(mariadb, maria_db, partition_column="s", partitions=2).read(req))


def test_credentials_keep_the_password_secret() -> None:
    creds = MysqlCredentials(username="u s", password="p@ss:w/rd'%")
    assert creds.url("h", 3306, "db") == "mysql://u%20s:p%40ss%3Aw%2Frd%27%25@h:3306/db"
    assert "p@ss" not in repr(creds) and "p@ss" not in str(creds.model_dump())
    assert set(creds.secrets()) == {"p@ss:w/rd'%", "p%40ss%3Aw%2Frd%27%25"}
    h = MysqlHome(host="db.example", database="shop", credentials=creds)
    assert h.location() == "mysql host=db.example port=3306 database=shop"
    assert "p@ss" not in h.describe(ReadRequest(entity="e", table="t"))
    with pytest.raises(ValueError, match="credentials"):
        MysqlHome(host="h")  # type: ignore[call-arg]

"""SqliteHome's SELECT from the shared SQL builders, read back from a real SQLite file."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import blocks.homes.sqlite as sqlite_home
from blocks import SqliteHome
from blocks.base import ReadRequest, Since
from hygge_core.errors import ConfigError, HomeError, TransientHomeError, is_transient
from hygge_core.timestamps import NanoTimestamp


def test_sqlite_select_is_built_by_the_shared_builders() -> None:
    home = SqliteHome(path="unused.sqlite")
    since = Since("ts", dt.datetime(2024, 1, 1, 12, 0, 0, 5))
    req = ReadRequest(entity="e", table="a.b", columns=["x y"], where="z > 1", since=since)
    # a dot is part of a SQLite table name; the bound is text, as SQLite stores timestamps:
    # its shortest spelling, with a space and with a T (`_since_predicate`)
    ts = '"ts" COLLATE BINARY'
    assert home.build_select(req) == (
        f'SELECT "x y" FROM "a.b" WHERE (z > 1) AND (({ts} >= ? AND {ts} < ?) OR {ts} >= ? '
        'OR "ts" IS NULL)',
        ["2024-01-01 12:00:00.000005", "2024-01-01T", "2024-01-01T12:00:00.000005"],
    )
    req = ReadRequest(entity="e", query="SELECT 1 AS x;", since=Since("x", "B"))
    assert home.build_select(req) == (
        'SELECT * FROM (SELECT 1 AS x) AS hygge_q WHERE ("x" COLLATE BINARY >= ? OR "x" IS NULL)',
        ["B"],
    )
    # a nanosecond bound is cut to SQLite's microsecond text (a floor: a superset)
    nanos = Since("ts", NanoTimestamp(1_714_564_800_123_456_789))
    assert home.build_select(ReadRequest(entity="e", table="t", since=nanos))[1] == [
        "2024-05-01 12:00:00.123456",
        "2024-05-01T",
        "2024-05-01T12:00:00.123456",
    ]
    req = ReadRequest(entity="e", table="t", since=Since("amt", Decimal("1.5")))
    assert home.build_select(req)[1] == [1.5]
    with pytest.raises(ConfigError, match="exactly one of `table` or `query`"):
        home.build_select(ReadRequest(entity="e"))


def test_sqlite_text_timestamp_bound_keeps_ties_and_nulls(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    with sqlite3.connect(db) as con:
        con.execute('CREATE TABLE "odd.name" (id INTEGER, ts DATETIME)')
        con.executemany(
            'INSERT INTO "odd.name" VALUES (?, ?)',
            [
                (1, "2024-05-01 11:59:59.999999"),
                (2, "2024-05-01 12:00:00"),  # ties with the bound
                (3, "2024-05-01T12:00:00"),  # same instant, 'T'-separated text
                (4, "2024-05-01 12:00:00.000001"),
                (5, None),
            ],
        )
    home = SqliteHome(path=str(db))
    req = ReadRequest(entity="e", table="odd.name", since=Since("ts", dt.datetime(2024, 5, 1, 12)))
    table = pa.Table.from_batches(list(home.read(req)))
    # a superset of `ts >= bound` plus NULLs; the engine filters exactly (test_watermark.py)
    assert sorted(table.column("id").to_pylist()) == [2, 3, 4, 5]


def test_sqlite_row_estimate_reads_no_table(tmp_path: Path) -> None:
    # the estimate only feeds progress percentages: the largest rowid (one b-tree descent), not
    # a COUNT(*) over the table; empty tables, tables without rowids and views give none
    db = tmp_path / "est.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, name TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(1, 1001)])
    con.execute("DELETE FROM t WHERE id <= 10")
    con.execute("CREATE TABLE empty (id INTEGER)")
    con.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
    con.execute("CREATE VIEW v AS SELECT * FROM t")
    con.commit()
    con.close()
    home = SqliteHome(path=str(db))

    def estimate(table: str) -> int | None:
        return home.estimate_rows(ReadRequest(entity=table, table=table))

    assert estimate("t") == 1000  # 990 rows: deleted rows make it an overcount
    assert estimate("empty") is None
    assert estimate("kv") is None
    assert estimate("v") is None
    assert estimate("missing") is None


# -- split reads: rowid ranges on their own connections -------------------------------------


def _orders_db(path: Path, rows: int, wal: bool = False) -> Path:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (id INTEGER NOT NULL, ts DATETIME, amount DECIMAL(12,2), s TEXT)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        [(i, f"2024-05-01 12:{i % 60:02d}:00", i / 100, f"r{i}") for i in range(rows)],
    )
    con.execute("DELETE FROM t WHERE id % 7 = 3")  # gaps in the rowids
    con.commit()
    con.close()
    return path


class _Ranges:
    """Counts the ranges a read opens and can commit a write after the first: a real write
    from a real connection, at the one moment that matters."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db: Path, write: str | None = None):
        self.opened = 0
        real = SqliteHome.open_range

        def open_range(home: SqliteHome, *args: Any, **kwargs: Any) -> Any:
            reader = real(home, *args, **kwargs)
            self.opened += 1
            if write and self.opened == 1:
                con = sqlite3.connect(db)
                con.executescript(write)
                con.close()
            return reader

        monkeypatch.setattr(SqliteHome, "open_range", open_range)
        monkeypatch.setattr(sqlite_home, "PARALLEL_MIN_ROWS", 500)
        monkeypatch.setattr(sqlite_home.os, "cpu_count", lambda: 2)


def _ids(home: SqliteHome, request: ReadRequest) -> list[int]:
    return sorted(pa.Table.from_batches(list(home.read(request)))["id"].to_pylist())


def test_sqlite_large_table_reads_split_into_rowid_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _orders_db(tmp_path / "big.sqlite", 3_000)
    ranges = _Ranges(monkeypatch, db)
    since = Since("ts", dt.datetime(2024, 5, 1, 12, 30))
    for request in (
        ReadRequest(entity="e", table="t", batch_size=256),
        ReadRequest(entity="e", table="t", batch_size=256, where="id < 2500", since=since),
    ):
        ranges.opened = 0
        split = pa.Table.from_batches(list(SqliteHome(path=str(db)).read(request)))
        assert ranges.opened == 2
        one = pa.Table.from_batches(list(SqliteHome(path=str(db), read_threads=1).read(request)))
        assert ranges.opened == 2  # one connection: no ranges
        assert split.schema == one.schema
        assert split.sort_by("id").equals(one.sort_by("id"))
    # every row exactly once: 3,000 less the deleted sevenths
    assert _ids(SqliteHome(path=str(db)), ReadRequest(entity="e", table="t")) == [
        i for i in range(3_000) if i % 7 != 3
    ]


def test_sqlite_split_read_falls_back_when_a_write_lands_between_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # row 1 moves from the first range to the end of the table between the two ranges'
    # snapshots: read as two ranges it would come twice; the Home reads on one connection
    db = _orders_db(tmp_path / "live.sqlite", 3_000, wal=True)
    move = "DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1, '2024-05-02 00:00:00', 9, 'x');"
    ranges = _Ranges(monkeypatch, db, write=move)
    ids = _ids(SqliteHome(path=str(db)), ReadRequest(entity="e", table="t", batch_size=256))
    assert ranges.opened == 2
    assert ids == [i for i in range(3_000) if i % 7 != 3]


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE t (rowid INTEGER, id INTEGER)",  # the name means the column
        "CREATE TABLE t (id INTEGER, other)",  # no declared type: ranges could infer apart
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID",
    ],
)
def test_sqlite_reads_on_one_connection_when_ranges_cannot_be_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ddl: str
) -> None:
    db = tmp_path / "odd.sqlite"
    con = sqlite3.connect(db)
    con.execute(ddl)
    width = len(con.execute("SELECT * FROM t").description)
    con.executemany(
        f"INSERT INTO t VALUES ({', '.join('?' * width)})",
        [tuple([i] * width) for i in range(2_000)],
    )
    con.commit()
    con.close()
    ranges = _Ranges(monkeypatch, db)
    assert len(_ids(SqliteHome(path=str(db)), ReadRequest(entity="e", table="t"))) == 2_000
    assert ranges.opened == 0


def test_sqlite_split_read_stops_cleanly_when_the_consumer_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Store failing mid-move closes the read: the range threads stop and every connection
    # closes, so nothing keeps holding the database
    db = _orders_db(tmp_path / "big.sqlite", 3_000)
    ranges = _Ranges(monkeypatch, db)
    batches = SqliteHome(path=str(db)).read(ReadRequest(entity="e", table="t", batch_size=64))
    assert next(batches).num_rows > 0 and ranges.opened == 2
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("hygge-partition")]
    con = sqlite3.connect(db, timeout=0)  # a writer gets in at once: no reader holds a lock
    con.execute("DELETE FROM t")
    con.commit()
    con.close()


def test_sqlite_each_range_seeks_by_rowid(tmp_path: Path) -> None:
    # a range that scanned the whole table (an `OR rowid IS NULL` arm does that) would read
    # the table once per range: slower than one connection
    db = _orders_db(tmp_path / "plan.sqlite", 100)
    since = Since("ts", dt.datetime(2024, 5, 1, 12, 30))
    request = ReadRequest(entity="e", table="t", where="id > 3", since=since)
    selects = SqliteHome(path=str(db)).build_selects(request, [30, 60])
    con = sqlite3.connect(db)
    plans = [con.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall() for sql, params in selects]
    rows = [len(con.execute(sql, params).fetchall()) for sql, params in selects]
    whole = con.execute(*SqliteHome(path=str(db)).build_select(request)).fetchall()
    con.close()
    assert [p[0][3] for p in plans] == [
        "SEARCH t USING INTEGER PRIMARY KEY (rowid<?)",
        "SEARCH t USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
        "SEARCH t USING INTEGER PRIMARY KEY (rowid>?)",
    ]
    assert sum(rows) == len(whole) > 0


def test_sqlite_unknown_columns_fail_instead_of_reading_their_names(tmp_path: Path) -> None:
    # SQLite takes a quoted name that matches no column for a text literal: without the check,
    # `columns: [id, lable]` read a column `lable` holding 'lable' in every row
    db = tmp_path / "s.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, label TEXT)")
    con.execute("INSERT INTO t VALUES (1, 'a')")
    con.commit()
    con.close()
    home = SqliteHome(path=str(db))
    for request, source in [
        (ReadRequest(entity="e", table="t", columns=["id", "lable"]), "table 't'"),
        (ReadRequest(entity="e", query="SELECT * FROM t", columns=["lable"]), "the query's result"),
    ]:
        said = rf"column\(s\) 'lable' not in {source} \(it has: id, label\); check .*`columns`"
        with pytest.raises(HomeError, match=said):
            list(home.read(request))
    # names match case-insensitively, as SQLite matches them
    got = pa.Table.from_batches(list(home.read(ReadRequest(entity="e", table="t", columns=["ID"]))))
    assert got.column(0).to_pylist() == [1]
    said = r"SQLite rejected the SQL: near \"FROM\": syntax error; check the entity's `query`"
    with pytest.raises(HomeError, match=said):
        list(home.read(ReadRequest(entity="e", query="SELEC id FROM t")))


def _hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process takes SQLite's exclusive lock on `db`, holds it, then commits a row.

    A separate process: POSIX file locks never conflict within one process."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); c.execute('INSERT INTO t VALUES (100)')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds}); c.execute('COMMIT')\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def _locked_db(tmp_path: Path) -> Path:
    db = tmp_path / "locked.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
        con.commit()
    return db


def test_a_write_lock_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    db = _locked_db(tmp_path)
    holder = _hold_write_lock(db, 1.5)
    try:
        rows = pa.Table.from_batches(
            list(SqliteHome(path=str(db)).read(ReadRequest("e", table="t")))
        )
    finally:
        holder.wait(timeout=30)
    assert rows.num_rows == 11  # waited for the writer, then read what it committed


def test_a_lock_that_outlasts_the_wait_is_transient_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _locked_db(tmp_path)
    monkeypatch.setattr(sqlite_home, "_BUSY_TIMEOUT_MS", 200)
    holder = _hold_write_lock(db, 5)
    try:
        with pytest.raises(TransientHomeError) as err:
            list(SqliteHome(path=str(db)).read(ReadRequest("e", table="t")))
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert f"SQLite database {str(db)!r} is locked by another process" in err.value.msg
    assert is_transient(err.value)  # the entity task retries it


def test_a_file_that_is_no_database_is_named_with_what_to_check(tmp_path: Path) -> None:
    bad = tmp_path / "export.db"
    bad.write_text("id,name\n1,a\n" * 100)
    with pytest.raises(HomeError) as err:
        list(SqliteHome(path=str(bad)).read(ReadRequest("e", table="t")))
    assert f"SQLite database {str(bad)!r} is not a SQLite database or is damaged" in err.value.msg
    assert "PRAGMA integrity_check" in err.value.msg

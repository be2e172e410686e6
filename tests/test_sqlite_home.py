"""SqliteHome's SELECT from the shared SQL builders, read back from a real SQLite file."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from blocks import SqliteHome
from blocks.base import ReadRequest, Since
from hygge_tasks.errors import ConfigError
from hygge_tasks.watermark import NanoTimestamp


@pytest.fixture(autouse=True, scope="module")
def prefect_server() -> Iterator[None]:
    """No flow runs here: don't start the session's Prefect test server for this module."""
    yield


def test_sqlite_select_is_built_by_the_shared_builders() -> None:
    home = SqliteHome(path="unused.sqlite")
    since = Since("ts", dt.datetime(2024, 1, 1, 12, 0, 0, 5))
    req = ReadRequest(entity="e", table="a.b", columns=["x y"], where="z > 1", since=since)
    # a dot is part of a SQLite table name; the bound is text, as SQLite stores timestamps
    assert home.build_select(req) == (
        'SELECT "x y" FROM "a.b" WHERE (z > 1) AND ("ts" >= ? OR "ts" IS NULL)',
        ["2024-01-01 12:00:00.000005"],
    )
    req = ReadRequest(entity="e", query="SELECT 1 AS x;", since=Since("x", "B"))
    assert home.build_select(req) == (
        'SELECT * FROM (SELECT 1 AS x) AS hygge_q WHERE ("x" COLLATE BINARY >= ? OR "x" IS NULL)',
        ["B"],
    )
    # a nanosecond bound is cut to SQLite's microsecond text (a floor: a superset)
    nanos = Since("ts", NanoTimestamp(1_714_564_800_123_456_789))
    assert home.build_select(ReadRequest(entity="e", table="t", since=nanos))[1] == [
        "2024-05-01 12:00:00.123456"
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

"""Rows read again on purpose, exact on a Store that merges by key: `watermark.lag` for rows
committed late, `watermark.nulls: include` for rows whose watermark is NULL.

Real SQLite source, real Delta tables (read back with delta-rs and Polars), real flow runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from tests.conftest import ledger_of, run_flow
from tests.flow_helpers import failed_row, summary_row


def source(path: Path, rows: list[tuple[int, str | None, str]]) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts DATETIME, v TEXT)")
    con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


def delta_spec(name: str, db: Path, lake: Path, **watermark: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "delta", "path": str(lake)},
        "retry_delay_seconds": 0,
        "entities": [
            {"name": "t", "table": "t", "watermark": {"column": "ts", "keys": ["id"], **watermark}}
        ],
    }


def table(lake: Path) -> dict[int, str]:
    got = pl.read_delta(str(lake / "t")).sort("id")
    other = DeltaTable(str(lake / "t")).to_pyarrow_dataset().to_table()
    assert other.num_rows == got.height  # both readers see one table
    ids = got["id"].to_list()
    assert len(ids) == len(set(ids)), "a key is held twice"
    return dict(zip(ids, got["v"].to_list(), strict=True))


def test_lag_loads_rows_committed_late_and_never_doubles_one(
    tmp_path: Path, spec_name: str
) -> None:
    db = source(tmp_path / "s.db", [(i, f"2024-05-01 12:00:0{i}", "a") for i in range(1, 6)])
    lake = tmp_path / "lake"
    s = delta_spec(spec_name, db, lake, lag="10m")
    assert summary_row(run_flow(s), "t")["rows"] == 5
    assert ledger_of(s)["t"]["watermark"]["value"] == "2024-05-01T12:00:05"

    # a transaction that committed late: a new row and an update, both older than the mark
    source(db, [(6, "2024-05-01 12:00:02", "late"), (2, "2024-05-01 12:00:02", "changed")])
    assert summary_row(run_flow(s), "t")["rows"] == 6  # the 10-minute window, read again
    assert table(lake) == {1: "a", 2: "changed", 3: "a", 4: "a", 5: "a", 6: "late"}
    # the watermark never moves back to the window's start
    assert ledger_of(s)["t"]["watermark"]["value"] == "2024-05-01T12:00:05"

    # rows older than the window stay where they were: the lag is the promise, not more
    source(db, [(7, "2024-05-01 11:00:00", "too late")])
    run_flow(s)
    assert 7 not in table(lake)


def test_nulls_include_reads_the_null_watermark_rows_every_run(
    tmp_path: Path, spec_name: str
) -> None:
    rows = [(1, "2024-05-01 12:00:01", "a"), (2, "2024-05-01 12:00:02", "a"), (3, None, "a")]
    db = source(tmp_path / "s.db", rows)
    lake = tmp_path / "lake"
    s = delta_spec(spec_name, db, lake, nulls="include")
    assert run_flow(s).is_completed()
    assert table(lake) == {1: "a", 2: "a", 3: "a"}

    # a NULL-watermark row changes and another arrives: both reach the table, once each
    source(db, [(3, None, "changed"), (4, None, "new")])
    row = summary_row(run_flow(s), "t")
    assert row["rows"] == 2  # only the NULL-watermark rows: nothing is new at the mark
    assert table(lake) == {1: "a", 2: "a", 3: "changed", 4: "new"}
    assert ledger_of(s)["t"]["watermark"]["value"] == "2024-05-01T12:00:02"


def test_a_lag_the_watermark_cannot_take_fails_the_entity_and_moves_nothing(
    tmp_path: Path, spec_name: str
) -> None:
    con = sqlite3.connect(tmp_path / "s.db")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, ts TEXT, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?, 'a')", [(1, "a"), (2, "b")])
    con.commit()
    con.close()
    s = delta_spec(spec_name, tmp_path / "s.db", tmp_path / "lake", lag="10m")
    assert run_flow(s).is_completed()  # a first load reads everything: no lag is taken
    detail = failed_row(run_flow(s), "t")["detail"]
    assert "watermark.lag '10m'" in detail and "a text watermark takes no lag" in detail
    assert DeltaTable(str(tmp_path / "lake" / "t")).version() == 0


def test_the_window_starts_where_each_kind_of_watermark_says() -> None:
    import datetime as dt
    from decimal import Decimal

    import pytest

    from hygge_core.errors import ConfigError
    from hygge_core.timestamps import NanoTimestamp
    from hygge_tasks.watermark import lagged

    at = dt.datetime(2024, 5, 1, 12, 0, 0)
    assert lagged(at, "10m", "t") == dt.datetime(2024, 5, 1, 11, 50, 0)
    assert lagged(at, "1.5h", "t") == dt.datetime(2024, 5, 1, 10, 30, 0)
    assert lagged(dt.date(2024, 5, 1), "36h", "t") == dt.date(2024, 4, 29)  # whole days, never less
    assert lagged(NanoTimestamp(10**9 + 7), "500ms", "t") == NanoTimestamp(500_000_007)
    assert lagged(1000, 100, "t") == 900
    assert lagged(1000, 2.5, "t") == 997  # never less than asked
    assert lagged(Decimal("10.50"), 0.25, "t") == Decimal("10.25")
    with pytest.raises(ConfigError, match="a text watermark takes no lag"):
        lagged("2024-05-01", "10m", "t")
    with pytest.raises(ConfigError, match="a numeric one a number"):
        lagged(at, 10, "t")

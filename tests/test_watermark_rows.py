"""No row lost or doubled at the watermark: text timestamps, NULLs, guards (real SQLite)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.base import ReadRequest, Since
from blocks.homes.sqlite import SqliteHome
from flows.spec import parse_spec
from hygge_tasks.errors import ConfigError
from hygge_tasks.watermark import BoundaryFilter
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import summary_row

BASE = dt.datetime(2024, 5, 1, 12, 0, 0)


def spell(value: dt.datetime, sep: str, digits: int, suffix: str = "") -> str:
    """`value` as an application writes it into SQLite: separator, fraction digits, zone."""
    text = value.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{value.microsecond:06d}"[:digits]
    return text + suffix


def make_db(path: Path, declared: str, rows: list[tuple[int, str | None]]) -> Path:
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts {declared}, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?, 'x')", rows)
    con.commit()
    con.close()
    return path


def spec(name: str, db: Path, lake: Path, **watermark: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 3},
        "entities": [
            {"name": "t", "table": "t", "watermark": {"column": "ts", "keys": ["id"], **watermark}}
        ],
    }


def lake_ids(lake: Path) -> list[int]:
    return sorted(read_lake(lake, "t")["id"].to_list())


# every spelling SQLite users store; a zone suffix only reads from a TEXT column (a DATETIME
# column reads as a naive timestamp)
SPELLINGS = [
    ("DATETIME", " ", 0, ""),
    ("DATETIME", " ", 3, ""),  # strftime('%Y-%m-%d %H:%M:%f')
    ("DATETIME", " ", 6, ""),
    ("DATETIME", "T", 0, ""),
    ("DATETIME", "T", 3, ""),
    ("DATETIME", "T", 6, ""),
    ("TIMESTAMP", " ", 3, ""),
    ("TEXT", "T", 3, "Z"),
    ("TEXT", " ", 0, "+05:30"),
    ("TEXT", "T", 6, "-03:00"),
]


@pytest.mark.parametrize(("declared", "sep", "digits", "suffix"), SPELLINGS)
def test_ties_at_a_text_timestamp_boundary_arrive_once(
    tmp_path: Path, spec_name: str, declared: str, sep: str, digits: int, suffix: str
) -> None:
    at = BASE + dt.timedelta(microseconds=9000 if digits else 0)
    later = at + dt.timedelta(seconds=1)
    db = make_db(
        tmp_path / "s.sqlite", declared, [(i, spell(at, sep, digits, suffix)) for i in (1, 2)]
    )
    make_db(db, declared, [(3, spell(at - dt.timedelta(seconds=1), sep, digits, suffix))])
    lake = tmp_path / "lake"
    s = spec(spec_name, db, lake)
    assert summary_row(run_flow(s), "t")["rows"] == 3
    # late rows tied with the stored watermark, and one after it
    make_db(
        db, declared, [(4, spell(at, sep, digits, suffix)), (5, spell(later, sep, digits, suffix))]
    )
    assert summary_row(run_flow(s), "t")["rows"] == 2
    make_db(db, declared, [(6, spell(later, sep, digits, suffix))])
    assert summary_row(run_flow(s), "t")["rows"] == 1
    assert lake_ids(lake) == [1, 2, 3, 4, 5, 6]
    assert ledger_of(s)["t"]["watermark"]["boundary"] == ["5", "6"]


def test_ties_written_in_mixed_spellings_arrive_once(tmp_path: Path, spec_name: str) -> None:
    """One instant written as `T`/space and 0/3/6 digits: a DATETIME column reads them equal."""
    at = BASE  # whole second: `...:00`, `...:00.000` and `...:00.000000` are one instant
    spellings = [spell(at, sep, d) for sep in (" ", "T") for d in (0, 3, 6)]
    db = make_db(tmp_path / "s.sqlite", "DATETIME", [(1, spellings[0])])
    lake = tmp_path / "lake"
    s = spec(spec_name, db, lake)
    run_flow(s)
    make_db(db, "DATETIME", [(i + 2, text) for i, text in enumerate(spellings)])
    assert summary_row(run_flow(s), "t")["rows"] == len(spellings)
    assert lake_ids(lake) == list(range(1, len(spellings) + 2))


# -- property: the SQLite read and the engine's filter agree at the boundary --------------------


def read_incremental(db: Path, bf: BoundaryFilter, since: Any) -> list[int]:
    home = SqliteHome(path=str(db), read_threads=1)
    request = ReadRequest(entity="t", table="t", batch_size=4, since=since)
    return [i for b in home.read(request) for i in bf.admit(b).column("id").to_pylist()]


instants = st.integers(0, 4).map(lambda n: BASE + dt.timedelta(milliseconds=n * 7))
spellings = st.tuples(st.sampled_from([" ", "T"]), st.sampled_from([0, 3, 6]))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.lists(st.tuples(instants, spellings), min_size=1, max_size=6),
    second=st.lists(st.tuples(instants, spellings), max_size=6),
)
def test_property_two_runs_load_every_row_once(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[tuple[dt.datetime, tuple[str, int]]],
    second: list[tuple[dt.datetime, tuple[str, int]]],
) -> None:
    db = tmp_path_factory.mktemp("prop") / "s.sqlite"

    def rows(start: int, drawn: list[tuple[dt.datetime, tuple[str, int]]]) -> list[Any]:
        # a spelling with fewer digits than the instant has would be another instant
        return [(start + i, spell(v, sep, max(d, 3))) for i, (v, (sep, d)) in enumerate(drawn)]

    make_db(db, "DATETIME", rows(1, first))
    bf = BoundaryFilter("t", "ts", ["id"], None)
    loaded = read_incremental(db, bf, None)
    mark = bf.result()
    assert mark is not None
    make_db(db, "DATETIME", rows(100, second))
    bf = BoundaryFilter("t", "ts", ["id"], mark)
    loaded += read_incremental(db, bf, Since("ts", mark.value))
    late = [100 + i for i, (v, _) in enumerate(second) if v >= mark.value]
    assert sorted(loaded) == sorted([*range(1, len(first) + 1), *late])


# -- NULL watermarks and lag: the spec ----------------------------------------------------------


@pytest.mark.parametrize(
    ("watermark", "what"),
    [
        ({"nulls": "include"}, "`nulls: include` re-reads the NULL-watermark rows"),
        ({"lag": "10m"}, "`lag` re-reads the rows of the lag window"),
        ({"lag": 100}, "`lag` re-reads the rows of the lag window"),
    ],
)
def test_spec_refuses_rereads_no_store_can_merge(
    tmp_path: Path, watermark: dict[str, Any], what: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(spec("x", tmp_path / "s.sqlite", tmp_path / "lake", **watermark))
    text = str(info.value)
    assert "entity 't', field watermark" in text
    assert what in text
    assert "no hygge Store merges by the watermark keys yet" in text


def test_spec_null_policy_defaults_to_fail_and_takes_skip(tmp_path: Path) -> None:
    base = spec("x", tmp_path / "s.sqlite", tmp_path / "lake")
    assert parse_spec(base).entities[0].watermark.nulls == "fail"  # type: ignore[union-attr]
    skip = spec("x", tmp_path / "s.sqlite", tmp_path / "lake", nulls="skip")
    assert parse_spec(skip).entities[0].watermark.nulls == "skip"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="nulls"):
        parse_spec(spec("x", tmp_path / "s.sqlite", tmp_path / "lake", nulls="keep"))

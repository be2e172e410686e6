"""Boundary identities (`hygge_tasks.boundary_keys`): typed, never colliding, old ledgers kept.

Real SQLite and PostgreSQL sources, a real Parquet lake; expected identities are computed
from the documented bytes, never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blocks import PostgresCredentials, PostgresHome, WatermarkLedger
from blocks.base import HomeBlock, ReadRequest
from blocks.homes.sqlite import SqliteHome
from blocks.stores.parquet import ParquetStore
from flows.spec import parse_spec
from hygge_core.errors import LedgerError
from hygge_tasks.boundary_keys import identities, legacy_identities
from hygge_tasks.entity import EntityPlan
from hygge_tasks.move import move
from hygge_tasks.watermark import BoundaryFilter, Watermark
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import summary_row
from tests.pg_server import PgServer

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


def digest(encoding: bytes) -> str:
    return hashlib.sha256(encoding).hexdigest()[:32]


def batch(**cols: pa.Array) -> pa.RecordBatch:
    return pa.record_batch(cols)


# -- the encoding -------------------------------------------------------------------------------


def test_null_the_text_backslash_n_and_the_empty_text_are_three_identities() -> None:
    rows = batch(code=pa.array([None, "\\N", ""], pa.string()))
    assert identities(rows, ["code"]) == [digest(b"-"), digest(b"str 2:\\N"), digest(b"str 0:")]
    # format 1 made the first two one identity
    assert legacy_identities(rows, ["code"]) == ["\\N", "\\N", ""]


def test_keys_containing_the_old_separator_do_not_collide() -> None:
    rows = batch(a=pa.array(["a\x1fb", "a"]), b=pa.array(["c", "b\x1fc"]))
    first, second = identities(rows, ["a", "b"])
    assert first == digest(b"str 3:a\x1fbstr 1:c")
    assert second == digest(b"str 1:astr 3:b\x1fc")
    assert first != second
    assert legacy_identities(rows, ["a", "b"]) == ["a\x1fb\x1fc"] * 2


def test_an_integer_is_not_the_text_of_its_digits() -> None:
    ints = identities(batch(k=pa.array([5, None], pa.int32())), ["k"])
    text = identities(batch(k=pa.array(["5", None])), ["k"])
    # a single integer key keeps its digits, as in format 1; the text `5` is a digest
    assert ints == ["5", digest(b"-")]
    assert text == [digest(b"str 1:5"), digest(b"-")]
    pair = identities(batch(k=pa.array([5]), j=pa.array([1])), ["k", "j"])
    text_pair = identities(batch(k=pa.array(["5"]), j=pa.array([1])), ["k", "j"])
    assert pair == [digest(b"int 1:5int 1:1")] != text_pair


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (pa.array([5, 2], pa.int32()), pa.array([5, 2], pa.int64())),
        (
            pa.array([Decimal("1.50"), Decimal("-2")], pa.decimal128(5, 2)),
            pa.array([Decimal("1.5"), Decimal("-2.000")], pa.decimal128(12, 3)),
        ),
        (
            pa.array([T0, T0 + dt.timedelta(microseconds=7)], pa.timestamp("us")),
            pa.array([T0, T0 + dt.timedelta(microseconds=7)], pa.timestamp("ns")),
        ),
        (
            pa.array([T0, T0 + dt.timedelta(seconds=1)], pa.timestamp("s", tz="UTC")),
            pa.array([T0, T0 + dt.timedelta(seconds=1)], pa.timestamp("ms", tz="UTC")).cast(
                pa.timestamp("ms", tz="+05:30")
            ),
        ),
        (pa.array(["x", "y"]), pa.array(["x", "y"], pa.large_string())),
        (pa.array(["x", "y"]).dictionary_encode(), pa.array(["x", "y"], pa.string_view())),
    ],
    ids=["int-widths", "decimal-scales", "timestamp-units", "zones", "string-kinds", "dict"],
)
def test_the_same_value_read_another_way_keeps_its_identity(one: pa.Array, other: pa.Array) -> None:
    wm = pa.array([1, 1])
    a = identities(batch(k=one, t=pa.array(["s", "s"]), wm=wm), ["t", "k"])
    b = identities(batch(k=other, t=pa.array(["s", "s"]), wm=wm), ["t", "k"])
    assert a == b
    assert a[0] != a[1]


def test_a_zoned_timestamp_is_not_the_naive_one_with_the_same_digits() -> None:
    naive = identities(batch(k=pa.array([T0], pa.timestamp("us")), j=pa.array([1])), ["k", "j"])
    utc = pa.array([T0], pa.timestamp("us", tz="UTC"))
    assert naive != identities(batch(k=utc, j=pa.array([1])), ["k", "j"])


def test_rows_without_keys_hash_every_column_in_name_order_with_nested_values() -> None:
    tags = pa.array([["a", None], [], None, ["a", None]], pa.list_(pa.string()))
    point = pa.array([{"x": 1}, {"x": None}, None, {"x": 1}], pa.struct([("x", pa.int64())]))
    attrs = pa.array([[("k", 1)], [], None, [("k", 1)]], pa.map_(pa.string(), pa.int64()))
    rows = batch(tags=tags, id=pa.array([1, 2, 3, 1]), point=point, attrs=attrs)
    got = identities(rows, [])
    first = [
        b"5:attrsmap 14:str 1:kint 1:1",
        b"2:idint 1:1",
        b"5:pointstruct 10:1:xint 1:1",
        b"4:tagslist 8:str 1:a-",
    ]
    assert got[0] == digest(b"".join(first))
    assert got[1] == digest(b"5:attrsmap 0:2:idint 1:25:pointstruct 4:1:x-4:tagslist 0:")
    assert got[2] == digest(b"5:attrs-2:idint 1:35:point-4:tags-")
    assert got[3] == got[0]
    # the column order of the batch does not matter; a slice names its rows the same
    reordered = batch(id=rows.column("id"), attrs=attrs, tags=tags, point=point)
    assert identities(reordered, []) == got
    assert identities(rows.slice(1, 3), []) == got[1:]


def test_uuid_and_interval_columns_have_identities_too() -> None:
    u = pa.array([bytes(15) + b"\x05", None], pa.uuid())
    iv = pa.array([pa.MonthDayNano([1, 2, 3]), None], pa.month_day_nano_interval())
    got = identities(batch(u=u, iv=iv), [])
    text = b"MonthDayNano(months=1, days=2, nanoseconds=3)"
    assert got == [
        digest(b"2:ivmonth_day_nano_interval 45:" + text + b"1:ubytes 16:" + bytes(15) + b"\x05"),
        digest(b"2:iv-1:u-"),
    ]


# -- the ledger's format mark -------------------------------------------------------------------


def test_an_entry_without_a_mark_reads_as_format_1_and_an_unknown_one_is_refused() -> None:
    old = Watermark.from_json({"column": "ts", "kind": "int", "value": 3, "boundary": ["\\N"]})
    assert old.boundary_format == 1
    new = Watermark.from_json(Watermark("ts", 3, frozenset({"x"})).to_json())
    assert new.boundary_format == 2
    with pytest.raises(LedgerError, match=r"format 9, which this hygge does not know"):
        Watermark.from_json(
            {"column": "ts", "kind": "int", "value": 3, "boundary": ["x"], "boundary_format": 9}
        )


def test_a_format_1_boundary_excludes_what_it_excluded_and_is_named_anew() -> None:
    # a format-1 entry: `\N` excluded the NULL key and the text `\N` alike, `a\x1fb\x1fc` both
    # key pairs whose text joins so; the next run keeps excluding exactly those rows
    old = Watermark("wm", 7, frozenset({"\\N\x1fx", "a\x1fb\x1fc"}), boundary_format=1)
    f = BoundaryFilter("e", "wm", ["k", "j"], old)
    rows = batch(
        k=pa.array([None, "\\N", "a\x1fb", "a", "a", "z"]),
        j=pa.array(["x", "x", "c", "b\x1fc", "c", "z"]),
        wm=pa.array([7, 7, 7, 7, 7, 8]),
    )
    out = f.admit(rows)
    assert out.column("k").to_pylist() == ["a", "z"]
    result = f.result()
    assert result == Watermark("wm", 8, frozenset({digest(b"str 1:zstr 1:z")}))
    # the watermark stays: the excluded rows are carried over in format 2
    g = BoundaryFilter("e", "wm", ["k", "j"], old)
    g.admit(rows.slice(0, 5))
    kept = g.result()
    assert kept is not None and kept.boundary_format == 2
    assert kept.boundary == frozenset(identities(rows.slice(0, 5), ["k", "j"]))
    h = BoundaryFilter("e", "wm", ["k", "j"], Watermark.from_json(kept.to_json()))
    assert h.admit(rows.slice(0, 5)).num_rows == 0


# -- real incremental runs against SQLite -------------------------------------------------------


def make_db(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER, code TEXT, ts DATETIME, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, 'x')", rows)
    con.commit()
    con.close()
    return path


def spec(name: str, db: Path, lake: Path, keys: list[str]) -> dict[str, Any]:
    watermark: dict[str, Any] = {"column": "ts", "keys": keys} if keys else {"column": "ts"}
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 2},
        "entities": [{"name": "t", "table": "t", "watermark": watermark}],
    }


def lake_ids(lake: Path) -> list[int]:
    return sorted(read_lake(lake, "t")["id"].to_list())


def at(seconds: int) -> str:
    return str(T0 + dt.timedelta(seconds=seconds))


def test_a_backslash_n_key_and_a_null_key_tied_at_the_watermark_load_once(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_db(tmp_path / "s.sqlite", [(1, "\\N", at(0)), (2, "a", at(-1))])
    lake = tmp_path / "lake"
    s = spec(spec_name, db, lake, ["code"])
    assert summary_row(run_flow(s), "t")["rows"] == 2
    # a NULL key tied with the stored watermark: format 1 took it for the `\N` row and lost it
    make_db(db, [(3, None, at(0))])
    assert summary_row(run_flow(s), "t")["rows"] == 1
    assert summary_row(run_flow(s), "t")["rows"] == 0
    assert lake_ids(lake) == [1, 2, 3]
    mark = ledger_of(s)["t"]["watermark"]
    assert mark["boundary_format"] == 2
    assert mark["boundary"] == sorted([digest(b"str 2:\\N"), digest(b"-")])


def test_keys_that_join_alike_tied_at_the_watermark_load_once(
    tmp_path: Path, spec_name: str
) -> None:
    con = sqlite3.connect(tmp_path / "s.sqlite")
    con.execute("CREATE TABLE t (id INTEGER, a TEXT, b TEXT, ts DATETIME)")
    con.execute("INSERT INTO t VALUES (1, 'a' || char(31) || 'b', 'c', ?)", (at(0),))
    con.commit()
    lake = tmp_path / "lake"
    s = spec(spec_name, tmp_path / "s.sqlite", lake, ["a", "b"])
    assert summary_row(run_flow(s), "t")["rows"] == 1
    con.execute("INSERT INTO t VALUES (2, 'a', 'b' || char(31) || 'c', ?)", (at(0),))
    con.commit()
    con.close()
    assert summary_row(run_flow(s), "t")["rows"] == 1
    assert lake_ids(lake) == [1, 2]


def write_old_entry(s: dict[str, Any], boundary: list[str]) -> None:
    """Rewrite the ledger's entry as a hygge before `boundary_format` wrote it."""
    name = parse_spec(s).ledger_name
    ledger = WatermarkLedger.load_or_new(name)
    entry = dict(ledger.value["t"])
    watermark = {k: v for k, v in entry["watermark"].items() if k != "boundary_format"}
    entry["watermark"] = {**watermark, "boundary": sorted(boundary)}
    ledger.commit(name, "t", entry)


def test_an_old_keyed_ledger_entry_excludes_the_rows_it_excluded(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_db(tmp_path / "s.sqlite", [(1, "\\N", at(0)), (2, "b", at(0)), (3, "c", at(-1))])
    lake = tmp_path / "lake"
    s = spec(spec_name, db, lake, ["code"])
    run_flow(s)
    write_old_entry(s, ["\\N", "b"])  # how format 1 named rows 1 and 2
    # a late tie, and a NULL key tied with it: format 1's `\N` excluded that row too, and an
    # old entry keeps its meaning (the row is the one the old ledger took as loaded)
    make_db(db, [(4, "d", at(0)), (5, None, at(0))])
    assert summary_row(run_flow(s), "t")["rows"] == 1
    mark = ledger_of(s)["t"]["watermark"]
    assert mark["boundary_format"] == 2
    tied = [b"str 2:\\N", b"str 1:b", b"str 1:d", b"-"]
    assert mark["boundary"] == sorted(digest(e) for e in tied)
    # from now on in format 2: ties at the same value, then a new value
    make_db(db, [(6, "\\N\\N", at(0)), (7, "e", at(1))])
    assert summary_row(run_flow(s), "t")["rows"] == 2
    assert lake_ids(lake) == [1, 2, 3, 4, 6, 7]


def test_an_old_row_hash_ledger_entry_excludes_the_rows_it_excluded(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_db(tmp_path / "s.sqlite", [(1, "a", at(0)), (2, "b", at(0))])
    lake = tmp_path / "lake"
    s = spec(spec_name, db, lake, [])
    run_flow(s)
    # format 1: SHA-256 of the row as sorted-key JSON, the timestamp as `str` of a datetime
    old = [
        hashlib.sha256(
            json.dumps(
                {"id": i, "code": c, "ts": T0, "v": "x"}, default=str, sort_keys=True
            ).encode()
        ).hexdigest()[:32]
        for i, c in ((1, "a"), (2, "b"))
    ]
    write_old_entry(s, old)
    make_db(db, [(3, "c", at(0))])
    assert summary_row(run_flow(s), "t")["rows"] == 1
    assert ledger_of(s)["t"]["watermark"]["boundary_format"] == 2
    make_db(db, [(4, "d", at(0))])
    assert summary_row(run_flow(s), "t")["rows"] == 1
    assert lake_ids(lake) == [1, 2, 3, 4]


# -- property: several incremental runs, ties, NULL and text keys, SQLite and PostgreSQL ---------

# values whose format-1 identities collide: NULL and `\N`; ("a\x1f", "b") and ("a", "\x1fb")
CODES = st.sampled_from([None, "\\N", "", "a", "a\x1f", "é"])
TAGS = st.sampled_from([None, "\\N", "", "b", "\x1fb"])
NUMS = st.sampled_from([None, 0, 5])
# a row of one insert: its values and its step at or after the watermark (mostly a tie)
ROW = st.tuples(CODES, TAGS, NUMS, st.sampled_from([0, 0, 1, 2]))
INSERTS = st.lists(st.lists(ROW, max_size=5), min_size=2, max_size=4)
KEY_SETS = [["code", "tag"], ["code"], ["n"], []]

Drawn = tuple[str | None, str | None, int | None, int]


class Source:
    """One table `t (id, code, tag, n, w)` in SQLite or PostgreSQL, and a Home that reads it."""

    def __init__(self, engine: str, where: Path, pg: PgServer, table: str) -> None:
        self.engine, self.pg = engine, pg
        self.path = where / "s.sqlite"
        self.ref = "t" if engine == "sqlite" else f"public.{table}"
        ddl = f"CREATE TABLE {self.ref} (id INTEGER, code TEXT, tag TEXT, n INTEGER, w INTEGER)"
        if engine == "sqlite":
            self.home: HomeBlock = SqliteHome(path=str(self.path), read_threads=1)
            with sqlite3.connect(self.path) as con:
                con.execute(ddl)
            con.close()
        else:
            self.home = PostgresHome(
                host=pg.host,
                port=pg.port,
                database=pg.dbname,
                credentials=PostgresCredentials(username=pg.user, password=pg.password),
            )
            pg.execute(ddl)

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.engine == "sqlite":
            with sqlite3.connect(self.path) as con:
                con.executemany(f"INSERT INTO {self.ref} VALUES (?, ?, ?, ?, ?)", rows)
            con.close()
            return
        values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        self.pg.execute(f"INSERT INTO {self.ref} VALUES {values}")

    def drop(self) -> None:
        if self.engine == "postgres":
            self.pg.execute(f"DROP TABLE {self.ref}")


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"  # standard strings: a backslash is itself


_tables = itertools.count()
NULL_AND_TEXT: list[list[Drawn]] = [[(None, "b", 0, 0)], [("\\N", "b", 0, 0)], []]
JOINED_ALIKE: list[list[Drawn]] = [[("a\x1f", "b", 0, 0)], [("a", "\x1fb", 0, 0)], []]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(inserts=INSERTS, keys=st.sampled_from(KEY_SETS), batch_size=st.sampled_from([1, 3, 100]))
@example(inserts=NULL_AND_TEXT, keys=["code"], batch_size=1)
@example(inserts=NULL_AND_TEXT, keys=[], batch_size=100)
@example(inserts=JOINED_ALIKE, keys=["code", "tag"], batch_size=3)
def test_property_every_source_row_arrives_exactly_once(
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgServer,
    engine: str,
    inserts: list[list[Drawn]],
    keys: list[str],
    batch_size: int,
) -> None:
    """Each run inserts rows at or after the watermark, then loads; every row arrives once."""
    where = tmp_path_factory.mktemp("keys")
    source = Source(engine, where, pg, f"keys_{engine}_{next(_tables)}")
    store = ParquetStore(path=str(where / "lake"))
    logger = logging.getLogger("test_boundary_keys")
    columns = ("code", "tag", "n")
    seen: set[tuple[Any, ...]] = set()
    top, next_id, previous = 0, 1, None
    try:
        for run, drawn in enumerate(inserts):
            rows = []
            for *values, step in drawn:
                key = tuple(v for c, v in zip(columns, values, strict=True) if c in keys)
                if keys and key in seen:  # keys identify a row: one row per key tuple
                    continue
                seen.add(key)
                rows.append((next_id, *values, top + step))
                next_id += 1
            source.insert(rows)
            top = max([top, *(r[4] for r in rows)])
            plan = EntityPlan(
                name="t",
                request=ReadRequest(entity="t", table=source.ref, batch_size=batch_size),
                mode="append" if previous else "replace",
                watermark_column="w",
                watermark_columns=["w"],
                watermark_keys=keys,
                previous=previous,
            )
            result = move(plan, source.home, store, f"run{run}", logger)
            if result.ledger_entry is not None:
                store.mark_committed("t", result.run_id)
                # through JSON text, as the ledger block keeps it
                previous = json.loads(json.dumps(result.ledger_entry.watermark))
        if next_id > 1:
            assert lake_ids(where / "lake") == list(range(1, next_id))
    finally:
        source.drop()

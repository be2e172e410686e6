"""No row lost or doubled at the watermark: text timestamps, NULLs, guards (real SQLite)."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blocks
from blocks.base import ReadRequest, Since, WriteMode
from blocks.homes.sqlite import SqliteHome
from blocks.stores.adls import AdlsStore
from blocks.stores.blob_parquet import BlobParquetWriter
from blocks.stores.parquet import ParquetStore, ParquetWriter
from flows.spec import parse_spec
from hygge_core.errors import ConfigError
from hygge_tasks.watermark import BoundaryFilter
from tests.azurite import Azurite
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import failed_row, summary_row, write_parquet
from tests.pg_server import PgServer, pg_home

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
def test_rereads_are_refused_for_a_store_that_appends(
    tmp_path: Path, watermark: dict[str, Any], what: str
) -> None:
    from flows.plan import entity_blocks, resolve_blocks

    plan = parse_spec(spec("x", tmp_path / "s.sqlite", tmp_path / "lake", **watermark))
    home, store = resolve_blocks(plan)
    with pytest.raises(ConfigError) as info:
        entity_blocks(plan.entities[0], home, store)
    assert info.value.entity == "t"
    assert what in info.value.msg
    assert "the parquet Store does not" in info.value.msg and "`type: delta`" in info.value.msg


@pytest.mark.parametrize(
    ("watermark", "error"),
    [
        ({"lag": "10m", "keys": []}, "`lag` reads rows again on every run, so they need `keys`"),
        ({"nulls": "include", "keys": []}, "`nulls: include` reads rows again"),
        ({"lag": "10 minutes"}, "'10 minutes' is no duration"),
        ({"lag": -5}, "`lag` is a duration (`10m`) or a number of at least 0"),
    ],
)
def test_spec_refuses_a_reread_it_cannot_make_exact(
    tmp_path: Path, watermark: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(spec("x", tmp_path / "s.sqlite", tmp_path / "lake", **watermark))
    assert "entity 't', field watermark" in str(info.value)
    assert error in str(info.value)


def test_spec_null_policy_defaults_to_fail_and_takes_skip(tmp_path: Path) -> None:
    base = spec("x", tmp_path / "s.sqlite", tmp_path / "lake")
    assert parse_spec(base).entities[0].watermark.nulls == "fail"  # type: ignore[union-attr]
    skip = spec("x", tmp_path / "s.sqlite", tmp_path / "lake", nulls="skip")
    assert parse_spec(skip).entities[0].watermark.nulls == "skip"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="nulls"):
        parse_spec(spec("x", tmp_path / "s.sqlite", tmp_path / "lake", nulls="keep"))


# -- guards: an empty replace, and rows read against rows published -----------------------------


def test_replace_with_no_rows_keeps_the_published_table(tmp_path: Path, spec_name: str) -> None:
    db = make_db(tmp_path / "s.sqlite", "DATETIME", [(i, spell(BASE, " ", 0)) for i in (1, 2, 3)])
    lake = tmp_path / "lake"
    s = spec(spec_name, db, lake)
    run_flow(s)
    con = sqlite3.connect(db)
    con.execute("DELETE FROM t")  # an accidentally truncated source
    con.commit()
    con.close()
    before = ledger_of(s)["t"]

    row = failed_row(run_flow(s, run_type="full_drop"), "t")
    assert "the source returned no rows" in row["detail"]
    assert "published table (3 rows)" in row["detail"]
    assert "`allow_empty: true`" in row["detail"]
    assert lake_ids(lake) == [1, 2, 3]
    assert ledger_of(s)["t"] == before

    s["entities"][0]["allow_empty"] = True
    state = run_flow(s, run_type="full_drop")
    assert summary_row(state, "t")["detail"] == "source is empty: published an empty table"
    assert read_lake(lake, "t").height == 0
    # an empty table replaced by an empty one is no loss: no allow_empty needed
    del s["entities"][0]["allow_empty"]
    assert run_flow(s, run_type="full_drop").is_completed()


class LossyWriter(ParquetWriter):
    """The real Parquet writer with a bug: it drops every second batch it is given."""

    def write(self, batch: pa.RecordBatch) -> None:
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen % 2:
            super().write(batch)


class LossyStore(ParquetStore):
    _block_type_slug = "test-lossy-parquet-store"
    spec_type = "lossy-parquet"

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> ParquetWriter:
        return LossyWriter(self, entity, run_id, mode)


def test_rows_read_and_published_are_reconciled_before_publishing(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_db(tmp_path / "s.sqlite", "DATETIME", [(i, spell(BASE, " ", 0)) for i in range(10)])
    lake = tmp_path / "lake"
    good = spec(spec_name, db, lake)
    assert run_flow(good).is_completed()
    journal = pl.read_parquet(lake / "_journal" / "*.parquet")
    assert journal.select("rows", "rows_read", "rows_published").row(0) == (10, 10, 10)

    monkeypatch.setitem(blocks.STORES, "lossy-parquet", LossyStore)
    bad = {**good, "store": {"type": "lossy-parquet", "path": str(lake)}}
    make_db(db, "DATETIME", [(i, spell(BASE, " ", 0)) for i in range(10, 20)])
    row = failed_row(run_flow(bad, run_type="full_drop"), "t")
    found = re.search(r"20 rows were read but the staged files hold (\d+) \(part-", row["detail"])
    assert found is not None, row["detail"]
    held = int(found.group(1))
    assert 0 < held < 20
    assert "nothing was published" in row["detail"]
    assert lake_ids(lake) == list(range(10))  # the published table is the first run's
    assert not [p for p in (lake / "_staging").rglob("*") if p.is_file()]
    journal = pl.read_parquet(lake / "_journal" / "*.parquet").sort("started_at")
    last = journal.row(-1, named=True)
    assert (last["status"], last["rows_read"], last["rows_published"]) == ("failed", 20, held)


# -- a list of watermark columns: COALESCE(modified, created) -----------------------------------


def coalesce_spec(name: str, home: dict[str, Any], table: str, lake: Path) -> dict[str, Any]:
    watermark = {"column": ["modified", "created"], "keys": ["id"]}
    return {
        "name": name,
        "home": home,
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 2},
        "entities": [{"name": "t", "table": table, "watermark": watermark}],
    }


def versions(lake: Path) -> list[tuple[int, Any]]:
    df = read_lake(lake, "t").sort("id", "modified", nulls_last=False)
    return [(r["id"], r["modified"]) for r in df.iter_rows(named=True)]


def coalesce_runs(lake: Path, s: dict[str, Any], change: Any) -> None:
    """The SQL Server shape: `modified` is NULL until a row's first update."""
    assert summary_row(run_flow(s), "t")["rows"] == 3
    mark = ledger_of(s)["t"]["watermark"]
    assert mark["column"] == "COALESCE(modified, created)"
    assert mark["value"] == (BASE + dt.timedelta(seconds=2)).isoformat()
    assert mark["boundary"] == ["3"]
    # row 1 updated (modified set, later than every created), row 4 created; row 2 untouched
    change()
    assert summary_row(run_flow(s), "t")["rows"] == 2
    assert summary_row(run_flow(s), "t")["rows"] == 0
    late = BASE + dt.timedelta(seconds=5)
    assert versions(lake) == [(1, None), (1, late), (2, None), (3, None), (4, None)]
    assert ledger_of(s)["t"]["watermark"]["value"] == late.isoformat()


def test_coalesced_watermark_columns_on_sqlite(tmp_path: Path, spec_name: str) -> None:
    db = tmp_path / "s.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, created DATETIME, modified DATETIME)")
    at = [spell(BASE + dt.timedelta(seconds=i), " ", 3) for i in range(6)]
    con.executemany("INSERT INTO t VALUES (?, ?, NULL)", [(1, at[0]), (2, at[1]), (3, at[2])])
    con.commit()

    def change() -> None:
        con.execute("UPDATE t SET modified = ? WHERE id = 1", (at[5],))
        con.execute("INSERT INTO t VALUES (4, ?, NULL)", (at[3],))
        con.commit()

    lake = tmp_path / "lake"
    coalesce_runs(
        lake, coalesce_spec(spec_name, {"type": "sqlite", "path": str(db)}, "t", lake), change
    )
    con.close()


def test_coalesced_watermark_columns_on_postgres(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str
) -> None:
    table = f'"{pg_schema}".t'
    pg.execute(f"CREATE TABLE {table} (id int, created timestamp, modified timestamp)")
    at = [f"'{BASE + dt.timedelta(seconds=i)}'" for i in range(6)]
    pg.execute(
        f"INSERT INTO {table} VALUES (1, {at[0]}, NULL), (2, {at[1]}, NULL), (3, {at[2]}, NULL)"
    )

    def change() -> None:
        pg.execute(
            f"UPDATE {table} SET modified = {at[5]} WHERE id = 1",
            f"INSERT INTO {table} VALUES (4, {at[3]}, NULL)",
        )

    lake = tmp_path / "lake"
    coalesce_runs(lake, coalesce_spec(spec_name, pg_home(pg), f"{pg_schema}.t", lake), change)


def test_coalesced_columns_of_different_types_are_refused(tmp_path: Path) -> None:
    bf = BoundaryFilter("t", ["a", "b"], ["id"], None)
    batch = pa.record_batch({"id": [1], "a": pa.array([None], pa.int64()), "b": ["x"]})
    with pytest.raises(
        ConfigError, match=r"must have one type to be coalesced \(a int64, b string\)"
    ):
        bf.admit(batch)


def test_coalesced_watermark_columns_on_parquet_files(tmp_path: Path, spec_name: str) -> None:
    src = tmp_path / "src"
    at = [BASE + dt.timedelta(seconds=i) for i in range(6)]
    frame = pl.DataFrame(
        {"id": [1, 2, 3], "created": at[:3], "modified": [None, None, None]},
        schema={"id": pl.Int64, "created": pl.Datetime("us"), "modified": pl.Datetime("us")},
    )
    write_parquet(frame, src / "t" / "a.parquet")
    lake = tmp_path / "lake"
    home = {"type": "parquet", "path": str(src)}
    s = coalesce_spec(spec_name, home, "t", lake)
    del s["entities"][0]["table"]
    s["entities"][0]["path"] = "t"

    def change() -> None:
        later = pl.DataFrame(
            {"id": [1, 4], "created": [at[0], at[3]], "modified": [at[5], None]},
            schema=frame.schema,
        )
        write_parquet(pl.concat([frame.filter(pl.col("id") != 1), later]), src / "t" / "a.parquet")

    coalesce_runs(lake, s, change)


class LossyBlobWriter(BlobParquetWriter):
    """The real ADLS writer with a bug: it drops every second batch it is given."""

    def write(self, batch: pa.RecordBatch) -> None:
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen % 2:
            super().write(batch)


class LossyAdlsStore(AdlsStore):
    _block_type_slug = "test-lossy-adls-store"
    spec_type = "lossy-adls"

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> BlobParquetWriter:
        return LossyBlobWriter(self, entity, run_id, mode)


def test_adls_rows_are_reconciled_file_by_file(
    azurite: Azurite, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cont = azurite.new_container()
    db = make_db(tmp_path / "s.sqlite", "DATETIME", [(i, spell(BASE, " ", 0)) for i in range(25)])
    store = {
        "type": "adls",
        "container": cont,
        "path": "lake",
        "credentials": {"connection_string": azurite.connection_string},
        "max_rows_per_file": 10,  # three files: every roll counts its own footer
    }
    s = {**spec(spec_name, db, tmp_path / "unused"), "store": store}
    assert summary_row(run_flow(s), "t")["rows"] == 25
    journal = AdlsStore(**{k: v for k, v in store.items() if k != "type"}).read_journal()
    assert journal is not None
    assert journal.select(["rows_read", "rows_published"]).to_pylist() == [
        {"rows_read": 25, "rows_published": 25}
    ]

    monkeypatch.setitem(blocks.STORES, "lossy-adls", LossyAdlsStore)
    row = failed_row(
        run_flow({**s, "store": {**store, "type": "lossy-adls"}}, run_type="full_drop"), "t"
    )
    assert re.search(r"25 rows were read but the staged files hold \d+ \(part-", row["detail"])
    assert "nothing was published" in row["detail"]
    names = [b.name for b in azurite.container(cont).list_blobs(name_starts_with="lake/t/")]
    assert len([n for n in names if n.endswith(".parquet")]) == 3  # the first run's files

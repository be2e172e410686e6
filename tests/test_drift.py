"""Schema drift: every policy against every kind of change, end to end on real sources."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import blocks
from blocks import ParquetHome, ParquetStore
from blocks.base import ReadRequest
from hygge_core.errors import HyggeError
from hygge_tasks.drift import SchemaGuard, diff, recall, remember, widens
from tests.conftest import ledger_of, make_events_db, read_lake, run_flow
from tests.flow_helpers import events_rows, spec_for, summary_row, ts

KINDS = ["added", "removed", "retyped", "nullability"]


# -- sources whose schema changes -------------------------------------------------------------


def change_sqlite(db: Path, kind: str, rows: list[tuple[Any, ...]]) -> None:
    """Change the `events` table's schema, then add `rows` (id, ts, amount, label[, note])."""
    con = sqlite3.connect(db)
    if kind == "added":
        con.execute("ALTER TABLE events ADD COLUMN note TEXT")
        con.executemany("INSERT INTO events VALUES (?,?,?,?,?)", [(*r, f"n{r[0]}") for r in rows])
    elif kind == "removed":
        con.execute("ALTER TABLE events DROP COLUMN label")
        con.executemany("INSERT INTO events VALUES (?,?,?)", [r[:3] for r in rows])
    else:
        # SQLite changes a declared type only by rebuilding the table
        con.executescript(
            "CREATE TABLE new (id INTEGER PRIMARY KEY, ts DATETIME, amount DECIMAL(12,4), "
            "label TEXT); INSERT INTO new SELECT * FROM events; DROP TABLE events; "
            "ALTER TABLE new RENAME TO events;"
        )
        con.executemany("INSERT INTO events VALUES (?,?,?,?)", rows)
    con.commit()
    con.close()


class ArrowParquetHome(ParquetHome):
    """A real Parquet Home read with pyarrow, which keeps NOT NULL (Polars drops it)."""

    _block_type_slug = "test-arrow-parquet-home"
    spec_type = "arrow-parquet"
    seen: ClassVar[list[pa.Schema]] = []

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        # every row, every time: the engine's boundary filter drops what was loaded before
        table = pq.read_table(Path(self.path or ".") / (request.path or ""))
        yield from table.to_batches(max_chunksize=request.batch_size)


def write_parquet_source(path: Path, ids: list[int | None], nullable: bool) -> None:
    schema = pa.schema(
        [pa.field("id", pa.int64(), nullable=nullable), pa.field("seq", pa.int64(), False)]
    )
    seqs = list(range(len(ids)))
    pq.write_table(pa.table({"id": ids, "seq": seqs}, schema=schema), path)


@pytest.fixture
def arrow_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(blocks.HOMES, "arrow-parquet", ArrowParquetHome)


def nullability_spec(name: str, tmp_path: Path, policy: str) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "arrow-parquet", "path": str(tmp_path)},
        "store": {"type": "parquet", "path": str(tmp_path / "lake")},
        "retries": 0,
        "entities": [
            {
                "name": "t",
                "path": "src.parquet",
                "watermark": {"column": "seq", "keys": ["seq"]},
                "schema": {"on_drift": policy},
            }
        ],
    }


def start(tmp_path: Path, name: str, kind: str, policy: str) -> tuple[dict[str, Any], Path]:
    """Load a first version of the source; return the spec and the lake."""
    if kind == "nullability":
        write_parquet_source(tmp_path / "src.parquet", [1, 2, 3], nullable=False)
        spec = nullability_spec(name, tmp_path, policy)
    else:
        db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
        spec = spec_for(name, db, tmp_path / "lake", retries=0)
        spec["entities"][0]["schema"] = {"on_drift": policy}
        # one batch: SqliteHome (ADBC) infers a TEXT column that is NULL throughout its first
        # batch as int64 and then fails on text (reported; not the subject here)
        spec["defaults"]["batch_size"] = 10_000
    assert run_flow(spec).is_completed()
    return spec, tmp_path / "lake"


def change(tmp_path: Path, kind: str, with_nulls: bool = True) -> None:
    if kind == "nullability":
        ids = [1, 2, 3, None if with_nulls else 4, 5]
        write_parquet_source(tmp_path / "src.parquet", ids, nullable=True)
    else:
        change_sqlite(tmp_path / "src.sqlite", kind, events_rows(100, 20))


def lake_of(lake: Path, kind: str) -> pl.DataFrame:
    entity = "t" if kind == "nullability" else "events"
    return read_lake(lake, entity).sort("seq" if kind == "nullability" else "id")


def entity_of(kind: str) -> str:
    return "t" if kind == "nullability" else "events"


def failure(state: Any, entity: str) -> str:
    with pytest.raises(HyggeError) as info:
        state.result()
    detail: str = next(r for r in info.value.summary if r["entity"] == entity)["detail"]
    return detail


# -- fail (the default) -----------------------------------------------------------------------

FAIL_DIFF = {
    "added": "+ added     note: string",
    "removed": "- removed   label: string",
    "retyped": "~ type      amount: decimal128(10, 2) -> decimal128(12, 4)",
    "nullability": "~ NULLs     id: NOT NULL -> nullable",
}


@pytest.mark.parametrize("kind", KINDS)
def test_fail_stops_the_entity_with_a_diff_and_writes_nothing(
    tmp_path: Path, spec_name: str, kind: str, arrow_home: None
) -> None:
    spec, lake = start(tmp_path, spec_name, kind, "fail")
    spec["entities"][0].pop("schema")  # `fail` is the default
    entity = entity_of(kind)
    files = sorted((lake / entity).iterdir())
    entry = ledger_of(spec)[entity]
    change(tmp_path, kind)

    detail = failure(run_flow(spec), entity)
    assert "the source schema changed since the last run" in detail
    assert FAIL_DIFF[kind] in detail
    assert "--full-drop" in detail
    assert sorted((lake / entity).iterdir()) == files
    assert ledger_of(spec)[entity] == entry
    journal = pl.read_parquet(lake / "_journal" / "*.parquet").sort("started_at")
    assert journal["status"].to_list() == ["ok", "failed"]

    # a full drop rebuilds the table with the new schema and remembers it
    assert run_flow(spec, run_type="full_drop").is_completed()
    assert run_flow(spec).is_completed()
    assert lake_of(lake, kind).height == (5 if kind == "nullability" else 120)


# -- warn -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["added", "removed", "retyped"])
def test_warn_keeps_loading_the_old_columns(
    tmp_path: Path, spec_name: str, kind: str, arrow_home: None
) -> None:
    spec, lake = start(tmp_path, spec_name, kind, "warn")
    before = pq.read_schema(next((lake / "events").glob("*.parquet")))
    remembered = ledger_of(spec)["events"]["schema"]
    change(tmp_path, kind)

    state = run_flow(spec)
    assert state.is_completed()
    row = summary_row(state, "events")
    assert (row["rows"], row["mode"]) == (20, "append")
    assert "schema drift ignored (on_drift: warn)" in row["detail"]
    df = lake_of(lake, kind)
    assert pq.read_schema(sorted((lake / "events").glob("*.parquet"))[-1]) == before
    assert df["id"].to_list() == list(range(120))
    if kind == "removed":
        assert df["label"].null_count() == 20
    if kind == "retyped":
        assert df["amount"][119] == Decimal("119.19")
    # the remembered schema stays the old one: the next run warns again
    assert ledger_of(spec)["events"]["schema"] == remembered
    again = summary_row(run_flow(spec), "events")
    assert (again["rows"], "schema drift ignored" in again["detail"]) == (0, True)


def test_warn_fails_when_a_value_no_longer_fits(tmp_path: Path, spec_name: str) -> None:
    spec, _ = start(tmp_path, spec_name, "retyped", "warn")
    change_sqlite(tmp_path / "src.sqlite", "retyped", [(100, ts(100), "1.2345", "x")])
    detail = failure(run_flow(spec), "events")
    assert "column 'amount' holds a value that does not fit the table's type" in detail


def test_warn_on_nullability_loads_until_a_null_arrives(
    tmp_path: Path, spec_name: str, arrow_home: None
) -> None:
    spec, lake = start(tmp_path, spec_name, "nullability", "warn")
    change(tmp_path, "nullability", with_nulls=False)
    state = run_flow(spec)
    assert "schema drift ignored" in summary_row(state, "t")["detail"]
    assert lake_of(lake, "nullability")["id"].to_list() == [1, 2, 3, 4, 5]
    assert not pq.read_schema(next((lake / "t").glob("*.parquet"))).field("id").nullable

    write_parquet_source(tmp_path / "src.parquet", [1, 2, 3, 4, 5, None], nullable=True)
    detail = failure(run_flow(spec), "t")
    assert "column 'id' now holds NULLs but the table declares it NOT NULL" in detail


# -- evolve -----------------------------------------------------------------------------------


def test_evolve_adds_a_column_and_rewrites_the_table_once(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, retries=0)
    spec["defaults"]["batch_size"] = 10_000  # see `start`
    entity = spec["entities"][0]
    entity["schema"] = {"on_drift": "evolve"}
    entity["polish"] = {"case": "PascalCase", "load_timestamp": "LoadedAt"}
    assert run_flow(spec).is_completed()
    first_stamp = read_lake(lake, "events")["LoadedAt"][0]
    con = sqlite3.connect(db)
    con.execute('ALTER TABLE events ADD COLUMN "note text" TEXT')
    con.executemany(
        "INSERT INTO events VALUES (?,?,?,?,?)", [(*r, "hi") for r in events_rows(100, 20)]
    )
    con.commit()
    con.close()

    state = run_flow(spec)
    row = summary_row(state, "events")
    assert (row["rows"], row["mode"]) == (20, "replace")
    assert "schema evolved: +note text string" in row["detail"]
    assert "table rewritten (100 published rows carried over)" in row["detail"]
    # one schema for every file: a plain read of the folder works
    df = pl.read_parquet(lake / "events" / "*.parquet").sort("Id")
    assert df.columns == ["Id", "Ts", "Amount", "Label", "NoteText", "LoadedAt"]
    assert df["NoteText"].to_list() == [None] * 100 + ["hi"] * 20
    assert df["LoadedAt"][:100].to_list() == [first_stamp] * 100  # carried rows keep theirs
    assert df["Amount"][5] == Decimal("5.05")
    remembered = ledger_of(spec)["events"]["schema"]
    assert [c["name"] for c in remembered["columns"]][-1] == "note text"
    journal = pl.read_parquet(lake / "_journal" / "*.parquet").sort("started_at")
    assert "schema evolved" in journal["schema_change"][-1]

    # from now on the new schema is the normal one: plain appends
    con = sqlite3.connect(db)
    con.executemany(
        "INSERT INTO events VALUES (?,?,?,?,?)", [(*r, "x") for r in events_rows(120, 5)]
    )
    con.commit()
    con.close()
    after = summary_row(run_flow(spec), "events")
    assert (after["rows"], after["mode"], "schema" in after["detail"]) == (5, "append", False)
    assert read_lake(lake, "events").height == 125


def test_evolve_keeps_a_removed_column_as_null(tmp_path: Path, spec_name: str) -> None:
    spec, lake = start(tmp_path, spec_name, "removed", "evolve")
    change(tmp_path, "removed")
    row = summary_row(run_flow(spec), "events")
    assert (row["rows"], row["mode"]) == (20, "append")  # the table's schema did not change
    assert "schema evolved: -label" in row["detail"]
    df = lake_of(lake, "removed")
    assert df["label"][:100].null_count() == 0 and df["label"][100:].null_count() == 20
    assert ledger_of(spec)["events"]["schema"]["absent"] == ["label"]
    # the column stays gone: no drift to report any more
    make_events_db_without_label(tmp_path / "src.sqlite", 120, 3)
    again = summary_row(run_flow(spec), "events")
    assert (again["rows"], "schema" in again["detail"]) == (3, False)


def make_events_db_without_label(db: Path, start: int, count: int) -> None:
    con = sqlite3.connect(db)
    con.executemany("INSERT INTO events VALUES (?,?,?)", [r[:3] for r in events_rows(start, count)])
    con.commit()
    con.close()


def test_evolve_widens_a_type(tmp_path: Path, spec_name: str) -> None:
    spec, lake = start(tmp_path, spec_name, "retyped", "evolve")
    change_sqlite(tmp_path / "src.sqlite", "retyped", [(100, ts(100), "1.2345", "x")])
    row = summary_row(run_flow(spec), "events")
    assert row["mode"] == "replace"
    assert "amount decimal128(10, 2)->decimal128(12, 4)" in row["detail"]
    df = lake_of(lake, "retyped")
    assert df.schema["amount"] == pl.Decimal(12, 4)
    assert df["amount"].to_list()[99:] == [Decimal("99.99"), Decimal("1.2345")]


def test_evolve_makes_a_column_nullable(tmp_path: Path, spec_name: str, arrow_home: None) -> None:
    spec, lake = start(tmp_path, spec_name, "nullability", "evolve")
    change(tmp_path, "nullability")
    row = summary_row(run_flow(spec), "t")
    assert "schema evolved: id nullable" in row["detail"]
    assert row["mode"] == "replace"
    assert lake_of(lake, "nullability")["id"].to_list() == [1, 2, 3, None, 5]
    for path in (lake / "t").glob("*.parquet"):
        assert pq.read_schema(path).field("id").nullable


def test_evolve_refuses_what_it_cannot_keep(tmp_path: Path, spec_name: str) -> None:
    spec, _ = start(tmp_path, spec_name, "retyped", "evolve")
    con = sqlite3.connect(tmp_path / "src.sqlite")
    con.executescript(
        "CREATE TABLE new (id INTEGER PRIMARY KEY, ts DATETIME, amount DECIMAL(10,2), "
        "label INTEGER); INSERT INTO new SELECT id, ts, amount, 7 FROM events; "
        "DROP TABLE events; ALTER TABLE new RENAME TO events;"
    )
    con.close()
    detail = failure(run_flow(spec), "events")
    assert "cannot evolve column 'label' from string to int64" in detail

    # nor can a load go on without its watermark column
    con = sqlite3.connect(tmp_path / "src.sqlite")
    con.executescript("UPDATE events SET label = NULL; ALTER TABLE events DROP COLUMN ts;")
    con.close()
    spec["entities"][0]["schema"] = {"on_drift": "warn"}
    assert "'ts' is gone from the source, but it is the entity's watermark column" in failure(
        run_flow(spec), "events"
    )


class MirrorLikeStore(ParquetStore):
    """A real Parquet Store that, like Fabric Open Mirroring, cannot change a column's type."""

    _block_type_slug = "test-mirror-like-store"
    spec_type = "mirror-like"
    type_change_refusal = "the destination stops replicating a table whose column type changes"


def test_evolve_refuses_type_changes_where_the_store_cannot_take_them(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(blocks.STORES, "mirror-like", MirrorLikeStore)
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 10))
    spec = spec_for(spec_name, db, tmp_path / "lake", retries=0)
    spec["store"]["type"] = "mirror-like"
    spec["entities"][0]["schema"] = {"on_drift": "evolve"}
    run_flow(spec)
    change_sqlite(db, "retyped", events_rows(10, 2))
    detail = failure(run_flow(spec), "events")
    assert "changed type (decimal128(10, 2) -> decimal128(12, 4)) and the destination stops" in (
        detail
    )


# -- the pieces -------------------------------------------------------------------------------


def test_remembered_schema_round_trips_exactly() -> None:
    schema = pa.schema(
        [
            pa.field("a", pa.decimal128(10, 2), nullable=False),
            pa.field("b", pa.timestamp("us", "UTC")),
            pa.field("c", pa.large_string()),
        ],
        metadata={b"pandas": b"{}"},
    )
    entry = remember(schema, {"z"})
    back, absent = recall(entry)
    assert back.equals(schema.remove_metadata()) and absent == {"z"}
    assert entry["columns"][0] == {"name": "a", "type": "decimal128(10, 2)", "nullable": False}


def test_diff_ignores_order_and_known_absences() -> None:
    old = pa.schema([("a", pa.int32()), ("b", pa.string()), ("gone", pa.string())])
    new = pa.schema([("b", pa.string()), ("a", pa.int64()), ("c", pa.bool_())])
    d = diff(old, {"gone"}, new)
    assert [f.name for f in d.added] == ["c"] and not d.removed
    assert [(o.type, n.type) for o, n in d.retyped] == [(pa.int32(), pa.int64())]
    assert d.short() == "+c bool; a int32->int64"
    assert not diff(old, set(), old)


def test_text_flavours_are_one_column_to_the_guard() -> None:
    # a ledger remembers `large_string` (the file Homes' type before they handed views over) or
    # `string` (pyarrow's); the source now hands `string_view`: no drift, and the batches pass
    # through in their own flavour, without a cast
    for remembered in (pa.large_string(), pa.string()):
        old = pa.schema([("id", pa.int64()), ("name", remembered), ("raw", pa.large_binary())])
        source = pa.schema(
            [("id", pa.int64()), ("name", pa.string_view()), ("raw", pa.binary_view())]
        )
        assert not diff(old, set(), source)
        guard = SchemaGuard("e", "fail", remember(old))
        guard.check(source)
        assert guard.target == source and guard.note is None
        rows = pa.record_batch(
            [pa.array([1]), pa.array(["a"], pa.string_view()), pa.array([b"x"], pa.binary_view())],
            schema=source,
        )
        assert guard.conform(rows) is rows
    # a view is remembered as its large type: the ledger reads the same whatever the Home gave
    entry = remember(pa.schema([("name", pa.string_view()), ("raw", pa.binary_view())]))
    assert [c["type"] for c in entry["columns"]] == ["large_string", "large_binary"]
    # a real type change is still drift
    assert diff(pa.schema([("a", pa.string())]), set(), pa.schema([("a", pa.int64())]))


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (pa.int32(), pa.int64(), True),
        (pa.int64(), pa.int32(), False),
        (pa.uint32(), pa.int64(), True),
        (pa.uint64(), pa.int64(), False),
        (pa.int32(), pa.float64(), True),
        (pa.int64(), pa.float64(), False),
        (pa.float32(), pa.float64(), True),
        (pa.int64(), pa.decimal128(20, 0), True),
        (pa.int64(), pa.decimal128(20, 2), False),
        (pa.decimal128(10, 2), pa.decimal128(12, 4), True),
        (pa.decimal128(10, 2), pa.decimal128(12, 1), False),
        (pa.timestamp("ms"), pa.timestamp("us"), True),
        (pa.timestamp("us"), pa.timestamp("ns"), False),
        (pa.timestamp("us"), pa.timestamp("us", "UTC"), False),
        (pa.string(), pa.large_string(), True),
        (pa.string(), pa.int64(), False),
    ],
)
def test_widens(old: pa.DataType, new: pa.DataType, ok: bool) -> None:
    assert widens(old, new) is ok


def test_guard_without_a_remembered_schema_takes_the_source() -> None:
    source = pa.schema([("a", pa.int64())], metadata={b"k": b"v"})
    guard = SchemaGuard("e", "fail", None)
    guard.check(source)
    assert guard.target == source.remove_metadata() and guard.note is None
    # an entry written before drift handling existed has no schema yet
    guard = SchemaGuard("e", "fail", {"columns": []})
    guard.check(source)
    assert guard.remembered is not None and recall(guard.remembered)[0] == guard.target


def test_schema_policy_in_defaults_and_bad_values_name_the_field() -> None:
    from flows.spec import parse_spec
    from hygge_core.errors import ConfigError

    base = {"name": "t", "home": "h/x", "store": "s/y"}
    spec = parse_spec(
        {
            **base,
            "defaults": {"schema": {"on_drift": "evolve"}},
            "entities": [{"name": "a"}, {"name": "b", "schema": {"on_drift": "warn"}}],
        }
    )
    assert [e.drift.on_drift for e in spec.entities] == ["evolve", "warn"]
    assert parse_spec({**base, "entities": [{"name": "c"}]}).entities[0].drift.on_drift == "fail"
    bad = {**base, "entities": [{"name": "e", "schema": {"on_drift": "explode"}}]}
    with pytest.raises(ConfigError, match=r"entity 'e', field schema.on_drift: Input should be"):
        parse_spec(bad)

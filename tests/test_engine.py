"""The engine called directly (`hygge_tasks.move.move`): no Prefect server, no flow run.

Real SQLite, CSV and Parquet sources move into a real local ParquetStore. A small stand-in
for the flow's planner keeps the ledger as a dict: each run's plan takes the previous
committed entry, as `flows.plan` does, so incremental runs, drift and the empty-replace guard
are the engine's own behaviour. These tests are the fast tier's core (tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks import CsvHome, ParquetHome, ParquetStore, SqliteHome
from blocks.base import HomeBlock, ReadRequest, StoreBlock
from hygge_core.errors import HomeError, HyggeError
from hygge_tasks.entity import EntityPlan, EntityResult
from hygge_tasks.move import move
from hygge_tasks.polish import PolishSpec
from tests.conftest import make_events_db, read_lake
from tests.flow_helpers import T0, assert_lake_equals_source, events_rows, ts

LOG = logging.getLogger("tests.engine")


class Engine:
    """One entity's runs through `move`, with the ledger entry each run commits kept here."""

    def __init__(
        self, home: HomeBlock, store: StoreBlock, request: ReadRequest, **plan: Any
    ) -> None:
        self.home, self.store, self.request, self.plan = home, store, request, plan
        self.entry: dict[str, Any] = {}
        self.runs = 0

    def run(self, run_type: str = "incremental", **overrides: Any) -> EntityResult:
        """Plan as `flows.plan` does (first load, incremental, full drop), move, commit."""
        name = self.request.entity
        previous = self.entry.get("watermark")
        settings = {**self.plan, **overrides}
        incremental = (
            run_type == "incremental"
            and settings.get("watermark_column")
            and previous
            and self.store.has_data(name)
        )
        plan = EntityPlan(
            name=name,
            request=self.request,
            mode="append" if incremental else "replace",
            previous=previous if incremental else None,
            run_type=run_type,
            previous_schema=self.entry.get("schema") if run_type == "incremental" else None,
            schema_reset=run_type == "full_drop" or not self.store.has_data(name),
            **settings,
        )
        self.runs += 1
        result = move(plan, self.home, self.store, f"run{self.runs}", LOG)
        if result.ledger_entry is not None:  # what the flow commits: the entry's JSON
            self.entry = result.ledger_entry.to_json()
        return result


def events_engine(tmp_path: Path, rows: list[tuple[Any, ...]], **plan: Any) -> Engine:
    db = make_events_db(tmp_path / "src.sqlite", rows)
    request = ReadRequest(entity="events", table="events", batch_size=97)
    watermark = {"watermark_column": "ts", "watermark_keys": ["id"]}
    return Engine(SqliteHome(path=str(db)), ParquetStore(path=str(tmp_path / "lake")), request,
                  **{**watermark, **plan})  # fmt: skip


def add_events(tmp_path: Path, rows: list[tuple[Any, ...]]) -> None:
    make_events_db(tmp_path / "src.sqlite", rows)


def test_full_load_from_sqlite_keeps_values_types_and_the_watermark(tmp_path: Path) -> None:
    engine = events_engine(tmp_path, events_rows(0, 250))
    result = engine.run()

    assert (result.mode, result.rows, result.rows_read, result.rows_published) == (
        "replace",
        250,
        250,
        250,
    )
    assert result.changed and result.files
    assert_lake_equals_source(tmp_path / "lake", tmp_path / "src.sqlite")
    schema = pq.read_schema(next((tmp_path / "lake" / "events").glob("*.parquet")))
    assert schema.field("id").type == pa.int64()
    assert schema.field("amount").type == pa.decimal128(10, 2)
    assert pa.types.is_timestamp(schema.field("ts").type)
    assert pa.types.is_string(schema.field("label").type) or pa.types.is_large_string(
        schema.field("label").type
    )
    lake = read_lake(tmp_path / "lake", "events").sort("id")
    assert lake["amount"][17] == Decimal("17.17")
    assert lake["label"][249] == "évènement 249 ✓"
    # the watermark is the newest ts, with the ids that share it (5 rows a second)
    assert result.watermark == engine.entry["watermark"]
    assert result.watermark is not None
    assert result.watermark["column"] == "ts"
    assert result.watermark["value"] == (T0 + dt.timedelta(seconds=49)).isoformat()
    assert result.watermark["kind"] == "datetime"
    assert result.watermark["boundary"] == ["245", "246", "247", "248", "249"]
    assert engine.entry["rows"] == 250 and engine.entry["mode"] == "replace"
    assert [c["name"] for c in engine.entry["schema"]["columns"]] == ["id", "ts", "amount", "label"]


def test_incremental_takes_late_ties_and_new_rows_once(tmp_path: Path) -> None:
    engine = events_engine(tmp_path, events_rows(0, 100))  # ts 0..19, 5 rows each
    assert engine.run().rows == 100
    first = engine.entry["watermark"]

    # two late rows share the boundary second (ts 19); 60 rows are newer
    add_events(tmp_path, [(1000, ts(19), "1.00", "late tie a"), (1001, ts(19), "2.00", "late b")])
    add_events(tmp_path, events_rows(100, 60))
    second = engine.run()
    assert (second.mode, second.rows) == ("append", 62)
    assert second.watermark is not None
    assert second.watermark["value"] == (T0 + dt.timedelta(seconds=31)).isoformat()
    assert second.watermark["boundary"] == ["155", "156", "157", "158", "159"]
    assert second.watermark != first
    assert_lake_equals_source(tmp_path / "lake", tmp_path / "src.sqlite")
    ids = read_lake(tmp_path / "lake", "events")["id"].to_list()
    assert len(ids) == len(set(ids)) == 162

    # nothing new: no files, the watermark stays, and the entry is not rewritten
    entry = engine.entry
    third = engine.run()
    assert (third.mode, third.rows, third.changed, third.files) == ("append", 0, False, [])
    assert third.watermark == entry["watermark"]
    assert engine.entry is entry
    assert read_lake(tmp_path / "lake", "events").height == 162


def test_full_drop_replaces_the_table_with_the_source(tmp_path: Path) -> None:
    engine = events_engine(tmp_path, events_rows(0, 40))
    engine.run()
    con = sqlite3.connect(tmp_path / "src.sqlite")
    con.execute("DELETE FROM events WHERE id < 30")
    con.commit()
    con.close()
    result = engine.run(run_type="full_drop")
    assert (result.mode, result.rows) == ("replace", 10)
    assert sorted(read_lake(tmp_path / "lake", "events")["id"].to_list()) == list(range(30, 40))


def test_null_watermarks_fail_an_incremental_run_or_are_skipped_and_counted(
    tmp_path: Path,
) -> None:
    engine = events_engine(tmp_path, events_rows(0, 10))
    engine.run()
    add_events(tmp_path, [(50, None, "1.00", "no ts"), *events_rows(10, 5)])
    with pytest.raises(HomeError, match=r"1 rows have a NULL watermark column 'ts'") as info:
        engine.run()
    assert "watermark.nulls: skip" in str(info.value)
    assert read_lake(tmp_path / "lake", "events").height == 10  # nothing was published

    skipped = engine.run(watermark_nulls="skip")
    assert (skipped.rows, skipped.null_watermark_rows) == (5, 1)
    assert read_lake(tmp_path / "lake", "events").height == 15


def _add_note_column(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "src.sqlite")
    con.execute("ALTER TABLE events ADD COLUMN note TEXT")
    con.executemany(
        "INSERT INTO events VALUES (?,?,?,?,?)", [(*r, "hi") for r in events_rows(30, 10)]
    )
    con.commit()
    con.close()


def test_drift_fail_names_the_change_and_writes_nothing(tmp_path: Path) -> None:
    engine = events_engine(tmp_path, events_rows(0, 30))
    engine.run()
    files = sorted((tmp_path / "lake" / "events").iterdir())
    entry = engine.entry
    _add_note_column(tmp_path)

    with pytest.raises(HyggeError, match="the source schema changed since the last run") as info:
        engine.run()
    assert "note" in str(info.value) and "--full-drop" in str(info.value)
    assert sorted((tmp_path / "lake" / "events").iterdir()) == files
    assert engine.entry is entry


def test_drift_evolve_adds_the_column_and_carries_the_published_rows(tmp_path: Path) -> None:
    engine = events_engine(tmp_path, events_rows(0, 30), on_drift="evolve")
    engine.run()
    _add_note_column(tmp_path)

    result = engine.run()
    assert (result.mode, result.rows, result.rows_read) == ("replace", 10, 40)
    assert result.schema_change is not None
    assert "schema evolved: +note string" in result.schema_change
    assert "table rewritten (30 published rows carried over)" in result.schema_change
    df = read_lake(tmp_path / "lake", "events").sort("id")
    assert df.columns == ["id", "ts", "amount", "label", "note"]
    assert df["note"].to_list() == [None] * 30 + ["hi"] * 10
    assert [c["name"] for c in engine.entry["schema"]["columns"]][-1] == "note"


def test_polish_renames_hashes_and_stamps_every_row(tmp_path: Path) -> None:
    csv = tmp_path / "src" / "Order Lines.csv"
    csv.parent.mkdir()
    csv.write_text(
        "Order ID,Line No,Unit Price (€)\n1,1,9.50\n1,2,3.25\n2,1,10.00\n", encoding="utf-8"
    )
    loaded_at = dt.datetime(2024, 6, 1, 8, 30, tzinfo=dt.UTC)
    polish = PolishSpec.model_validate(
        {
            "case": "snake_case",
            "remove_special": True,
            "hash_id": {"name": "row_id", "columns": ["Order ID", "Line No"]},
            "constants": {"source": "erp"},
            "load_timestamp": "_loaded_at",
        }
    )
    engine = Engine(
        CsvHome(path=str(csv.parent)),
        ParquetStore(path=str(tmp_path / "lake")),
        ReadRequest(entity="lines", path="Order Lines.csv"),
        polish=polish,
        loaded_at=loaded_at,
    )
    assert engine.run().rows == 3

    df = read_lake(tmp_path / "lake", "lines")
    assert df.columns == ["order_id", "line_no", "unit_price", "row_id", "source", "_loaded_at"]
    assert df["order_id"].to_list() == [1, 1, 2]
    assert df["source"].to_list() == ["erp"] * 3
    assert (
        df["_loaded_at"].dt.replace_time_zone(None).to_list()
        == [loaded_at.replace(tzinfo=None)] * 3
    )
    ids = df["row_id"].to_list()
    assert len(set(ids)) == 3 and all(ids)
    # the same rows hash to the same IDs on the next run: the IDs are deterministic
    engine.run(run_type="full_drop")
    assert read_lake(tmp_path / "lake", "lines")["row_id"].to_list() == ids


def test_an_empty_source_never_replaces_a_published_table(tmp_path: Path) -> None:
    engine = events_engine(tmp_path, events_rows(0, 25), watermark_column=None, watermark_keys=[])
    engine.run()
    files = sorted((tmp_path / "lake" / "events").iterdir())
    con = sqlite3.connect(tmp_path / "src.sqlite")
    con.execute("DELETE FROM events")
    con.commit()
    con.close()

    with pytest.raises(HomeError, match="the source returned no rows") as info:
        engine.run()
    message = str(info.value)
    assert "would replace the published table (25 rows) with an empty one" in message
    assert "allow_empty: true" in message
    assert sorted((tmp_path / "lake" / "events").iterdir()) == files

    emptied = engine.run(allow_empty=True)
    assert (emptied.mode, emptied.rows) == ("replace", 0)
    assert read_lake(tmp_path / "lake", "events").height == 0


def test_parquet_folder_incremental_reads_only_the_new_rows(tmp_path: Path) -> None:
    src = tmp_path / "src" / "orders"
    src.mkdir(parents=True)

    def part(name: str, start: int, count: int) -> None:
        ids = list(range(start, start + count))
        pl.DataFrame(
            {
                "id": ids,
                "ts": [T0 + dt.timedelta(minutes=i) for i in ids],
                "v": [i * 1.5 for i in ids],
            }
        ).write_parquet(src / name)

    part("a.parquet", 0, 50)
    engine = Engine(
        ParquetHome(path=str(tmp_path / "src")),
        ParquetStore(path=str(tmp_path / "lake")),
        ReadRequest(entity="orders", path="orders", batch_size=16),
        watermark_column="ts",
        watermark_keys=["id"],
    )
    assert engine.run().rows == 50
    part("b.parquet", 50, 20)
    second = engine.run()
    assert (second.mode, second.rows) == ("append", 20)
    df = read_lake(tmp_path / "lake", "orders").sort("id")
    assert df["id"].to_list() == list(range(70))
    assert df["v"][69] == 103.5
    assert second.watermark is not None
    assert second.watermark["value"] == (T0 + dt.timedelta(minutes=69)).isoformat()


def test_a_corrupt_parquet_file_is_named_and_nothing_is_published(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    engine = Engine(
        ParquetHome(path=str(src)),
        ParquetStore(path=str(tmp_path / "lake")),
        ReadRequest(entity="broken", path="broken.parquet"),
    )
    with pytest.raises(HomeError) as info:
        engine.run()
    message = str(info.value)
    assert message.startswith("entity 'broken': file ")
    assert f"{src / 'broken.parquet'}' is not a readable Parquet file" in message
    assert "write it again or remove it" in message
    assert not list((tmp_path / "lake").glob("broken/*.parquet"))

"""The parent flow end to end on real SQLite sources and a real Parquet lake."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa
import pytest
import yaml

import blocks
from blocks import ParquetStore
from blocks.base import ReadRequest
from blocks.homes.sqlite import SqliteHome
from hygge_core import faults
from tests.conftest import ledger_of, make_events_db, read_lake, run_flow
from tests.flow_helpers import (
    T0,
    assert_lake_equals_source,
    events_rows,
    failed_row,
    file_spec_for,
    spec_for,
    summary_row,
    ts,
)


def test_full_then_incremental_loads_exactly_the_source(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 1000))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)

    first = run_flow(spec)
    assert first.is_completed()
    assert summary_row(first, "events")["rows"] == 1000
    assert_lake_equals_source(lake, db)
    schema = pl.read_parquet_schema(next((lake / "events").glob("*.parquet")))
    assert schema["ts"] == pl.Datetime("us")
    assert schema["amount"] == pl.Decimal(10, 2)

    make_events_db(db, events_rows(1000, 250))
    second = run_flow(spec)
    assert summary_row(second, "events")["rows"] == 250
    assert summary_row(second, "events")["mode"] == "append"
    assert_lake_equals_source(lake, db)
    entry = ledger_of(spec)["events"]["watermark"]
    assert entry["column"] == "ts"
    assert entry["value"] == (T0 + dt.timedelta(seconds=1249 // 5)).isoformat()
    assert entry["boundary"] == sorted(str(i) for i in range(1245, 1250))


def test_rows_sharing_the_last_watermark_arrive_once(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", [(1, ts(0), "1", "a"), (2, ts(0), "2", "b")])
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    run_flow(spec)
    # a late row with the same second as the stored watermark, and one after it
    make_events_db(db, [(3, ts(0), "3", "c"), (4, ts(1), "4", "d")])
    state = run_flow(spec)
    assert summary_row(state, "events")["rows"] == 2
    assert read_lake(lake, "events").sort("id")["id"].to_list() == [1, 2, 3, 4]
    # and again at the new boundary
    make_events_db(db, [(5, ts(1), "5", "e")])
    state = run_flow(spec)
    assert summary_row(state, "events")["rows"] == 1
    assert_lake_equals_source(lake, db)
    assert ledger_of(spec)["events"]["watermark"]["boundary"] == ["4", "5"]


def test_boundary_without_keys_uses_row_hashes(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", [(1, ts(0), "1", "a"), (2, ts(0), "2", "b")])
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    spec["entities"][0]["watermark"] = {"column": "ts"}
    run_flow(spec)
    make_events_db(db, [(3, ts(0), "3", "c")])
    state = run_flow(spec)
    assert summary_row(state, "events")["rows"] == 1
    assert_lake_equals_source(lake, db)


def test_second_run_without_new_rows_changes_nothing(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 300))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    run_flow(spec)
    files_before = sorted(p.name for p in (lake / "events").iterdir())
    ledger_before = ledger_of(spec)["events"]

    state = run_flow(spec)
    row = summary_row(state, "events")
    assert state.is_completed()
    assert row["rows"] == 0
    assert row["watermark"] == ledger_before["watermark"]["value"]
    assert ledger_of(spec)["events"] == ledger_before
    assert sorted(p.name for p in (lake / "events").iterdir()) == files_before
    assert not (lake / "_staging").exists()


def test_full_drop_replaces_table_and_resets_watermark(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 500))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    run_flow(spec)
    make_events_db(db, events_rows(500, 100))
    run_flow(spec)
    assert len(list((lake / "events").glob("*.parquet"))) == 2
    con = sqlite3.connect(db)
    con.execute("DELETE FROM events WHERE id >= 400")  # the source shrank: only a full drop sees it
    con.commit()
    con.close()

    state = run_flow(spec, run_type="full_drop")
    assert summary_row(state, "events")["rows"] == 400
    assert summary_row(state, "events")["mode"] == "replace"
    assert len(list((lake / "events").glob("*.parquet"))) == 1
    assert_lake_equals_source(lake, db)
    assert (
        ledger_of(spec)["events"]["watermark"]["value"]
        == (T0 + dt.timedelta(seconds=79)).isoformat()
    )


def test_null_watermarks_load_fully_then_fail_or_skip(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(
        tmp_path / "src.sqlite", [(1, ts(0), "1", "a"), (2, None, "2", "b"), (3, None, "3", "c")]
    )
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    row = summary_row(run_flow(spec), "events")
    assert row["rows"] == 3  # a first load loads every row, NULL watermarks included
    assert "NULL" not in row["detail"]
    assert sorted(read_lake(lake, "events")["id"].to_list()) == [1, 2, 3]

    # incremental: the default `nulls: fail` fails the entity naming the count; nothing moves
    make_events_db(db, [(4, ts(1), "4", "d")])
    failed = failed_row(run_flow(spec), "events")
    assert failed["status"] == "FAILED"
    assert "2 rows have a NULL watermark column 'ts'" in failed["detail"]
    assert "watermark.nulls: skip" in failed["detail"]
    assert sorted(read_lake(lake, "events")["id"].to_list()) == [1, 2, 3]

    spec["entities"][0]["watermark"]["nulls"] = "skip"
    state = run_flow(spec)
    row = summary_row(state, "events")
    assert (row["status"], row["rows"]) == ("ok", 1)
    assert "2 NULL-watermark rows skipped" in row["detail"]
    assert sorted(read_lake(lake, "events")["id"].to_list()) == [1, 2, 3, 4]
    journal = pl.read_parquet(lake / "_journal" / "*.parquet").sort("started_at")
    assert journal["null_watermark_rows"].to_list() == [0, 0, 2]

    state = run_flow(spec, run_type="full_drop")  # a full drop loads every row again
    assert summary_row(state, "events")["rows"] == 4
    assert sorted(read_lake(lake, "events")["id"].to_list()) == [1, 2, 3, 4]


class SlowHome(SqliteHome):
    """A real SQLite Home that holds each read open a moment and records overlap."""

    _block_type_slug = "test-slow-sqlite-home"
    spec_type = "slow-sqlite"
    active: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        with SlowHome.lock:
            SlowHome.active += 1
            SlowHome.peak = max(SlowHome.peak, SlowHome.active)
        try:
            time.sleep(0.4)
            yield from super().read(request)
        finally:
            with SlowHome.lock:
                SlowHome.active -= 1


def test_entities_run_concurrently_within_the_bound(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(blocks.HOMES, "slow-sqlite", SlowHome)
    SlowHome.peak = 0
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 50))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, concurrency=2)
    spec["home"]["type"] = "slow-sqlite"
    spec["entities"] = [{"name": f"e{i}", "table": "events"} for i in range(6)]

    state = run_flow(spec)
    assert state.is_completed()
    assert SlowHome.peak == 2
    for i in range(6):
        assert read_lake(lake, f"e{i}").height == 50

    SlowHome.peak = 0
    run_flow(spec, concurrency=3)
    assert SlowHome.peak == 3


def test_one_failing_entity_does_not_stop_the_others(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 120))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    spec["entities"].append({"name": "ghost", "table": "no_such_table"})
    spec["entities"].append({"name": "copy", "table": "events"})

    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"1 of 3 entities failed: ghost") as info:
        state.result()
    assert "'no_such_table' does not exist" in str(info.value)
    summary = {r["entity"]: r for r in info.value.summary}
    assert summary["ghost"]["status"] == "FAILED"
    assert summary["events"]["rows"] == 120 and summary["copy"]["rows"] == 120
    assert set(ledger_of(spec)) == {"events", "copy"}
    assert not (lake / "ghost").exists()


def test_transient_failure_is_retried_without_duplicates(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 1000))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    # the first attempt drops its "connection" after staging three batches
    monkeypatch.setenv("HYGGE_FAULT", "stage.after_batch@3:transient")
    state = run_flow(spec)
    assert state.is_completed()
    assert_lake_equals_source(lake, db)
    assert len(list((lake / "events").glob("*.parquet"))) == 1
    assert not (lake / "_staging").exists()

    # an append of two files (291 + 209 rows) whose first attempt fails after publishing one
    make_events_db(db, events_rows(1000, 500))
    faults.reset()
    spec["entities"][0]["max_rows_per_file"] = 200
    monkeypatch.setenv("HYGGE_FAULT", "publish.between_files@1:transient")
    state = run_flow(spec)
    assert faults._hits["publish.between_files"] == 2  # failed once, then a clean retry
    assert summary_row(state, "events")["rows"] == 500
    assert_lake_equals_source(lake, db)
    assert len(list((lake / "events").glob("*.parquet"))) == 1 + 2


def test_bad_data_is_not_retried(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, retries=3)
    monkeypatch.setenv("HYGGE_FAULT", "move.after_read:raise")
    state = run_flow(spec)
    assert state.is_failed()
    assert faults._hits["move.after_read"] == 1  # one attempt: an injected bug is not transient
    assert not (lake / "events").exists()
    assert ledger_of(spec) == {}


class GrowingHome(SqliteHome):
    """A real SQLite Home whose source gains rows between the first and second attempt."""

    _block_type_slug = "test-growing-sqlite-home"
    spec_type = "growing-sqlite"
    reads: ClassVar[int] = 0

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        GrowingHome.reads += 1
        if GrowingHome.reads == 2:
            make_events_db(Path(self.path), events_rows(1000, 50))
        yield from super().read(request)


def test_replace_retried_after_its_swap_publishes_the_retry(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(blocks.HOMES, "growing-sqlite", GrowingHome)
    GrowingHome.reads = 0
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 1000))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    spec["home"]["type"] = "growing-sqlite"
    # the first attempt swaps its table in, then loses its connection before recording it
    monkeypatch.setenv("HYGGE_FAULT", "publish.before_mark@1:transient")
    state = run_flow(spec)
    assert state.is_completed()
    assert GrowingHome.reads == 2
    assert summary_row(state, "events")["rows"] == 1050
    assert_lake_equals_source(lake, db)
    entry = ledger_of(spec)["events"]
    files = [p.name for p in (lake / "events").glob("*.parquet")]
    assert files == [f"part-{entry['run_id']}-00000.parquet"]


def test_sqlite_column_null_for_a_whole_batch_then_text(tmp_path: Path, spec_name: str) -> None:
    # as after `ALTER TABLE ADD COLUMN`: the first batches hold only NULLs in the new column
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 300))
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE events ADD COLUMN note TEXT")
    con.execute("ALTER TABLE events ADD COLUMN score REAL")
    con.execute("UPDATE events SET note = 'late ✓', score = id WHERE id >= 250")
    con.commit()
    con.close()
    lake = tmp_path / "lake"
    state = run_flow(spec_for(spec_name, db, lake))  # batches of 97 rows
    assert summary_row(state, "events")["rows"] == 300
    got = read_lake(lake, "events").sort("id")
    assert got.schema["note"] == pl.String and got.schema["score"] == pl.Float64
    assert got["note"].to_list() == [None] * 250 + ["late ✓"] * 50
    assert got["score"].to_list() == [None] * 250 + [float(i) for i in range(250, 300)]


class _Counts:
    """How often one run plans each entity, asks its Store for data and lists its Home's files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import blocks.homes.parquet as parquet_home
        import flows.plan

        self.plans: Counter[str] = Counter()
        self.store_asks: Counter[str] = Counter()
        self.home_lists: Counter[str] = Counter()
        plan_entity, has_data = flows.plan.plan_entity, ParquetStore.has_data
        entity_files = parquet_home.entity_files

        def counted_plan(e: Any, *args: Any) -> Any:
            self.plans[e.name] += 1
            return plan_entity(e, *args)

        def counted_has_data(store: ParquetStore, entity: str) -> bool:
            self.store_asks[entity] += 1
            return has_data(store, entity)

        def counted_files(*args: Any) -> Any:
            self.home_lists[args[1].entity] += 1  # (base, request, suffixes)
            return entity_files(*args)

        monkeypatch.setattr(flows.plan, "plan_entity", counted_plan)
        monkeypatch.setattr(ParquetStore, "has_data", counted_has_data)
        monkeypatch.setattr(parquet_home, "entity_files", counted_files)

    def clear(self) -> None:
        for counter in (self.plans, self.store_asks, self.home_lists):
            counter.clear()


def test_a_run_plans_each_entity_once(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the command line's run (its preflight, then the flow run) of incremental file entities:
    # each is planned once, its Store asked once whether it has data, its files listed once
    # (to read them); the flow planned three times and asked the Store five times
    import flows.run
    from flows.cli import main

    monkeypatch.setattr(flows.run, "ECHO_SUMMARY", True)  # the command line turns it off
    src = tmp_path / "src"
    frame = pl.DataFrame({"id": range(20), "n": range(20)}, schema={"id": pl.Int64, "n": pl.Int64})
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        frame.slice(0, 10).write_parquet(src / name / "p0.parquet")
    wm = {"column": "n", "keys": ["id"]}
    spec = file_spec_for(
        spec_name,
        {"type": "parquet", "path": str(src)},
        tmp_path / "lake",
        [{"name": "a", "path": "a", "watermark": wm}, {"name": "b", "path": "b", "watermark": wm}],
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    counts = _Counts(monkeypatch)
    assert main(["run", "--spec", str(path)]) == 0  # the first load
    assert counts.plans == {"a": 1, "b": 1}
    assert counts.store_asks == {"a": 1, "b": 1}
    assert counts.home_lists == {"a": 1, "b": 1}

    frame.slice(10, 10).write_parquet(src / "a" / "p1.parquet")
    counts.clear()
    assert main(["run", "--spec", str(path)]) == 0
    ledger = ledger_of(spec)
    assert [(ledger[e]["mode"], ledger[e]["rows"]) for e in "ab"] == [
        ("append", 10),  # the new file's rows
        ("replace", 10),  # nothing new: the first load's entry stands
    ]
    assert counts.plans == {"a": 1, "b": 1}
    assert counts.store_asks == {"a": 1, "b": 1}
    assert counts.home_lists == {"a": 1, "b": 1}
    assert sorted(read_lake(tmp_path / "lake", "a")["id"].to_list()) == list(range(20))


def test_a_run_that_recovers_plans_once_after_recovery(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a published run whose ledger save failed is committed by the next run's recovery, and
    # that run then plans from the recovered watermark: once, with no replan
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    monkeypatch.setenv("HYGGE_FAULT", "flow.before_ledger:raise")
    assert run_flow(spec).is_failed()  # published, not in the ledger
    assert ledger_of(spec) == {}
    monkeypatch.delenv("HYGGE_FAULT")
    make_events_db(db, events_rows(100, 30))
    counts = _Counts(monkeypatch)
    state = run_flow(spec)
    assert state.is_completed()
    assert (summary_row(state, "events")["mode"], summary_row(state, "events")["rows"]) == (
        "append",
        30,
    )
    assert counts.plans == {"events": 1}
    assert counts.store_asks == {"events": 1}
    assert_lake_equals_source(lake, db)

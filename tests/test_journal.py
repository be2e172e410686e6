"""The run journal: a record per entity per run, in the Store, in the UI and on the terminal."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import yaml

from blocks import ParquetStore
from flows.journal import SCHEMA, JournalRecord, render_history, to_table
from flows.run import main
from hygge_core import faults
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import T0, events_rows, spec_for


def journal(lake: Path) -> pl.DataFrame:
    # the one call the README promises
    return pl.scan_parquet(lake / "_journal" / "*.parquet").sort("started_at", "entity").collect()


def test_journal_records_each_run_of_each_entity(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 1000))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    spec["entities"].append({"name": "copy", "table": "events"})
    before = dt.datetime.now(dt.UTC)
    assert run_flow(spec).is_completed()
    make_events_db(db, events_rows(1000, 250))
    assert run_flow(spec).is_completed()
    after = dt.datetime.now(dt.UTC)

    files = sorted((lake / "_journal").iterdir())
    assert [f.suffix for f in files] == [".parquet", ".parquet"]  # one per run, no leftovers
    df = journal(lake)
    assert df.height == 4
    assert df.schema == pl.Schema(pl.from_arrow(SCHEMA.empty_table()).schema)  # type: ignore[union-attr]
    events = df.filter(pl.col("entity") == "events").to_dicts()
    first, second = events
    assert [r["flow"] for r in events] == [spec_name, spec_name]
    assert [r["run_type"] for r in events] == ["incremental", "incremental"]
    assert [r["mode"] for r in events] == ["replace", "append"]
    assert [r["status"] for r in events] == ["ok", "ok"]
    assert [r["attempts"] for r in events] == [1, 1]
    assert [r["rows"] for r in events] == [1000, 250]
    assert [r["error"] for r in events] == [None, None]
    assert [f.stem for f in files] == [first["run_id"], second["run_id"]]
    # the published files and their bytes, exactly
    published = {p.name: p.stat().st_size for p in (lake / "events").glob("*.parquet")}
    assert sorted(first["files"] + second["files"]) == sorted(published)
    assert second["bytes"] == sum(published[f] for f in second["files"])
    # watermarks move from nothing to the first load's end to the second's
    last_first = (T0 + dt.timedelta(seconds=999 // 5)).isoformat()
    last_second = (T0 + dt.timedelta(seconds=1249 // 5)).isoformat()
    assert (first["watermark_before"], first["watermark_after"]) == (None, last_first)
    assert (second["watermark_before"], second["watermark_after"]) == (last_first, last_second)
    assert second["watermark_after"] == ledger_of(spec)["events"]["watermark"]["value"]
    assert first["watermark_column"] == "ts"
    for r in df.to_dicts():
        assert before <= r["started_at"] <= r["ended_at"] <= after
        assert r["seconds"] == pytest.approx((r["ended_at"] - r["started_at"]).total_seconds())
    copy = df.filter(pl.col("entity") == "copy")
    assert copy["mode"].to_list() == ["replace", "replace"]
    assert copy["watermark_column"].to_list() == [None, None]


def test_journal_records_failures_beside_successes(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    spec["entities"].append({"name": "ghost", "table": "no_such_table"})
    run_flow(spec)
    make_events_db(db, events_rows(100, 10))
    state = run_flow(spec)
    assert state.is_failed()

    df = journal(lake)
    ghost = df.filter(pl.col("entity") == "ghost").to_dicts()
    assert [r["status"] for r in ghost] == ["failed", "failed"]
    assert all("'no_such_table' does not exist" in r["error"] for r in ghost)
    assert [(r["rows"], r["bytes"], r["files"], r["attempts"]) for r in ghost] == [
        (0, 0, [], 1),
        (0, 0, [], 1),
    ]
    ok = df.filter(pl.col("entity") == "events")
    assert ok["status"].to_list() == ["ok", "ok"]
    assert ok["rows"].to_list() == [100, 10]
    # both entities of a run share its file
    assert df.group_by("run_id").len()["len"].to_list() == [2, 2]


def test_journal_counts_retries_and_failures_after_retries(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 500))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, retries=2)
    # the first attempt loses its "connection" after three batches; the second succeeds
    monkeypatch.setenv("HYGGE_FAULT", "stage.after_batch@3:transient")
    assert run_flow(spec).is_completed()

    # every attempt fails: three tries, then the entity fails and its watermark stays
    make_events_db(db, events_rows(500, 50))
    faults.reset()
    monkeypatch.setenv("HYGGE_FAULT", "move.after_read:transient")
    assert run_flow(spec).is_failed()

    first, second = journal(lake).to_dicts()
    assert (first["status"], first["attempts"], first["rows"]) == ("ok", 2, 500)
    assert (second["status"], second["attempts"], second["rows"]) == ("failed", 3, 0)
    assert "injected transient fault at move.after_read" in second["error"]
    assert second["watermark_before"] == second["watermark_after"] == first["watermark_after"]


def test_journal_artifact_and_history_command(
    tmp_path: Path, spec_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.artifacts import Artifact

    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 40))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    spec["entities"].append({"name": "copy", "table": "events"})
    run_flow(spec)
    make_events_db(db, events_rows(40, 7))
    run_flow(spec)

    artifact = Artifact.get("hygge-journal")
    assert artifact is not None
    rows = artifact.data if isinstance(artifact.data, list) else json.loads(str(artifact.data))
    assert {(r["entity"], r["rows"], r["status"]) for r in rows} == {
        ("events", 7, "ok"),
        ("copy", 47, "ok"),
    }

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert main(["--spec", str(path), "--history", "--entity", "events"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["started", "(UTC)", "entity", "run"]
    assert [[*line.split()[2:4], line.split()[6]] for line in lines[2:]] == [
        ["events", "incremental", "7"],  # newest first
        ["events", "incremental", "40"],
    ]
    assert main(["--spec", str(path), "--history", "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def record(run_id: str, entity: str, minute: int, **extra: Any) -> JournalRecord:
    at = dt.datetime(2024, 5, 1, 12, minute, tzinfo=dt.UTC)
    fields: dict[str, Any] = {
        "flow": "f",
        "entity": entity,
        "run_id": run_id,
        "run_type": "incremental",
        "mode": "append",
        "status": "ok",
        "started_at": at,
        "ended_at": at + dt.timedelta(seconds=3),
        **extra,
    }
    return JournalRecord(**fields)


def test_parquet_store_journal_one_file_per_run_never_touching_others(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path))
    assert store.read_journal() is None
    store.write_journal("r1", to_table([record("r1", "a", 1)]))
    first = (tmp_path / "_journal" / "r1.parquet").stat()
    store.write_journal("r2", to_table([record("r2", "a", 2)]))
    store.write_journal("r2", to_table([record("r2", "a", 2), record("r2", "b", 3)]))
    assert (tmp_path / "_journal" / "r1.parquet").stat().st_mtime_ns == first.st_mtime_ns
    assert sorted(p.name for p in (tmp_path / "_journal").iterdir()) == ["r1.parquet", "r2.parquet"]
    table = store.read_journal()
    assert table is not None
    assert table.schema == SCHEMA
    assert sorted(table.column("entity").to_pylist()) == ["a", "a", "b"]


def test_render_history_filters_and_orders() -> None:
    table = to_table(
        [
            record("r1", "a", 1, rows=5),
            record("r1", "b", 2, status="failed", error="boom\nwith detail"),
            record("r2", "a", 3, rows=1234, schema_change="added column c"),
            record("r2", "a", 4, flow="other"),
        ]
    )
    text = render_history([table], "f")
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [(r[2], r[3]) for r in rows] == [
        ("a", "incremental"),
        ("b", "incremental"),
        ("a", "incremental"),
    ]
    assert "1,234" in text and "added column c" in text and "boom with detail" in text
    assert len(render_history([table], "f", ["b"]).splitlines()) == 3
    assert render_history([table], "f", ["zzz"]) == "no journal records of zzz for 'f'"
    assert render_history([], "f") == "no journal yet for 'f': it is written by every run"
    # a file from an older version without some column still reads
    old = table.drop_columns(["schema_change"])
    assert "added column c" in render_history([old, table], "f")
    assert pa.concat_tables([old, table], promote_options="permissive").num_rows == 8

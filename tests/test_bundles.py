"""Many small entities: moved several to a Prefect task run, each with its own record and retries.

Real parts: a SQLite source of many tables, the local Parquet Store, the Prefect test server;
the task runs are read back from its API, as the UI shows them.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from hygge_core import faults
from tests.conftest import ledger_of, run_flow
from tests.flow_helpers import failed_row

TABLES = 40
ROWS = 50


def many_tables(path: Path) -> Path:
    con = sqlite3.connect(path)
    for t in range(TABLES):
        con.execute(f"CREATE TABLE t{t:02d} (id INTEGER PRIMARY KEY, label TEXT)")
        rows = [(i, f"t{t:02d}-{i}") for i in range(ROWS + t)]
        con.executemany(f"INSERT INTO t{t:02d} VALUES (?, ?)", rows)
    con.commit()
    con.close()
    return path


def many_spec(name: str, db: Path, lake: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "concurrency": 2,
        "retries": 2,
        "retry_delay_seconds": 0,
        "entities": [{"name": f"t{t:02d}", "table": f"t{t:02d}"} for t in range(TABLES)],
        **extra,
    }


def journal(lake: Path) -> dict[str, dict[str, Any]]:
    df = pl.read_parquet(lake / "_journal" / "*.parquet")
    assert df.height == TABLES  # one record per entity, bundled or not
    return {r["entity"]: r for r in df.to_dicts()}


def move_task_runs(state: Any) -> list[str]:
    """The names of the flow run's `move` task runs, once the server has recorded them all."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=run_filter, limit=200)
        names = sorted(r.name for r in runs if r.name.startswith("move ") and r.state_name)
        done = all(r.state is not None and r.state.is_final() for r in runs)
        if names and names == seen and done:
            return names
        seen = names
        time.sleep(1.0)
    return seen


def run_with_fault(
    tmp_path: Path,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    entity: str,
    **extra: Any,
) -> tuple[Any, Path, dict[str, Any]]:
    """Run the many-tables spec with a fault point armed in one entity's thread."""
    db = many_tables(tmp_path / "src.db")
    lake = tmp_path / "lake"
    faults.reset()
    monkeypatch.setenv("HYGGE_FAULT", fault)
    monkeypatch.setenv("HYGGE_FAULT_ENTITY", entity)
    spec = many_spec(name, db, lake, **extra)
    return run_flow(spec), lake, spec


def flow_run_logs(state: Any, containing: str) -> list[str]:
    """The flow run's own log lines with `containing`, once the server has them (logs are
    sent in batches, after the lines are written)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=flow_run), limit=200)
        lines = [log.message for log in logs if log.task_run_id is None]
        if any("summary" in line for line in lines) or time.monotonic() >= deadline:
            return [line for line in lines if containing in line]
        time.sleep(0.5)


def assert_lake_holds_every_table(lake: Path) -> None:
    for t in range(TABLES):
        got = pl.read_parquet(lake / f"t{t:02d}" / "*.parquet").sort("id")
        assert got["id"].to_list() == list(range(ROWS + t))
        assert got["label"][-1] == f"t{t:02d}-{ROWS + t - 1}"


def test_many_entities_share_task_runs_and_keep_a_record_and_watermark_each(
    tmp_path: Path, spec_name: str
) -> None:
    db = many_tables(tmp_path / "src.db")
    lake = tmp_path / "lake"
    state = run_flow(many_spec(spec_name, db, lake))
    assert state.is_completed(), state.message
    # forty plans in one line, not forty (the flow run's log, as the UI shows it)
    logged = flow_run_logs(state, "full reload")
    assert logged == [
        "40 entities: replace (no watermark: full reload): t00, t01, t02, t03, t04 and 35 more"
    ]
    assert_lake_holds_every_table(lake)
    ledger = ledger_of(many_spec(spec_name, db, lake))
    assert sorted(ledger) == [f"t{t:02d}" for t in range(TABLES)]
    assert [ledger[f"t{t:02d}"]["rows"] for t in range(TABLES)] == [ROWS + t for t in range(TABLES)]
    records = journal(lake)
    assert {(r["status"], r["attempts"]) for r in records.values()} == {("ok", 1)}
    assert [records[f"t{t:02d}"]["rows"] for t in range(TABLES)] == [
        ROWS + t for t in range(TABLES)
    ]
    runs = move_task_runs(state)
    bundles = [n for n in runs if " entities from " in n]
    # 40 entities, 2 workers: bundles of 5 and 4 ... while the queue is long, then one each
    assert bundles and len(runs) < TABLES
    assert "move 5 entities from t00" in bundles
    assert {n for n in runs if n not in bundles} <= {f"move t{t:02d}" for t in range(TABLES)}


def test_bundle_entities_false_gives_each_entity_its_own_task_run(
    tmp_path: Path, spec_name: str
) -> None:
    db = many_tables(tmp_path / "src.db")
    lake = tmp_path / "lake"
    state = run_flow(many_spec(spec_name, db, lake, bundle_entities=False))
    assert state.is_completed(), state.message
    assert move_task_runs(state) == [f"move t{t:02d}" for t in range(TABLES)]
    assert_lake_holds_every_table(lake)


def test_a_transient_failure_in_a_bundle_retries_that_entity_alone(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, lake, _ = run_with_fault(
        tmp_path, spec_name, monkeypatch, "move.after_read@1:transient", "t03"
    )
    assert state.is_completed(), state.message
    assert_lake_holds_every_table(lake)
    records = journal(lake)
    assert (records["t03"]["status"], records["t03"]["attempts"]) == ("ok", 2)
    assert {r["attempts"] for e, r in records.items() if e != "t03"} == {1}
    # the retry ran in a task run of its own; the bundle's other entities moved once
    assert "move t03" in move_task_runs(state)


def test_a_bad_entity_in_a_bundle_fails_alone_and_is_not_retried(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, lake, spec = run_with_fault(
        tmp_path, spec_name, monkeypatch, "move.after_read:raise", "t05"
    )
    assert state.is_failed()
    assert "1 of 40 entities failed: t05" in str(state.message)
    row = failed_row(state, "t05")
    assert row["status"] == "FAILED"
    records = journal(lake)
    assert (records["t05"]["status"], records["t05"]["attempts"]) == ("failed", 1)
    assert "injected fault at move.after_read" in records["t05"]["error"]
    assert sum(r["status"] == "ok" for r in records.values()) == TABLES - 1
    assert "t05" not in ledger_of(spec)
    assert not (lake / "t05").exists()


def test_a_bundle_out_of_time_hands_back_what_it_did_not_start(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first bundle's first entity takes longer than a bundle's time (BUNDLE_SECONDS)
    state, lake, _ = run_with_fault(
        tmp_path, spec_name, monkeypatch, "move.after_read:sleep2.5", "t00", concurrency=1
    )
    assert state.is_completed(), state.message
    assert_lake_holds_every_table(lake)
    runs = move_task_runs(state)
    # 40 entities, 1 worker: a bundle of 10 from t00 that moved only t00; t01 to t09 went
    # back to the front of the queue, and the next bundle began with t01
    assert "move 10 entities from t00" in runs
    assert "move 9 entities from t01" in runs
    # each record starts when its entity did, not when its first bundle was handed out
    records = journal(lake)
    assert (records["t01"]["started_at"] - records["t00"]["started_at"]).total_seconds() >= 2.5

"""Failures that are not crashes: the run reports them, and nothing committed moves."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ledger_of, make_events_db, read_lake, run_flow
from tests.flow_helpers import assert_lake_equals_source, events_rows, spec_for, summary_row


def lake_files(lake: Path) -> list[str]:
    return sorted(p.name for p in (lake / "events").glob("*.parquet"))


@pytest.mark.parametrize(
    ("point", "run_type"),
    [
        pytest.param("stage.after_batch@2", "incremental", id="mid-batch-append"),
        pytest.param("publish.after_prepare", "incremental", id="publish-prepared-append"),
        pytest.param("publish.between_files@1", "incremental", id="mid-publish-append"),
        pytest.param("stage.after_batch@2", "full_drop", id="mid-batch-replace"),
        pytest.param("publish.after_prepare", "full_drop", id="publish-prepared-replace"),
    ],
)
def test_exception_leaves_table_and_ledger_as_they_were(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch, point: str, run_type: str
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 600))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, run_type=run_type)
    spec["entities"][0]["max_rows_per_file"] = 200
    assert run_flow(spec).is_completed()
    files, ledger = lake_files(lake), ledger_of(spec)

    make_events_db(db, events_rows(600, 500))
    monkeypatch.setenv("HYGGE_FAULT", f"{point}:raise")
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match=f"injected fault at {point.split('@')[0]}"):
        state.result()
    assert lake_files(lake) == files
    assert read_lake(lake, "events").height == 600
    assert ledger_of(spec) == ledger
    assert not (lake / "_staging").exists()

    monkeypatch.delenv("HYGGE_FAULT")
    assert run_flow(spec).is_completed()
    assert_lake_equals_source(lake, db)


def test_failure_after_publish_before_ledger_save_is_committed_by_the_next_run(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 300))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    assert run_flow(spec).is_completed()
    before = ledger_of(spec)["events"]

    make_events_db(db, events_rows(300, 100))
    monkeypatch.setenv("HYGGE_FAULT", "flow.before_ledger:raise")
    state = run_flow(spec)
    assert state.is_failed()
    assert ledger_of(spec)["events"] == before  # the ledger did not move...
    assert read_lake(lake, "events").height == 400  # ...though the data is published

    monkeypatch.delenv("HYGGE_FAULT")
    state = run_flow(spec)
    assert state.is_completed()
    assert summary_row(state, "events")["rows"] == 0  # recovery committed it; nothing reloaded
    assert_lake_equals_source(lake, db)
    assert ledger_of(spec)["events"]["watermark"]["boundary"] == [str(i) for i in range(395, 400)]


def test_disk_full_while_staging_names_entity_and_keeps_everything(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 300))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, retries=2)
    assert run_flow(spec).is_completed()
    files, ledger = lake_files(lake), ledger_of(spec)
    make_events_db(db, events_rows(300, 100))
    monkeypatch.setenv("HYGGE_FAULT", "stage.after_batch:enospc")
    state = run_flow(spec)
    with pytest.raises(Exception, match=r"entity 'events': cannot write .*the disk is full"):
        state.result()
    assert lake_files(lake) == files and ledger_of(spec) == ledger


def test_full_drop_of_an_empty_source_publishes_an_empty_table_only_when_allowed(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 50))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    assert run_flow(spec).is_completed()
    con = sqlite3.connect(db)
    con.execute("DELETE FROM events")
    con.commit()
    con.close()
    refused = run_flow(spec, run_type="full_drop")
    with pytest.raises(Exception, match=r"the source returned no rows.*\(50 rows\)"):
        refused.result()
    assert read_lake(lake, "events").height == 50

    spec["entities"][0]["allow_empty"] = True
    state = run_flow(spec, run_type="full_drop")
    row: dict[str, Any] = summary_row(state, "events")
    assert row["rows"] == 0
    assert row["detail"] == "source is empty: published an empty table"
    table = read_lake(lake, "events")
    assert table.height == 0
    assert table.columns == ["id", "ts", "amount", "label"]

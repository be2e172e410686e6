"""Fabric's verdict in the run, and a full drop that waits on Fabric's monitor.

What is faked: Fabric's replication service. The tests write `Files/Monitoring/tables.json`
into the mirrored database on a real Azurite, in the shape the monitor reports (per table
status, errorCode, errorMessage, processedRows, lastUpdateTime), at the moments Fabric would;
everything hygge does with it (reading, waiting, reporting, failing) runs for real.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from blocks.stores._om_monitor import parse_tables
from tests.azurite import Azurite
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import events_rows, failed_row, summary_row
from tests.test_open_mirroring import ITEM, data_files, files, om_spec

MONITOR = f"{ITEM}/Files/Monitoring/tables.json"


def write_monitor(c: Any, *tables: dict[str, Any]) -> None:
    c.upload_blob(MONITOR, json.dumps({"tables": list(tables)}).encode(), overwrite=True)


def entry(status: str, rows: int = 0, when: str | None = None, **extra: Any) -> dict[str, Any]:
    now = when or dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "tableName": "events",
        "schemaName": "dbo",
        "status": status,
        "processedRows": rows,
        "lastUpdateTime": now,
        **extra,
    }


def later(c: Any, seconds: float, *tables: dict[str, Any]) -> threading.Thread:
    """Fabric processes the files a little after the run publishes them."""

    def act() -> None:
        time.sleep(seconds)
        write_monitor(c, *tables)

    thread = threading.Thread(target=act)
    thread.start()
    return thread


@pytest.fixture
def mirrored(azurite: Azurite, tmp_path: Path, spec_name: str) -> tuple[Any, dict[str, Any]]:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 300))
    spec = om_spec(spec_name, db, azurite, ws, verify_seconds=20)
    return azurite.container(ws), spec


def test_the_summary_shows_fabrics_verdict(mirrored: tuple[Any, dict[str, Any]]) -> None:
    c, spec = mirrored
    write_monitor(c)  # a new mirrored database: Fabric lists no table yet
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    thread = later(c, 2, entry("Running", 300, when=future))
    state = run_flow(spec)
    thread.join()
    assert state.is_completed()
    row = summary_row(state, "events")
    assert row["fabric"] == "Running (300 rows processed)"


def test_a_verdict_older_than_the_run_is_waited_for(mirrored: tuple[Any, dict[str, Any]]) -> None:
    c, spec = mirrored
    spec["store"]["verify_seconds"] = 3
    write_monitor(c, entry("Running", 12, when="2024-01-01T00:00:00Z"))
    started = time.monotonic()
    state = run_flow(spec)
    assert state.is_completed()  # still processing is not a failure
    assert time.monotonic() - started >= 3
    assert summary_row(state, "events")["fabric"] == (
        "processing (not settled within 3s): Running (12 rows processed)"
    )


def test_a_table_fabric_failed_fails_the_entity(mirrored: tuple[Any, dict[str, Any]]) -> None:
    c, spec = mirrored
    write_monitor(c)
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    thread = later(
        c,
        1,
        entry("Error", 0, when=future, errorCode="SchemaMismatch", errorMessage="column x"),
    )
    state = run_flow(spec)
    thread.join()
    row = failed_row(state, "events")
    assert row["fabric"] == "Error: SchemaMismatch column x (0 rows processed)"
    assert "Fabric did not replicate the table" in row["detail"]
    assert "the watermark moved with them" in row["detail"]
    assert "`hygge status --repair` sends the rejected file again" in row["detail"]
    # the data reached the landing zone: the watermark reflects what was published
    assert ledger_of(spec)["events"]["watermark"] is not None
    assert data_files(c, "events") == ["00000000000000000001.parquet"]


def test_warnings_are_reported_not_failed(mirrored: tuple[Any, dict[str, Any]]) -> None:
    c, spec = mirrored
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    write_monitor(c, entry("RunningWithWarning", 300, when=future, errorMessage="slow"))
    state = run_flow(spec)
    assert state.is_completed()
    assert (
        summary_row(state, "events")["fabric"]
        == "RunningWithWarning: error slow (300 rows processed)"
    )


def test_a_stopped_mirrored_database_is_reported_for_its_tables(
    mirrored: tuple[Any, dict[str, Any]],
) -> None:
    """Fabric's `replicator.json`: a stopped replicator processes no table, so its tables are
    reported as stopped (not as processing for `verify_seconds`)."""
    c, spec = mirrored
    write_monitor(c, entry("Running", 300))
    body = {"status": "Stopped", "errorCode": "CapacityPaused", "errorMessage": "paused"}
    c.upload_blob(f"{ITEM}/Files/Monitoring/replicator.json", json.dumps(body).encode())
    started = time.monotonic()
    state = run_flow(spec)
    assert state.is_completed(), state.message
    assert time.monotonic() - started < 20  # settled at once: nothing to wait for
    row = summary_row(state, "events")
    assert row["fabric"] == "mirrored database Stopped: CapacityPaused paused"


def test_no_monitor_means_unknown_and_no_wait(mirrored: tuple[Any, dict[str, Any]]) -> None:
    _, spec = mirrored
    started = time.monotonic()
    state = run_flow(spec)
    assert state.is_completed()
    assert summary_row(state, "events")["fabric"] == "unknown (no monitor to read)"
    assert time.monotonic() - started < 15  # no verify_seconds wait without a monitor


def test_a_full_drop_waits_until_fabric_drops_the_table(
    mirrored: tuple[Any, dict[str, Any]],
) -> None:
    c, spec = mirrored
    spec["store"]["verify_seconds"] = 0
    assert run_flow(spec).is_completed()
    write_monitor(c, entry("Running", 300))
    seen: dict[str, float] = {}

    def fabric() -> None:
        # Fabric notices the deleted folder a few seconds later and drops the table
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not files(c, "events"):
                seen["gone"] = time.monotonic()
                time.sleep(4)
                write_monitor(c)  # the table has left the mirrored database
                seen["dropped"] = time.monotonic()
                return
            time.sleep(0.1)

    thread = threading.Thread(target=fabric)
    thread.start()
    spec["store"]["drop_wait_seconds"] = 600  # the fallback: must not be what the run waits
    started = time.monotonic()
    state = run_flow(spec, run_type="full_drop")
    thread.join()
    assert state.is_completed(), state.message
    assert "dropped" in seen
    assert time.monotonic() - started < 120
    # published only after the table left the monitor, renumbered from 1
    assert data_files(c, "events") == ["00000000000000000001.parquet"]
    blob = c.get_blob_client(f"{ITEM}/Files/LandingZone/events/00000000000000000001.parquet")
    created = blob.get_blob_properties().creation_time.timestamp()
    assert created >= time.time() - (time.monotonic() - seen["dropped"]) - 1


def test_a_drop_that_fabric_never_finishes_stops_with_the_fix(
    mirrored: tuple[Any, dict[str, Any]],
) -> None:
    c, spec = mirrored
    spec["store"] |= {"verify_seconds": 0, "drop_timeout_seconds": 3}
    spec["retries"] = 0
    assert run_flow(spec).is_completed()
    write_monitor(c, entry("Running", 300))  # and it stays there
    state = run_flow(spec, run_type="full_drop")
    row = failed_row(state, "events")
    assert "Fabric still lists the table 3s after its folder was deleted" in row["detail"]
    assert "raise `drop_timeout_seconds`" in row["detail"]
    # Fabric catches up: the next run resumes the drop and publishes the staged table
    write_monitor(c)
    assert run_flow(spec).is_completed()
    assert data_files(c, "events") == ["00000000000000000001.parquet"]


def dropped(c: Any, spec: dict[str, Any]) -> None:
    """A full drop that Fabric follows at once: the table leaves the monitor, the drop publishes
    the new initial load, and the monitor has not yet listed the rebuilt table."""
    spec["store"]["verify_seconds"] = 0
    assert run_flow(spec).is_completed()
    write_monitor(c)  # Fabric has dropped the table as soon as its folder goes
    assert run_flow(spec, run_type="full_drop").is_completed()
    assert data_files(c, "events") == ["00000000000000000001.parquet"]
    make_events_db(Path(spec["home"]["path"]), events_rows(300, 40))


def test_incremental_files_wait_until_fabric_lists_the_rebuilt_table(
    mirrored: tuple[Any, dict[str, Any]],
) -> None:
    c, spec = mirrored
    dropped(c, spec)
    started = time.monotonic()
    back = later(c, 4, entry("Running", 300))  # Fabric rebuilds the table a little later
    state = run_flow(spec)
    back.join()
    assert state.is_completed(), state.message
    assert time.monotonic() - started >= 4  # the new rows waited for the table to reappear
    assert data_files(c, "events") == [f"{n:020d}.parquet" for n in (1, 2)]
    assert ledger_of(spec)["events"]["rows"] == 40


def test_a_rebuilt_table_fabric_never_lists_holds_the_next_run_with_the_fix(
    mirrored: tuple[Any, dict[str, Any]],
) -> None:
    c, spec = mirrored
    spec["store"]["drop_timeout_seconds"] = 2
    spec["retries"] = 0
    dropped(c, spec)
    time.sleep(2)
    state = run_flow(spec)
    row = failed_row(state, "events")
    assert "Fabric has not listed the table 2s after a full drop" in row["detail"]
    assert "raise `drop_timeout_seconds`" in row["detail"]
    assert data_files(c, "events") == ["00000000000000000001.parquet"]  # nothing of the run
    assert ledger_of(spec)["events"]["rows"] == 300
    write_monitor(c, entry("Running", 300))  # Fabric catches up: the next run goes on
    assert run_flow(spec).is_completed()
    assert data_files(c, "events") == [f"{n:020d}.parquet" for n in (1, 2)]
    assert ledger_of(spec)["events"]["rows"] == 40


def test_the_monitor_is_read_leniently() -> None:
    rest = {
        "data": [
            {
                "sourceSchemaName": "dbo",
                "sourceTableName": "Orders",
                "status": "Replicating",
                "metrics": {"processedRows": 7, "lastSyncDateTime": "2026-09-01T00:00:00Z"},
            }
        ]
    }
    (orders,) = parse_tables(json.dumps(rest).encode()) or []
    assert (orders.table, orders.verdict, orders.processed_rows) == ("Orders", "ok", 7)
    assert orders.updated_at == "2026-09-01T00:00:00Z"
    assert parse_tables(b"not json") is None
    assert parse_tables(None) is None
    assert parse_tables(b'{"tables": [{"status": "Running"}]}') == []  # no name: skipped


def test_hygge_status_prints_fabrics_view(
    mirrored: tuple[Any, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from flows.cli import main

    c, spec = mirrored
    spec["store"]["verify_seconds"] = 0
    spec["entities"].append({**spec["entities"][0], "name": "other", "table": "events"})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    write_monitor(c, entry("Running", 300))
    assert main(["status", "--spec", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["entity", "state", "fabric"]
    assert out[1].split(None, 2) == ["events", "ok", "Running (300 rows processed)"]
    assert out[2].split(None, 2) == ["other", "processing", "not yet in Fabric's monitor"]
    write_monitor(c, entry("Error", 0, errorCode="Stopped", errorMessage="type change"))
    assert main(["status", "--spec", str(path), "--entity", "events"]) == 1
    line = capsys.readouterr().out.splitlines()[1]
    assert line.split(None, 2) == [
        "events",
        "failed",
        "Error: Stopped type change (0 rows processed)",
    ]

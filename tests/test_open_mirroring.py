"""OpenMirroringStore against a real Azurite Blob emulator, file by file against the contract.

The contract is Microsoft's "Open mirroring landing zone requirements and formats"
(summarised in shared/README.md §3). What cannot run here is the Fabric replication service
itself: these tests check what it would read (layout, names, metadata, markers, schemas and
the order of operations), not what it does with it.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.azurite import Azurite
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import events_rows, summary_row

ITEM = "Shop.MountedRelationalDatabase"
LZ = f"{ITEM}/Files/LandingZone"


def container(az: Azurite, name: str) -> ContainerClient:
    return BlobServiceClient.from_connection_string(az.connection_string).get_container_client(name)


def om_spec(name: str, db: Path, az: Azurite, ws: str, **store: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {
            "type": "open_mirroring",
            "workspace": ws,
            "item": ITEM,
            "credentials": {"connection_string": az.connection_string},
            "drop_wait_seconds": 1,
            **store,
        },
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 97},
        "entities": [
            {
                "name": "events",
                "table": "events",
                "watermark": {"column": "ts", "keys": ["id"]},
                "key_columns": ["id"],
            }
        ],
    }


def files(c: ContainerClient, folder: str) -> list[str]:
    prefix = f"{LZ}/{folder}/"
    return sorted(b.name[len(prefix) :] for b in c.list_blobs(name_starts_with=prefix))


def read(c: ContainerClient, folder: str, name: str) -> pa.Table:
    return pq.read_table(io.BytesIO(c.download_blob(f"{LZ}/{folder}/{name}").readall()))


def data_files(c: ContainerClient, folder: str) -> list[str]:
    return [n for n in files(c, folder) if n.endswith(".parquet")]


def test_layout_follows_the_contract(azurite: Azurite, tmp_path: Path, spec_name: str) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 500))
    spec = om_spec(spec_name, db, azurite, ws, source_version="15.4")
    spec["entities"].append(
        {"name": "events_by_day", "table": "events", "key_columns": ["id"], "table_schema": "ops"}
    )
    state = run_flow(spec)
    assert state.is_completed(), state.message
    c = container(azurite, ws)

    partner = json.loads(c.download_blob(f"{LZ}/_partnerEvents.json").readall())
    assert partner == {
        "partnerName": "hygge",
        "sourceInfo": {"sourceType": "hygge", "sourceVersion": "15.4"},
    }
    assert files(c, "events") == ["00000000000000000001.parquet", "_metadata.json"]
    assert files(c, "ops.schema/events_by_day") == [
        "00000000000000000001.parquet",
        "_metadata.json",
    ]
    meta = json.loads(c.download_blob(f"{LZ}/events/_metadata.json").readall())
    assert meta == {"keyColumns": ["id"]}
    # nothing of hygge's own sits in the landing zone: its records live under Files/_hygge
    top = {b.name.split("/")[3] for b in c.list_blobs(name_starts_with=f"{LZ}/")}
    assert top == {"_partnerEvents.json", "events", "ops.schema"}
    assert any(b.name.startswith(f"{ITEM}/Files/_hygge/_manifests/") for b in c.list_blobs())

    first = read(c, "events", "00000000000000000001.parquet")
    assert first.schema.names[-1] == "__rowMarker__"
    assert first.schema.field("__rowMarker__").type == pa.int32()
    assert first.num_rows == 500
    assert set(first.column("__rowMarker__").to_pylist()) == {0}  # a new table: inserts
    assert first.column("id").to_pylist() == list(range(500))


def test_incremental_numbering_markers_and_stable_schema(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 300))
    spec = om_spec(spec_name, db, azurite, ws, max_rows_per_file=100)
    spec["defaults"]["batch_size"] = 50  # files roll between batches: 100 rows each
    assert run_flow(spec).is_completed()
    c = container(azurite, ws)
    assert data_files(c, "events") == [f"{i:020d}.parquet" for i in (1, 2, 3)]

    make_events_db(db, events_rows(300, 250))
    state = run_flow(spec)
    assert summary_row(state, "events")["rows"] == 250
    names = data_files(c, "events")
    assert names == [f"{i:020d}.parquet" for i in range(1, 7)]  # continuous: 4, 5, 6
    schemas = {read(c, "events", n).schema.remove_metadata() for n in names}
    assert len(schemas) == 1  # one Arrow schema across runs
    new = pa.concat_tables([read(c, "events", n) for n in names[3:]])
    assert set(new.column("__rowMarker__").to_pylist()) == {4}  # incremental: upserts
    # boundary ties: the rows sharing the last watermark are re-sent as upserts at most
    assert set(new.column("id").to_pylist()) == set(range(300, 550))

    # the service consumed files 1-5 and kept only the last one it processed
    for n in names[:-1]:
        c.delete_blob(f"{LZ}/events/{n}")
    make_events_db(db, events_rows(550, 10))
    assert run_flow(spec).is_completed()
    assert data_files(c, "events") == [f"{i:020d}.parquet" for i in (6, 7)]


def test_insert_marker_and_deletes_by_config(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    con = sqlite3.connect(tmp_path / "src.db")
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, seq INTEGER, gone BOOLEAN)")
    con.executemany("INSERT INTO customers VALUES (?,?,?)", [(i, i, 0) for i in range(20)])
    con.commit()
    spec = om_spec(spec_name, tmp_path / "src.db", azurite, ws, row_marker="insert")
    spec["entities"] = [
        {
            "name": "customers",
            "table": "customers",
            "watermark": {"column": "seq", "keys": ["id"]},
            "key_columns": ["id"],
            "delete_column": "gone",
        }
    ]
    assert run_flow(spec).is_completed()
    con.execute("UPDATE customers SET seq = seq + 100, gone = (id % 5 = 0) WHERE id >= 10")
    con.commit()
    con.close()
    assert run_flow(spec).is_completed()
    c = container(azurite, ws)
    second = read(c, "customers", "00000000000000000002.parquet")
    markers = dict(zip(second["id"].to_pylist(), second["__rowMarker__"].to_pylist(), strict=True))
    assert markers == {i: (2 if i % 5 == 0 else 0) for i in range(10, 20)}


def test_key_columns_are_required_and_cannot_change(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 50))
    spec = om_spec(spec_name, db, azurite, ws)
    del spec["entities"][0]["key_columns"]
    state = run_flow(spec)
    with pytest.raises(Exception, match=r"needs the table's key columns: set `key_columns"):
        state.result()

    spec["entities"][0]["key_columns"] = ["id"]
    assert run_flow(spec).is_completed()
    make_events_db(db, events_rows(50, 5))
    spec["entities"][0]["key_columns"] = ["id", "label"]
    state = run_flow(spec)
    with pytest.raises(Exception, match=r"keyColumns \['id'\] .* cannot change key columns"):
        state.result()
    c = container(azurite, ws)
    assert data_files(c, "events") == ["00000000000000000001.parquet"]  # nothing written
    assert json.loads(c.download_blob(f"{LZ}/events/_metadata.json").readall()) == {
        "keyColumns": ["id"]
    }


def test_a_type_change_is_refused_before_writing(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    """int32 -> int64 would stop Fabric replicating the table: refused, nothing written."""
    ws = azurite.new_container()
    src = tmp_path / "parts"
    src.mkdir()
    pl.DataFrame({"id": [1, 2], "n": [1, 2]}, schema={"id": pl.Int64, "n": pl.Int32}).write_parquet(
        src / "a.parquet"
    )
    spec = {
        "name": spec_name,
        "home": {"type": "parquet", "path": str(src)},
        "store": om_spec(spec_name, src, azurite, ws)["store"],
        "entities": [
            {
                "name": "nums",
                "path": "*.parquet",
                "watermark": {"column": "id"},
                "key_columns": ["id"],
                "schema": {"on_drift": "evolve"},
            }
        ],
    }
    assert run_flow(spec).is_completed()
    # the source is rewritten with a wider column
    (src / "a.parquet").unlink()
    pl.DataFrame(
        {"id": [1, 2, 3], "n": [1, 2, 3]}, schema={"id": pl.Int64, "n": pl.Int64}
    ).write_parquet(src / "b.parquet")
    state = run_flow(spec)
    with pytest.raises(Exception) as info:
        state.result()
    message = str(info.value)
    assert re.search(r"\bn\b.*int32.*int64", message), message
    assert "Fabric Open Mirroring stops replicating" in message and "--full-drop" in message
    assert data_files(container(azurite, ws), "nums") == ["00000000000000000001.parquet"]


def test_full_drop_stages_first_then_drops_then_renumbers(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 400))
    spec = om_spec(spec_name, db, azurite, ws, max_rows_per_file=150)
    spec["defaults"]["batch_size"] = 50
    assert run_flow(spec).is_completed()
    make_events_db(db, events_rows(400, 100))
    assert run_flow(spec).is_completed()
    c = container(azurite, ws)
    before = data_files(c, "events")
    assert before == [f"{i:020d}.parquet" for i in range(1, 5)]

    # extraction fails halfway: the existing table is untouched
    os.environ["HYGGE_FAULT"] = "stage.after_batch@3:raise"
    try:
        state = run_flow(spec, run_type="full_drop")
    finally:
        del os.environ["HYGGE_FAULT"]
    assert state.is_failed()
    assert data_files(c, "events") == before
    # staging done, failure before the drop: still untouched
    os.environ["HYGGE_FAULT"] = "publish.after_prepare:raise"
    try:
        state = run_flow(spec, run_type="full_drop")
    finally:
        del os.environ["HYGGE_FAULT"]
    assert state.is_failed()
    assert data_files(c, "events") == before

    # a real full_drop, watched while it waits: the folder is gone, the staged copy complete
    spec["store"]["drop_wait_seconds"] = 6
    seen: dict[str, Any] = {}

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "gone" not in seen:
            if not files(c, "events"):
                staged = [
                    b.name
                    for b in c.list_blobs(name_starts_with=f"{ITEM}/Files/_hygge/_staging/events/")
                ]
                seen["gone"] = time.monotonic()
                seen["staged_rows"] = sum(
                    pq.read_table(io.BytesIO(c.download_blob(n).readall())).num_rows for n in staged
                )
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    state = run_flow(spec, run_type="full_drop")
    done = time.monotonic()
    watcher.join()
    assert state.is_completed(), state.message
    assert seen["staged_rows"] == 500  # the whole new table was staged before the drop
    assert done - seen["gone"] >= 5  # and the run waited for Fabric before publishing
    after = data_files(c, "events")
    assert after == [f"{i:020d}.parquet" for i in range(1, 5)]  # fresh numbering from 1
    table = pa.concat_tables([read(c, "events", n) for n in after])
    assert sorted(table.column("id").to_pylist()) == list(range(500))
    assert set(table.column("__rowMarker__").to_pylist()) == {0}
    assert not list(c.list_blobs(name_starts_with=f"{ITEM}/Files/_hygge/_staging/"))
    assert ledger_of(spec)["events"]["watermark"]["value"] == "2024-05-01T12:01:39"


def test_the_wait_holds_no_concurrency_slot(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    """With one slot, an entity waiting for Fabric to drop its table lets the next one move."""
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 200))
    spec = om_spec(spec_name, db, azurite, ws, drop_wait_seconds=8)
    spec["concurrency"] = 1
    spec["entities"] = [
        {"name": "a", "table": "events", "key_columns": ["id"]},  # no watermark: replaced
        {"name": "b", "table": "events", "key_columns": ["id"], "drop_wait_seconds": 0},
    ]
    assert run_flow(spec).is_completed()  # first load: nothing to drop, no wait
    started = time.monotonic()
    assert run_flow(spec).is_completed()  # a's table is dropped: a waits 8 s, b moves meanwhile
    assert time.monotonic() - started < 8 + 20  # the waits did not add up
    c = container(azurite, ws)
    stamp = {
        n: c.get_blob_client(f"{LZ}/{n}/00000000000000000001.parquet")
        .get_blob_properties()
        .last_modified
        for n in ("a", "b")
    }
    # b (second in line, one slot) was published well before a, which waited 8 s
    assert (stamp["a"] - stamp["b"]).total_seconds() >= 6


def _cli(spec: Path, api_url: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api_url}
    env.pop("HYGGE_FAULT", None)
    if fault:
        env["HYGGE_FAULT"] = f"{fault}:kill"
    return subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "full_drop"),
    [("publish.between_files@1", False), ("publish.between_swap_renames", True)],
)
def test_kill_then_rerun_keeps_numbering_and_rows(
    azurite: Azurite,
    tmp_path: Path,
    spec_name: str,
    prefect_server: str,
    point: str,
    full_drop: bool,
) -> None:
    """SIGKILL mid-publish (incremental) or right after the drop (full_drop); the rerun
    finishes the interrupted run: numbering stays continuous, every row lands once."""
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 300))
    spec = om_spec(spec_name, db, azurite, ws, max_rows_per_file=100, lease_seconds=15)
    spec["defaults"]["batch_size"] = 50
    spec["lock_wait_seconds"] = 40
    spec["retries"] = 0
    if full_drop:
        spec["run_type"] = "full_drop"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert _cli(path, prefect_server).returncode == 0
    make_events_db(db, events_rows(300, 250))
    killed = _cli(path, prefect_server, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    rerun = _cli(path, prefect_server)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    c = container(azurite, ws)
    names = data_files(c, "events")
    numbers = [int(re.match(r"(\d{20})", n).group(1)) for n in names]  # type: ignore[union-attr]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # continuous
    table = pa.concat_tables([read(c, "events", n) for n in names])
    ids = table.column("id").to_pylist()
    if full_drop:
        # the kill came after the drop: the rerun's recovery published the staged table,
        # then the rerun (full_drop again) replaced it: one copy of every row, from 1
        assert numbers[0] == 1 and sorted(ids) == list(range(550))
    else:
        # the killed run's files were finished by recovery, so the rerun had nothing new
        assert sorted(set(ids)) == list(range(550))
        assert len(ids) == len(set(ids))
    assert ledger_of(spec)["events"]["watermark"]["value"] == "2024-05-01T12:01:49"

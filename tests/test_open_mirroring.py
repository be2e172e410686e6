"""OpenMirroringStore against a real Azurite Blob emulator, file by file against the contract.

The contract is Microsoft's "Open mirroring landing zone requirements and formats"
(summarised in shared/README.md §3). What cannot run here is the Fabric replication service
itself: these tests check what it would read (layout, names, metadata, markers, schemas and
the order of operations), not what it does with it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from azure.storage.blob import ContainerClient

from tests.azurite import Azurite
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import events_rows, run_cli, summary_row

ITEM = "Shop.MountedRelationalDatabase"
LZ = f"{ITEM}/Files/LandingZone"


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
    c = azurite.container(ws)

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
    # a new table is all inserts: no marker, so Fabric stages the file directly (2026-09)
    assert "__rowMarker__" not in first.schema.names
    assert first.num_rows == 500
    assert first.column("id").to_pylist() == list(range(500))
    # no non-key column is NOT NULL (Fabric's schema merge needs a dropped column nullable)
    assert [f.name for f in first.schema if not f.nullable] in ([], ["id"])


def test_incremental_numbering_markers_and_stable_schema(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 300))
    spec = om_spec(spec_name, db, azurite, ws, max_rows_per_file=100)
    spec["defaults"]["batch_size"] = 50  # files roll between batches: 100 rows each
    assert run_flow(spec).is_completed()
    c = azurite.container(ws)
    assert data_files(c, "events") == [f"{i:020d}.parquet" for i in (1, 2, 3)]

    make_events_db(db, events_rows(300, 250))
    state = run_flow(spec)
    assert summary_row(state, "events")["rows"] == 250
    names = data_files(c, "events")
    assert names == [f"{i:020d}.parquet" for i in range(1, 7)]  # continuous: 4, 5, 6
    schemas = [read(c, "events", n).schema.remove_metadata() for n in names]
    # one Arrow schema across runs; the first load's inserts carry no marker, the upserts do
    assert len({pa.schema([f for f in s if f.name != "__rowMarker__"]) for s in schemas}) == 1
    assert ["__rowMarker__" in s.names for s in schemas] == [False] * 3 + [True] * 3
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


#: a keyed entity whose `gone` column marks rows deleted at the source
CUSTOMERS = {
    "name": "customers",
    "table": "customers",
    "watermark": {"column": "seq", "keys": ["id"]},
    "key_columns": ["id"],
    "delete_column": "gone",
}


def test_insert_marker_and_deletes_by_config(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    con = sqlite3.connect(tmp_path / "src.db")
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, seq INTEGER, gone BOOLEAN)")
    con.executemany("INSERT INTO customers VALUES (?,?,?)", [(i, i, 0) for i in range(20)])
    con.commit()
    spec = om_spec(spec_name, tmp_path / "src.db", azurite, ws, row_marker="insert")
    spec["entities"] = [CUSTOMERS]
    assert run_flow(spec).is_completed()
    con.execute("UPDATE customers SET seq = seq + 100, gone = (id % 5 = 0) WHERE id >= 10")
    con.commit()
    con.close()
    assert run_flow(spec).is_completed()
    c = azurite.container(ws)
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
    c = azurite.container(ws)
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
    assert data_files(azurite.container(ws), "nums") == ["00000000000000000001.parquet"]


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
    c = azurite.container(ws)
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
    assert "__rowMarker__" not in table.schema.names  # a rebuilt table: inserts, unmarked
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
    c = azurite.container(ws)
    stamp = {
        n: c.get_blob_client(f"{LZ}/{n}/00000000000000000001.parquet")
        .get_blob_properties()
        .last_modified
        for n in ("a", "b")
    }
    # b (second in line, one slot) was published well before a, which waited 8 s
    assert (stamp["a"] - stamp["b"]).total_seconds() >= 6


def _manifests(c: ContainerClient, folder: str) -> list[dict[str, Any]]:
    prefix = f"{ITEM}/Files/_hygge/_manifests/{folder}/"
    return [
        json.loads(c.download_blob(b.name).readall()) for b in c.list_blobs(name_starts_with=prefix)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "full_drop", "consumed"),
    [
        ("publish.between_files@1", False, False),
        # killed before the run was marked published; Fabric then consumed all but the last
        # file: recovery must count the consumed ones as published, not start again from 1
        ("publish.before_mark", False, True),
        ("flow.before_ledger", False, False),
        ("publish.after_prepare", True, False),  # staged, not dropped: the table stands
        ("publish.between_swap_renames", True, False),  # dropped, the wait not yet recorded
        ("publish.between_files@1", True, False),  # killed while copying the new table in
    ],
)
def test_kill_then_rerun_keeps_numbering_and_rows(
    azurite: Azurite,
    tmp_path: Path,
    spec_name: str,
    prefect_server: str,
    point: str,
    full_drop: bool,
    consumed: bool,
) -> None:
    """SIGKILL mid-publish (incremental) or around the drop (full_drop); an ordinary
    incremental rerun finishes the interrupted run: numbering stays continuous, no number is
    reused, every row lands once, and a dropped table is republished only after the wait."""
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 300))
    spec = om_spec(
        spec_name, db, azurite, ws, max_rows_per_file=100, lease_seconds=15, drop_wait_seconds=3
    )
    spec["defaults"]["batch_size"] = 50
    spec["lock_wait_seconds"] = 40
    spec["retries"] = 0
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert run_cli(path, prefect_server).returncode == 0
    make_events_db(db, events_rows(300, 250))
    killed = run_cli(path, prefect_server, point, *(["--full-drop"] if full_drop else []))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    c = azurite.container(ws)
    if consumed:
        for name in data_files(c, "events")[:-1]:
            c.delete_blob(f"{LZ}/events/{name}")
    rerun = run_cli(path, prefect_server)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    names = data_files(c, "events")
    numbers = [int(re.match(r"(\d{20})", n).group(1)) for n in names]  # type: ignore[union-attr]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # continuous
    ids = pa.concat_tables([read(c, "events", n) for n in names], promote_options="default")[
        "id"
    ].to_pylist()
    assert len(ids) == len(set(ids))  # nothing doubled
    if consumed:
        assert numbers == [6] and ids == list(range(500, 550))  # nothing renumbered or resent
    else:
        assert numbers[0] == 1 and sorted(ids) == list(range(550))  # nothing lost
    if full_drop and point != "publish.after_prepare":
        # recovery published the staged table, and only after Fabric's wait
        [dropped] = [m for m in _manifests(c, "events") if m["extra"].get("had_table")]
        assert dropped["extra"]["had_table"] is True
        first = c.get_blob_client(f"{LZ}/events/{names[0]}").get_blob_properties()
        ready = dt.datetime.fromisoformat(dropped["extra"]["ready_at"])
        assert first.last_modified >= ready.replace(microsecond=0)
    assert ledger_of(spec)["events"]["watermark"]["value"] == "2024-05-01T12:01:49"


def test_a_transient_failure_mid_publish_keeps_visible_files(
    azurite: Azurite, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files Fabric may already have read are never deleted or renumbered: the entity is not
    retried in that run, and the next run finishes and commits them."""
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 100))
    spec = om_spec(spec_name, db, azurite, ws, max_rows_per_file=100)
    spec["defaults"]["batch_size"] = 50
    spec["retries"] = 2
    assert run_flow(spec).is_completed()
    make_events_db(db, events_rows(100, 250))
    monkeypatch.setenv("HYGGE_FAULT", "publish.between_files@1:transient")
    state = run_flow(spec)
    monkeypatch.delenv("HYGGE_FAULT")
    assert state.is_failed()
    with pytest.raises(Exception, match="next run finishes and commits them"):
        state.result()
    c = azurite.container(ws)
    # abort finished publishing what it could: files 2-4 stay, none deleted or repeated
    assert data_files(c, "events") == [f"{i:020d}.parquet" for i in (1, 2, 3, 4)]
    state = run_flow(spec)
    assert state.is_completed(), state.message
    assert summary_row(state, "events")["rows"] == 0  # recovery committed the run
    ids = (
        pa.concat_tables(
            [read(c, "events", n) for n in data_files(c, "events")], promote_options="default"
        )
        .column("id")
        .to_pylist()
    )
    assert sorted(ids) == list(range(350)) and len(ids) == 350


def test_the_writer_refuses_a_type_change_on_its_own(azurite: Azurite) -> None:
    """The landing zone's newest file is the reference, even without a ledger schema (an
    older ledger, another tool's files): int32 -> int64 is refused before any upload."""
    from blocks import OpenMirroringStore
    from hygge_core.errors import StoreError

    ws = azurite.new_container()
    store = OpenMirroringStore(
        workspace=ws,
        item=ITEM,
        credentials={"connection_string": azurite.connection_string},  # type: ignore[arg-type]
        key_columns=["id"],
    )
    first = store.open_writer("nums", "run-1", "append")
    first.write(
        pa.record_batch({"id": pa.array([1, 2], pa.int64()), "n": pa.array([1, 2], pa.int32())})
    )
    first.commit_files(None, 2)
    second = store.open_writer("nums", "run-2", "append")
    wider = pa.record_batch({"id": pa.array([3], pa.int64()), "n": pa.array([3], pa.int64())})
    with pytest.raises(StoreError, match=r"n: int32 -> int64.*Fabric would stop replicating"):
        second.write(wider)
    second.abort()
    c = azurite.container(ws)
    assert data_files(c, "nums") == ["00000000000000000001.parquet"]
    # the unchanged schema still appends, numbered after the refused attempt's nothing
    third = store.open_writer("nums", "run-3", "append")
    third.write(pa.record_batch({"id": pa.array([4], pa.int64()), "n": pa.array([4], pa.int32())}))
    third.commit_files(None, 1)
    assert data_files(c, "nums")[-1] == "00000000000000000002.parquet"


def test_rows_are_reconciled_and_a_rebuilt_tables_deletes_are_counted(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    """The staged files' own row counts are checked against the rows read before anything is
    published; rows a rebuilt table leaves out (its `delete_column` marks them) are counted as
    left out, and the journal keeps both figures."""
    from blocks import OpenMirroringStore

    ws = azurite.new_container()
    con = sqlite3.connect(tmp_path / "src.db")
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, seq INTEGER, gone BOOLEAN)")
    con.executemany("INSERT INTO customers VALUES (?,?,?)", [(i, i, i % 4 == 0) for i in range(20)])
    con.commit()
    con.close()
    spec = om_spec(spec_name, tmp_path / "src.db", azurite, ws)
    spec["entities"] = [CUSTOMERS]
    assert summary_row(run_flow(spec), "customers")["rows"] == 20
    c = azurite.container(ws)
    first = read(c, "customers", "00000000000000000001.parquet")
    assert sorted(first["id"].to_pylist()) == [i for i in range(20) if i % 4]  # 15 rows
    settings = {k: v for k, v in spec["store"].items() if k != "type"}
    store = OpenMirroringStore(**settings, key_columns=["id"], delete_column="gone")
    journal = store.read_journal()
    assert journal is not None
    assert journal.select(["rows_read", "rows_published"]).to_pylist() == [
        {"rows_read": 20, "rows_published": 15}
    ]
    # the writer's own view: rows per staged file, and what it left out
    writer = store.open_writer("other", "r1", "replace")
    writer.write(pa.record_batch({"id": [1, 2, 3], "gone": [True, False, None]}))
    assert writer.staged_rows() == {"part-r1-00000.parquet": 2}
    assert writer.left_out() == 1
    writer.abort()


def test_starting_sequence_continues_another_tools_numbering(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 100))
    spec = om_spec(spec_name, db, azurite, ws, starting_sequence=42, max_rows_per_file=60)
    assert run_flow(spec).is_completed()
    c = azurite.container(ws)
    assert data_files(c, "events") == [f"{i:020d}.parquet" for i in (42, 43)]
    make_events_db(db, events_rows(100, 10))
    assert run_flow(spec).is_completed()
    assert data_files(c, "events")[-1] == f"{44:020d}.parquet"  # then after the highest


def test_an_uncommitted_upload_is_never_listed(azurite: Azurite) -> None:
    """Why a block-list commit under the final name is as safe as upload-then-rename: until
    the commit, the name is not in a listing (the scanner's view), nor readable; after it, the
    whole file is. Shown on Azurite, whose Blob API behaves as Azure Storage's here; OneLake's
    scanner itself cannot run here (docs/crash-safety.md says so)."""
    ws = azurite.new_container()
    c = azurite.container(ws)
    name = f"{LZ}/t/00000000000000000001.parquet"
    blob = c.get_blob_client(name)
    blob.stage_block("YmxvY2sx", b"PAR1" + b"x" * 1024)
    assert [b.name for b in c.list_blobs(name_starts_with=f"{LZ}/t/")] == []
    assert not blob.exists()
    blob.commit_block_list(["YmxvY2sx"])
    assert [b.name for b in c.list_blobs(name_starts_with=f"{LZ}/t/")] == [name]
    assert blob.get_blob_properties().size == 1028

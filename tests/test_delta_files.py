"""Appends and overwrites commit the staged files where they lie (`_delta_files`): the `add`
statistics read from their footers, and the files of a run whose commit never came."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from blocks import DeltaStore
from hygge_core import faults

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


def stats(store: DeltaStore) -> dict[str, object]:
    actions = pa.table(DeltaTable(store.table_uri("t")).get_add_actions(flatten=True))
    assert actions.num_rows == 1
    return actions.to_pylist()[0]


def test_statistics_come_from_the_footer(tmp_path: Path) -> None:
    store = DeltaStore(path=str(tmp_path / "lake"))
    b = pa.record_batch(
        {
            "id": pa.array([7, -3, None, 12], pa.int64()),
            "v": pa.array(["b", None, "a'x", "é"], pa.string()),
            "ts": pa.array(
                [T0, None, T0 + dt.timedelta(microseconds=1500), T0 - dt.timedelta(microseconds=1)],
                pa.timestamp("us"),
            ),
            "f": pa.array([1.5, None, -2.0, 0.0], pa.float64()),
            "day": pa.array([dt.date(2024, 1, 2), dt.date(1999, 12, 31), None, None]),
            "ok": pa.array([True, False, None, True]),
        }
    )
    writer = store.open_writer("t", "r1", "replace")
    writer.write(b)
    writer.commit_files(None, 4)
    got = stats(store)
    assert got["num_records"] == 4
    assert (got["min.id"], got["max.id"], got["null_count.id"]) == (-3, 12, 1)
    assert (got["min.v"], got["max.v"], got["null_count.v"]) == ("a'x", "é", 1)
    assert (got["min.f"], got["max.f"]) == (-2.0, 1.5)
    assert (got["min.day"], got["max.day"]) == (dt.date(1999, 12, 31), dt.date(2024, 1, 2))
    # to the millisecond, outward: the bounds still hold every value of the file
    utc = dt.UTC
    assert got["min.ts"] == (T0 - dt.timedelta(milliseconds=1)).replace(tzinfo=utc)
    assert got["max.ts"] == (T0 + dt.timedelta(milliseconds=2)).replace(tzinfo=utc)
    assert got["null_count.ts"] == 1 and got["null_count.ok"] == 1
    assert "min.ok" not in got or got["min.ok"] is None  # booleans carry no bounds
    # and the table is one commit of that very file: nothing was encoded twice
    table = DeltaTable(store.table_uri("t"))
    assert table.version() == 0
    assert [Path(u).name for u in table.file_uris()] == ["part-r1-00000.parquet"]
    assert table.to_pyarrow_table().num_rows == 4
    # a reader prunes by them: a filter outside the range reads no file
    assert table.to_pyarrow_dataset().to_table(filter=pa.compute.field("id") > 12).num_rows == 0


def test_a_run_placed_but_never_committed_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeltaStore(path=str(tmp_path / "lake"))
    first = pa.record_batch({"id": pa.array([1], pa.int64())})
    writer = store.open_writer("t", "r1", "replace")
    writer.write(first)
    writer.commit_files(None, 1)
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
    writer = store.open_writer("t", "r2", "append")
    writer.write(pa.record_batch({"id": pa.array([2], pa.int64())}))
    with pytest.raises(faults.InjectedFault):
        writer.commit_files(None, 1)
    monkeypatch.delenv("HYGGE_FAULT")
    manifest = store.load_manifest("t", "r2")
    assert manifest is not None
    placed = store._place(manifest)  # the publish got as far as moving the files in
    assert all(p.exists() for p in placed)
    assert DeltaTable(store.table_uri("t")).to_pyarrow_table().num_rows == 1  # not visible
    writer.abort()  # the attempt gives up: the roll back removes what it placed
    assert not any(p.exists() for p in placed)
    assert store.load_manifest("t", "r2") is None
    assert sorted(p.name for p in Path(store.table_uri("t")).glob("*.parquet")) == [
        "part-r1-00000.parquet"
    ]


def test_a_run_stopped_between_its_moves_rolls_forward_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeltaStore(path=str(tmp_path / "lake"), max_rows_per_file=2)
    writer = store.open_writer("t", "r1", "replace")
    writer.write(pa.record_batch({"id": pa.array([0], pa.int64())}))
    writer.commit_files(None, 1)
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
    writer = store.open_writer("t", "r2", "append")
    for i in range(1, 6, 2):
        writer.write(pa.record_batch({"id": pa.array([i, i + 1], pa.int64())}))
    with pytest.raises(faults.InjectedFault):
        writer.commit_files(None, 6)
    monkeypatch.delenv("HYGGE_FAULT")
    manifest = store.load_manifest("t", "r2")
    assert manifest is not None and len(manifest.files) == 3
    # the process died after moving the first of its three files into the table folder
    first = manifest.files[0]
    os.replace(store.staging_dir("t", "r2") / first, Path(store.table_uri("t")) / first)
    assert store.staged_complete(manifest)
    assert [m.run_id for m in store.recover("t")] == ["r2"]
    table = DeltaTable(store.table_uri("t"))
    assert table.version() == 1
    assert sorted(table.to_pyarrow_table().column("id").to_pylist()) == list(range(7))
    # a repeated publish finds the commit and adds nothing
    store.publish(manifest)
    assert DeltaTable(store.table_uri("t")).version() == 1


def test_a_full_drop_to_naive_timestamps_raises_the_protocol_in_its_commit(
    tmp_path: Path,
) -> None:
    def replace(store: DeltaStore, run_id: str) -> None:
        writer = store.open_writer("t", run_id, "replace")
        writer.write(pa.record_batch({"ts": pa.array([T0], pa.timestamp("us"))}))
        writer.commit_files(None, 1)
        store.mark_committed("t", run_id)

    replace(DeltaStore(path=str(tmp_path / "lake")), "r1")  # UTC: no `timestampNtz` feature
    ntz = DeltaStore(path=str(tmp_path / "lake"), timestamp_ntz=True)
    replace(ntz, "r2")
    table = DeltaTable(ntz.table_uri("t"))
    assert table.version() == 1  # one commit: delta-rs rewrote the run and raised the protocol
    assert "timestampNtz" in (table.protocol().writer_features or [])
    assert table.to_pyarrow_table().column("ts").to_pylist() == [T0]
    # the run's own file, rewritten, is gone; the old version's stays for time travel
    names = sorted(p.name for p in Path(ntz.table_uri("t")).glob("*.parquet"))
    assert "part-r2-00000.parquet" not in names and "part-r1-00000.parquet" in names

"""Compaction and vacuum of Delta tables (`DeltaStore.maintain`, `hygge maintain`), on real
tables on local disk: files before and after, the rows unchanged, time travel as promised."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable

from blocks import DeltaStore
from blocks.stores import _delta_log
from flows.cli import main
from hygge_core import faults
from hygge_core.errors import ConfigError, StoreError

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


def batch(ids: range, label: str = "v") -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(list(ids), pa.int64()),
            "v": pa.array([f"{label}{i}" for i in ids], pa.string()),
            "ts": pa.array([T0 + dt.timedelta(seconds=i) for i in ids], pa.timestamp("us")),
        }
    )


def load(store: DeltaStore, run_id: str, mode: str, b: pa.RecordBatch) -> None:
    writer = store.open_writer("t", run_id, mode)  # type: ignore[arg-type]
    writer.write(b)
    writer.commit_files({"watermark": run_id}, b.num_rows)
    store.mark_committed("t", run_id)


def files(store: DeltaStore) -> list[str]:
    return sorted(p.name for p in Path(store.table_uri("t")).glob("*.parquet"))


def live(store: DeltaStore) -> int:
    return pa.table(DeltaTable(store.table_uri("t")).get_add_actions(flatten=True)).num_rows


def rows(store: DeltaStore) -> list[dict[str, Any]]:
    uri = store.table_uri("t")
    by_arrow = DeltaTable(uri).to_pyarrow_table().sort_by("id").to_pylist()
    by_polars = pl.read_delta(uri).sort("id").to_dicts()
    assert by_arrow == by_polars
    return by_polars


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    return DeltaStore(path=str(tmp_path / "lake"))  # no keys: incremental runs append


def test_compaction_keeps_rows_and_versions(store: DeltaStore) -> None:
    load(store, "r0", "replace", batch(range(0, 100)))
    for n in range(1, 5):
        load(store, f"r{n}", "append", batch(range(n * 100, n * 100 + 100)))
    before = rows(store)
    assert live(store) == 5
    upkeep = store.maintain("t", compact=True, vacuum=False)
    assert upkeep is not None
    assert (upkeep.files_before, upkeep.files_after, upkeep.rows) == (5, 1, 500)
    assert "compacted 5 files into 1 (5 -> 1 files, 500 rows, unchanged)" in upkeep.describe()
    assert rows(store) == before
    table = DeltaTable(store.table_uri("t"))
    assert table.history(1)[0]["operation"] == "OPTIMIZE"
    # nothing deleted: every earlier version still reads
    assert len(files(store)) == 6
    table.load_as_version(4)
    assert table.to_pyarrow_table().num_rows == 500
    # the run record survives the compaction: the next run takes the next number, once
    assert DeltaTable(store.table_uri("t")).transaction_version(_delta_log.APP_ID) == 5
    load(store, "r5", "append", batch(range(500, 510)))
    assert DeltaTable(store.table_uri("t")).transaction_version(_delta_log.APP_ID) == 6
    assert len(rows(store)) == 510


def test_vacuum_keeps_seven_days_unless_told(store: DeltaStore) -> None:
    load(store, "r0", "replace", batch(range(0, 50), "old"))
    load(store, "r1", "replace", batch(range(0, 60), "new"))
    assert len(files(store)) == 2  # the old version's file stays for time travel
    upkeep = store.maintain("t", compact=False, vacuum=True)
    assert upkeep is not None and upkeep.removed == [] and upkeep.retention_hours == 168
    with pytest.raises(ConfigError, match=r"retention of 1 h is shorter than .* 168 h"):
        store.maintain("t", compact=False, vacuum=True, retention_hours=1)
    assert len(files(store)) == 2


def test_vacuum_dry_run_lists_and_keeps_then_vacuum_removes(store: DeltaStore) -> None:
    load(store, "r0", "replace", batch(range(0, 50), "old"))
    old = files(store)
    load(store, "r1", "replace", batch(range(0, 60), "new"))
    dry = store.maintain(
        "t", compact=False, vacuum=True, retention_hours=0, allow_short_retention=True, dry_run=True
    )
    assert dry is not None and [Path(p).name for p in dry.removed] == old
    assert "vacuum would remove 1 expired files (retention 0 h)" in dry.describe()
    assert len(files(store)) == 2
    table = DeltaTable(store.table_uri("t"))
    table.load_as_version(0)
    assert table.to_pyarrow_table().num_rows == 50  # a dry run changed nothing
    done = store.maintain(
        "t", compact=False, vacuum=True, retention_hours=0, allow_short_retention=True
    )
    assert done is not None and len(done.removed) == 1
    assert files(store) != old and len(files(store)) == 1
    assert [r["v"] for r in rows(store)][:2] == ["new0", "new1"]
    # time travel to the vacuumed version fails: its file is gone
    table = DeltaTable(store.table_uri("t"))
    table.load_as_version(0)
    with pytest.raises(OSError, match=r"(?i)not found|no such file"):
        table.to_pyarrow_table()


def test_vacuum_never_touches_a_run_placed_for_its_commit(
    store: DeltaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(store, "r0", "replace", batch(range(0, 10)))
    # a run that died after it was prepared and its files were moved into the table folder
    monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
    writer = store.open_writer("t", "r1", "append")
    writer.write(batch(range(10, 20)))
    with pytest.raises(faults.InjectedFault):
        writer.commit_files({"watermark": "r1"}, 10)
    monkeypatch.delenv("HYGGE_FAULT")
    manifest = store.load_manifest("t", "r1")
    assert manifest is not None
    store._place(manifest)
    placed = set(files(store))
    store.maintain("t", compact=True, vacuum=True, retention_hours=0, allow_short_retention=True)
    assert placed <= set(files(store))  # compaction and vacuum left the uncommitted files
    assert [m.run_id for m in store.recover("t")] == ["r1"]
    assert [r["id"] for r in rows(store)] == list(range(20))


def test_maintenance_waits_for_no_run(store: DeltaStore) -> None:
    load(store, "r0", "replace", batch(range(0, 10)))
    with store.exclusive("a running run"), pytest.raises(StoreError, match="another hygge run"):
        store.maintain("t", compact=True, vacuum=False)
    assert (
        DeltaStore(path=str(Path(store.path) / "none")).maintain("t", compact=True, vacuum=False)
        is None
    )


def test_hygge_maintain_command(
    store: DeltaStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(store, "r0", "replace", batch(range(0, 10)))
    load(store, "r1", "append", batch(range(10, 20)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "upkeep",
                "home": {"type": "sqlite", "path": str(tmp_path / "s.sqlite")},
                "store": {"type": "delta", "path": store.path},
                "entities": [{"name": "t"}, {"name": "never_loaded"}],
            }
        ),
        encoding="utf-8",
    )
    assert main(["maintain", "--spec", str(spec), "--compact", "--vacuum"]) == 0
    out = capsys.readouterr().out
    assert "t: compacted 2 files into 1 (2 -> 1 files, 20 rows, unchanged)" in out
    assert "vacuum removed 0 expired files (retention 168 h)" in out
    assert "never_loaded: no Delta table yet" in out
    assert live(store) == 1
    assert main(["maintain", "--spec", str(spec)]) == 2
    assert "--compact, --vacuum, or both" in capsys.readouterr().err
    args = ["maintain", "--spec", str(spec), "--vacuum", "--retention-hours", "2"]
    assert main(args) == 2
    assert "--allow-short-retention" in capsys.readouterr().err


def test_optimize_every_compacts_after_every_nth_run(tmp_path: Path) -> None:
    store = DeltaStore(path=str(tmp_path / "lake"), optimize_every=3)
    load(store, "r1", "replace", batch(range(0, 10)))
    load(store, "r2", "append", batch(range(10, 20)))
    assert live(store) == 2
    load(store, "r3", "append", batch(range(20, 30)))  # the 3rd hygge commit: compacted after
    assert live(store) == 1
    table = DeltaTable(store.table_uri("t"))
    assert [h["operation"] for h in table.history(2)] == ["OPTIMIZE", "WRITE"]
    assert table.transaction_version(_delta_log.APP_ID) == 3
    load(store, "r4", "append", batch(range(30, 40)))
    assert live(store) == 2
    assert [r["id"] for r in rows(store)] == list(range(40))
    assert store.load_manifest("t", "r3") is not None  # the run itself was recorded as usual

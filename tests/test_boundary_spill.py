"""A large boundary set lives in the Store's state area; the ledger keeps its digest.

Real SQLite source, real local Parquet Store, real Prefect flow runs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks.stores.parquet import ParquetStore
from hygge_core.errors import LedgerError
from hygge_tasks import boundary_spill
from hygge_tasks.boundary_spill import INLINE_LIMIT, restore, spill
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import failed_row, summary_row

DAY = "2024-05-01"


def add_rows(db: Path, ids: range, day: str = DAY) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, day DATE, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?, 'x')", [(i, day) for i in ids])
    con.commit()
    con.close()


def spec(name: str, db: Path, lake: Path) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "entities": [
            {"name": "t", "table": "t", "watermark": {"column": "day", "keys": ["id"]}},
        ],
    }


def state_files(lake: Path) -> list[str]:
    folder = lake / "_state" / "t"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_large_tie_set_is_kept_beside_the_data(tmp_path: Path, spec_name: str) -> None:
    db, lake = tmp_path / "src.db", tmp_path / "lake"
    tied = INLINE_LIMIT * 2 + 500
    add_rows(db, range(tied))
    s = spec(spec_name, db, lake)
    assert summary_row(run_flow(s), "t")["rows"] == tied

    wm = ledger_of(s)["t"]["watermark"]
    assert wm["value"] == DAY and wm["boundary"] == []
    ref = wm["boundary_ref"]
    [name] = state_files(lake)
    assert ref["name"] == name and name.endswith(".boundary.parquet")
    data = (lake / "_state" / "t" / name).read_bytes()
    assert ref == {"name": name, "count": tied, "sha256": hashlib.sha256(data).hexdigest()}
    assert len(json.dumps(ledger_of(s)["t"])) < 2_000  # not 2,500 identities

    # more rows tied at the same day: only they load, and the set grows beside the data
    add_rows(db, range(tied, tied + 300))
    assert summary_row(run_flow(s), "t")["rows"] == 300
    ids = read_lake(lake, "t")["id"].to_list()
    assert sorted(ids) == list(range(tied + 300))  # each once
    assert ledger_of(s)["t"]["watermark"]["boundary_ref"]["count"] == tied + 300

    # nothing new: nothing loads, and the ledger still points at a set the Store holds
    assert summary_row(run_flow(s), "t")["rows"] == 0
    assert ledger_of(s)["t"]["watermark"]["boundary_ref"]["name"] in state_files(lake)
    assert len(read_lake(lake, "t")) == tied + 300


def test_a_missing_or_changed_set_fails_the_entity_and_loads_nothing(
    tmp_path: Path, spec_name: str
) -> None:
    db, lake = tmp_path / "src.db", tmp_path / "lake"
    add_rows(db, range(INLINE_LIMIT + 1))
    s = spec(spec_name, db, lake)
    assert summary_row(run_flow(s), "t")["rows"] == INLINE_LIMIT + 1
    [name] = state_files(lake)
    path = lake / "_state" / "t" / name
    published = sorted(p.name for p in (lake / "t").glob("*.parquet"))

    # another set with the same count: only the digest tells
    other = pa.table({"identity": pa.array([f"x{i}" for i in range(INLINE_LIMIT + 1)])})
    original = path.read_bytes()
    pq.write_table(other, path)
    row = failed_row(run_flow(s), "t")
    assert f"boundary set {name!r} is not the one the ledger recorded" in row["detail"]
    assert "--full-drop" in row["detail"]

    path.unlink()
    row = failed_row(run_flow(s), "t")
    assert f"{INLINE_LIMIT + 1:,} rows at the watermark" in row["detail"]
    assert "which is missing" in row["detail"]
    assert sorted(p.name for p in (lake / "t").glob("*.parquet")) == published

    path.write_bytes(original)  # put back: the next run is incremental again, nothing doubled
    add_rows(db, range(INLINE_LIMIT + 1, INLINE_LIMIT + 4))
    assert summary_row(run_flow(s), "t")["rows"] == 3
    assert sorted(read_lake(lake, "t")["id"].to_list()) == list(range(INLINE_LIMIT + 4))


def test_recovery_sweeps_sets_no_kept_manifest_names(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path / "lake"))
    wm = {"column": "day", "kind": "date", "value": DAY, "boundary": [str(i) for i in range(1500)]}
    for run_id in ["r1", "r2"]:
        writer = store.open_writer("t", run_id, "append")
        writer.write(pa.record_batch({"id": pa.array([1], pa.int64())}))
        entry = {"watermark": spill(store, "t", run_id, wm)}
        writer.commit_files(entry, 1)
        store.mark_committed("t", run_id)
    # an attempt that spilled its set, then died before its manifest was prepared
    spill(store, "t", "r3", wm)
    store.put_state("t", "notes", b"not a run's object: left alone")
    assert store.state_names("t") == [
        "notes",
        "r1.boundary.parquet",
        "r2.boundary.parquet",
        "r3.boundary.parquet",
    ]
    store.recover("t")
    assert store.state_names("t") == ["notes", "r1.boundary.parquet", "r2.boundary.parquet"]


def test_small_sets_stay_inline_and_restore_reads_back_exactly(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path / "lake"))
    small = {"column": "c", "kind": "int", "value": 5, "boundary": ["a", "b"]}
    assert spill(store, "t", "r1", small) is small
    assert store.state_names("t") == []
    identities = ["\\N", "", "a\x1fb", "ü" * 40, *(str(i) for i in range(INLINE_LIMIT))]
    large = {**small, "boundary": identities}
    spilled = spill(store, "t", "r1", large)
    assert spilled is not None and spilled["boundary"] == []
    assert restore(store, "t", spilled) == {**small, "boundary": sorted(identities)}


def test_a_store_without_a_state_area_keeps_the_set_inline() -> None:
    class Plain:  # not a PublishingStore
        pass

    large = {"boundary": [str(i) for i in range(INLINE_LIMIT + 1)]}
    assert spill(Plain(), "t", "r1", large) is large  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="which is missing"):
        ref = {"name": "r1.boundary.parquet", "count": 3, "sha256": "0"}
        boundary_spill.restore(Plain(), "t", {"boundary": [], "boundary_ref": ref})  # type: ignore[arg-type]

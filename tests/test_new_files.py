"""New files only (`incremental: files`): a folder that gets a new export every night.

Real CSV, JSON and Parquet files into a real Parquet lake, through whole flow runs: each run
loads only the files no run loaded, a changed file is refused (or reloaded on request), the
set survives a crash between publishing and the ledger, and a large set leaves the ledger.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.spec import parse_spec
from hygge_core.errors import ConfigError
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import failed_row, summary_row


def drop(folder: Path, name: str, ids: range) -> Path:
    path = folder / name
    pl.DataFrame({"id": list(ids), "label": [f"row {i}" for i in ids]}).write_csv(path)
    return path


@pytest.fixture
def nightly(tmp_path: Path, spec_name: str) -> tuple[Path, Path, dict[str, Any]]:
    folder = tmp_path / "exports"
    folder.mkdir()
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {"type": "csv", "path": str(folder)},
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "entities": [{"name": "orders", "path": "*.csv", "incremental": "files"}],
    }
    return folder, lake, spec


def lake_ids(lake: Path) -> list[int]:
    return sorted(read_lake(lake, "orders")["id"].to_list())


def test_each_run_loads_only_new_files(nightly: tuple[Path, Path, dict[str, Any]]) -> None:
    folder, lake, spec = nightly
    drop(folder, "2024-05-01.csv", range(0, 10))
    drop(folder, "2024-05-02.csv", range(10, 20))
    state = run_flow(spec)
    assert state.is_completed()
    assert lake_ids(lake) == list(range(20))
    assert summary_row(state, "orders")["mode"] == "replace"  # the first load
    loaded = ledger_of(spec)["orders"]["files"]["loaded"]
    assert [Path(p).name for p, _, _ in loaded] == ["2024-05-01.csv", "2024-05-02.csv"]

    drop(folder, "2024-05-03.csv", range(20, 25))
    state = run_flow(spec)
    assert state.is_completed()
    row = summary_row(state, "orders")
    assert (row["mode"], row["rows"]) == ("append", 5)  # the new file only
    assert lake_ids(lake) == list(range(25))

    state = run_flow(spec)  # nothing new: nothing moves
    assert summary_row(state, "orders")["detail"] == "no new rows"
    assert lake_ids(lake) == list(range(25))

    # a file removed from the folder leaves the set (it stays as large as the folder)
    (folder / "2024-05-01.csv").unlink()
    drop(folder, "2024-05-04.csv", range(25, 27))
    assert run_flow(spec).is_completed()
    loaded = ledger_of(spec)["orders"]["files"]["loaded"]
    assert [Path(p).name for p, _, _ in loaded] == [
        "2024-05-02.csv",
        "2024-05-03.csv",
        "2024-05-04.csv",
    ]
    assert lake_ids(lake) == list(range(27))


def test_a_changed_file_is_refused_or_reloaded(nightly: tuple[Path, Path, dict[str, Any]]) -> None:
    folder, lake, spec = nightly
    first = drop(folder, "a.csv", range(0, 10))
    assert run_flow(spec).is_completed()
    drop(folder, "a.csv", range(0, 12))  # rewritten in place with more rows
    os.utime(first, ns=(1, 1))
    row = failed_row(run_flow(spec), "orders")
    assert "1 file(s) changed since they were loaded" in row["detail"]
    assert "a.csv" in row["detail"] and "changed_files: reload" in row["detail"]
    assert lake_ids(lake) == list(range(10))  # nothing was loaded
    spec["entities"][0]["changed_files"] = "reload"
    state = run_flow(spec)
    assert state.is_completed()
    assert summary_row(state, "orders")["rows"] == 12  # read again, as asked
    assert run_flow(spec, run_type="full_drop").is_completed()
    assert lake_ids(lake) == list(range(12))


def test_the_set_moves_only_with_the_commit(
    nightly: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lake, spec = nightly
    drop(folder, "a.csv", range(0, 5))
    assert run_flow(spec).is_completed()
    drop(folder, "b.csv", range(5, 8))
    monkeypatch.setenv("HYGGE_FAULT", "flow.before_ledger:raise")
    assert run_flow(spec).is_failed()  # b.csv is published, the ledger does not know yet
    monkeypatch.delenv("HYGGE_FAULT")
    state = run_flow(spec)  # recovery commits b.csv's run from its manifest
    assert state.is_completed()
    assert summary_row(state, "orders")["detail"] == "no new rows"
    assert lake_ids(lake) == list(range(8))  # b.csv once


def test_a_large_set_is_kept_beside_the_data(
    nightly: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hygge_tasks import new_files

    monkeypatch.setattr(new_files, "INLINE_LIMIT", 2)
    folder, lake, spec = nightly
    for day in range(3):
        drop(folder, f"d{day}.csv", range(day * 10, day * 10 + 10))
    assert run_flow(spec).is_completed()
    ref = ledger_of(spec)["orders"]["files"]["ref"]
    assert ref["count"] == 3 and (lake / "_state" / "orders" / ref["name"]).exists()
    drop(folder, "d3.csv", range(30, 31))
    state = run_flow(spec)
    assert summary_row(state, "orders")["rows"] == 1
    # a damaged set is refused with the fix, and nothing moves
    ref = ledger_of(spec)["orders"]["files"]["ref"]
    (lake / "_state" / "orders" / ref["name"]).write_bytes(b"garbage")
    drop(folder, "d4.csv", range(31, 32))
    row = failed_row(run_flow(spec), "orders")
    assert "is not the one the ledger recorded" in row["detail"] and "--full-drop" in row["detail"]


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_json_and_parquet_folders_too(tmp_path: Path, spec_name: str, kind: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    lake = tmp_path / "lake"

    def put(name: str, ids: range) -> None:
        frame = pl.DataFrame({"id": list(ids)})
        if kind == "json":
            frame.write_ndjson(folder / f"{name}.ndjson")
        else:
            frame.write_parquet(folder / f"{name}.parquet")

    spec = {
        "name": spec_name,
        "home": {"type": kind, "path": str(folder)},
        "store": {"type": "parquet", "path": str(lake)},
        "entities": [{"name": "orders", "path": ".", "incremental": "files"}],
    }
    put("a", range(3))
    assert run_flow(spec).is_completed()
    put("b", range(3, 5))
    state = run_flow(spec)
    assert summary_row(state, "orders")["rows"] == 2
    assert lake_ids(lake) == list(range(5))


def test_files_or_a_watermark_and_only_for_file_homes(tmp_path: Path, spec_name: str) -> None:
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(tmp_path / "x.sqlite")},
        "store": {"type": "parquet", "path": str(tmp_path / "lake")},
        "entities": [
            {"name": "t", "table": "t", "incremental": "files", "watermark": {"column": "ts"}}
        ],
    }
    with pytest.raises(ConfigError, match="not both"):
        parse_spec(spec)
    import sqlite3

    con = sqlite3.connect(tmp_path / "x.sqlite")
    con.execute("CREATE TABLE t (id INTEGER)")
    con.commit()
    con.close()
    del spec["entities"][0]["watermark"]
    row = failed_row(run_flow(spec), "t")
    assert "which only file Homes (parquet, csv, json) have" in row["detail"]

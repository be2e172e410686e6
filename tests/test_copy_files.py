"""Parquet files nothing would change are copied into the Parquet Store byte for byte.

Real files through whole flow runs: the lake file is the source file (same bytes), checked by
its footer; anything that would change the rows (polish, columns, a filter, a watermark, a
Store with its own types, `reencode: always`) reads and re-encodes them instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import read_lake, run_flow
from tests.flow_helpers import summary_row


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        frame = pl.DataFrame({"id": range(i * 1000, (i + 1) * 1000), "v": [f"v{i}"] * 1000})
        frame.write_parquet(folder / f"part-{i}.parquet", compression="zstd")
    return folder


def spec_of(name: str, parts: Path, lake: Path, **entity: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "parquet", "path": str(parts)},
        "store": {"type": "parquet", "path": str(lake)},
        "entities": [{"name": "t", "path": ".", **entity}],
    }


def test_unchanged_files_are_copied_as_they_are(
    parts: Path, tmp_path: Path, spec_name: str
) -> None:
    lake = tmp_path / "lake"
    state = run_flow(spec_of(spec_name, parts, lake))
    assert state.is_completed()
    row = summary_row(state, "t")
    assert row["rows"] == 3000
    assert "copied as they are (3 source files, no re-encode)" in row["detail"]
    published = sorted((lake / "t").glob("*.parquet"))
    assert sorted(digest(p) for p in published) == sorted(
        digest(p) for p in parts.glob("*.parquet")
    )
    assert sorted(read_lake(lake, "t")["id"].to_list()) == list(range(3000))
    # the next full reload copies again, replacing the table in one swap
    assert run_flow(spec_of(spec_name, parts, lake)).is_completed()
    assert read_lake(lake, "t").height == 3000


@pytest.mark.parametrize(
    "entity",
    [
        {"reencode": "always"},
        {"polish": {"case": "PascalCase"}},
        {"columns": ["id"]},
        {"where": "id >= 0"},
        {"watermark": {"column": "id"}},
    ],
    ids=["reencode", "polish", "columns", "where", "watermark"],
)
def test_anything_that_changes_rows_re_encodes(
    parts: Path, tmp_path: Path, spec_name: str, entity: dict[str, Any]
) -> None:
    lake = tmp_path / "lake"
    state = run_flow(spec_of(spec_name, parts, lake, **entity))
    assert state.is_completed()
    assert "copied" not in summary_row(state, "t")["detail"]
    published = {digest(p) for p in (lake / "t").glob("*.parquet")}
    assert not published & {digest(p) for p in parts.glob("*.parquet")}
    assert read_lake(lake, "t").height == 3000


def test_files_of_different_schemas_are_read(parts: Path, tmp_path: Path, spec_name: str) -> None:
    pl.DataFrame({"id": [9999], "v": [1]}).write_parquet(parts / "part-9.parquet")
    state = run_flow(spec_of(spec_name, parts, tmp_path / "lake"))
    assert state.is_failed()  # the read names the file whose schema differs, as before
    with pytest.raises(Exception, match=r"part-9\.parquet"):
        state.result()


def test_new_files_only_copies_each_new_file(parts: Path, tmp_path: Path, spec_name: str) -> None:
    lake = tmp_path / "lake"
    spec = spec_of(spec_name, parts, lake, incremental="files")
    assert run_flow(spec).is_completed()
    new = pl.DataFrame({"id": range(3000, 3010), "v": ["v3"] * 10})
    new.write_parquet(parts / "part-3.parquet", compression="zstd")
    state = run_flow(spec)
    row = summary_row(state, "t")
    assert (row["mode"], row["rows"]) == ("append", 10)
    assert "copied as they are (1 source files" in row["detail"]
    assert digest(parts / "part-3.parquet") in {digest(p) for p in (lake / "t").glob("*.parquet")}


def test_a_delta_store_takes_its_own_types(parts: Path, tmp_path: Path, spec_name: str) -> None:
    spec = spec_of(spec_name, parts, tmp_path / "lake")
    spec["store"] = {"type": "delta", "path": str(tmp_path / "delta")}
    state = run_flow(spec)
    assert state.is_completed()
    assert "copied" not in summary_row(state, "t")["detail"]
    assert pl.read_delta(str(tmp_path / "delta" / "t")).height == 3000

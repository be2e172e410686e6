"""Bad and unusual inputs, end to end through the flow on real files.

Every failure must name the entity and the cause, fail only its own entity (the flow ends
Failed, the others commit), and leave what was committed before (lake files, ledger) intact.
Edge cases that are valid input (header only, one row, hundreds of columns, all-NULL columns)
must load exactly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hygge_core import faults
from hygge_core.errors import ConfigError, FlowError, StoreError
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import file_spec_for as spec_for
from tests.flow_helpers import write_parquet as write

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)
SCHEMA = {"id": pl.Int64, "ts": pl.Datetime("us"), "label": pl.String}
WATERMARK = {"column": "ts", "keys": ["id"]}


def rows(start: int, count: int) -> pl.DataFrame:
    ids = list(range(start, start + count))
    return pl.DataFrame(
        {
            "id": ids,
            "ts": [T0 + dt.timedelta(seconds=i) for i in ids],
            "label": [f"rad {i} ✓" for i in ids],
        },
        schema=SCHEMA,
    )


def failures(state: Any, expected: str) -> dict[str, dict[str, Any]]:
    """Assert the run failed with `expected` as the headline; return its summary by entity."""
    assert state.is_failed()
    with pytest.raises(FlowError, match=expected) as info:
        state.result()
    assert info.value.summary is not None
    return {r["entity"]: r for r in info.value.summary}


def assert_failed(summary: dict[str, dict[str, Any]], entity: str, *fragments: str) -> None:
    row = summary[entity]
    assert row["status"] == "FAILED", row
    assert row["detail"].startswith(f"entity {entity!r}: "), row["detail"]
    for fragment in fragments:
        assert fragment in row["detail"], f"{fragment!r} not in {row['detail']!r}"


def lake_files(lake: Path, entity: str) -> dict[str, bytes]:
    """Every published file of an entity, byte for byte."""
    return {p.name: p.read_bytes() for p in sorted((lake / entity).iterdir())}


def manifests(lake: Path, entity: str) -> list[str]:
    return sorted(p.name for p in (lake / "_manifests" / entity).glob("*.json"))


# -- sources that break between runs ---------------------------------------------------------


def test_broken_parquet_sources_fail_alone_and_lose_nothing(tmp_path: Path, spec_name: str) -> None:
    src = tmp_path / "src"
    write(rows(0, 20), src / "good.parquet")
    write(rows(0, 5), src / "gone.parquet")
    write(rows(0, 5), src / "gone_dir" / "part-0.parquet")
    write(rows(0, 5), src / "drops" / "a.parquet")
    write(rows(0, 5), src / "noise.parquet")
    write(rows(0, 5), src / "cut.parquet")
    write(rows(0, 5), src / "zero.parquet")
    write(rows(0, 5), src / "parts" / "part-0.parquet")
    # valid edge cases, loaded in both runs
    write(rows(41, 1), src / "one.parquet")
    wide = pl.DataFrame({f"c{j:03d}": [i * 1000 + j for i in range(3)] for j in range(320)})
    write(wide, src / "wide.parquet")
    nulls = pl.DataFrame(
        {"id": [1, 2, 3], "nothing": [None, None, None], "no_int": [None, None, None]},
        schema={"id": pl.Int64, "nothing": pl.Null, "no_int": pl.Int64},
    )
    write(nulls, src / "nulls.parquet")
    lake = tmp_path / "lake"
    broken = {
        "missing_file": "gone.parquet",
        "missing_dir": "gone_dir",
        "glob_none": "drops/*.parquet",
        "random_bytes": "noise.parquet",
        "truncated": "cut.parquet",
        "empty_file": "zero.parquet",
        "odd_part": "parts",
    }
    entities = [
        {"name": "good", "path": "good.parquet", "watermark": WATERMARK},
        *({"name": n, "path": p, "watermark": WATERMARK} for n, p in broken.items()),
        {"name": "one_row", "path": "one.parquet"},
        {"name": "wide", "path": "wide.parquet"},
        {"name": "nulls", "path": "nulls.parquet"},
    ]
    spec = spec_for(spec_name, {"type": "parquet", "path": str(src)}, lake, entities)
    first = run_flow(spec)
    assert first.is_completed()
    before = {n: lake_files(lake, n) for n in broken}
    ledger_before = ledger_of(spec)
    assert set(ledger_before) == {e["name"] for e in entities}

    (src / "gone.parquet").unlink()
    shutil.rmtree(src / "gone_dir")
    (src / "drops" / "a.parquet").unlink()
    (src / "noise.parquet").write_bytes(os.urandom(4096))
    real = write(rows(0, 5000), tmp_path / "whole.parquet").read_bytes()
    (src / "cut.parquet").write_bytes(real[: len(real) // 2])  # an interrupted copy
    (src / "zero.parquet").write_bytes(b"")
    write(rows(5, 5).with_columns(note=pl.lit("x")), src / "parts" / "part-1.parquet")
    write(rows(0, 30), src / "good.parquet")  # ten new rows

    second = run_flow(spec)
    summary = failures(
        second,
        r"^7 of 11 entities failed: missing_file \(entity 'missing_file': .*"
        r"empty_file \(entity 'empty_file': .*odd_part \(entity 'odd_part': ",
    )
    assert_failed(
        summary,
        "missing_file",
        f"{str(src / 'gone.parquet')!r} (the Home's `path` {str(src)!r} joined with "
        "'gone.parquet') does not exist: no such file or directory; check the entity's `path`",
    )
    assert_failed(
        summary, "missing_dir", f"{str(src / 'gone_dir')!r}", "does not exist: no such file"
    )
    assert_failed(
        summary,
        "glob_none",
        f"no file matches {str(src / 'drops' / '*.parquet')!r}",
        "check the entity's `path`",
    )
    for entity, name in (("random_bytes", "noise.parquet"), ("truncated", "cut.parquet")):
        assert_failed(
            summary,
            entity,
            f"file {str(src / name)!r} is not a readable Parquet file (",
            "); it is truncated, still being written, or not Parquet: write it again or remove it",
        )
    assert_failed(
        summary,
        "empty_file",
        f"file {str(src / 'zero.parquet')!r} is empty (0 bytes), not a Parquet file",
        "write it again or remove it",
    )
    assert_failed(
        summary,
        "odd_part",
        f"file {str(src / 'parts' / 'part-1.parquet')!r} does not share the schema of "
        f"{str(src / 'parts' / 'part-0.parquet')!r} (+note large_string); every file of an "
        "entity must have the same columns and types",
    )

    # the healthy entities ran and committed as usual
    assert summary["good"]["status"] == "ok" and summary["good"]["rows"] == 10
    assert_frame_equal(read_lake(lake, "good").sort("id"), rows(0, 30))
    assert (
        ledger_of(spec)["good"]["watermark"]["value"] == (T0 + dt.timedelta(seconds=29)).isoformat()
    )
    assert summary["one_row"]["rows"] == 1
    assert_frame_equal(read_lake(lake, "one_row"), rows(41, 1))
    assert summary["wide"]["rows"] == 3
    assert_frame_equal(read_lake(lake, "wide"), wide)
    assert summary["nulls"]["rows"] == 3
    assert_frame_equal(read_lake(lake, "nulls"), nulls)
    # and nothing the broken ones had committed is gone or changed
    for name in broken:
        assert lake_files(lake, name) == before[name], name
        assert ledger_of(spec)[name] == ledger_before[name], name
    assert not (lake / "_staging").exists()


def test_bad_csv_inputs_fail_alone_and_lose_nothing(tmp_path: Path, spec_name: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.csv").write_text("id,v\n1,a\n")
    mixed = ["id,v"] + [f"{i},{i * 3}" for i in range(150)]
    (src / "mixed.csv").write_text("\n".join(mixed) + "\n")
    (src / "names.csv").write_bytes(b"id,name\n1,Ada\n")
    (src / "header_only.csv").write_text("id,name,amount\n")
    (src / "one.csv").write_text("id,name,when\n7,solo,2024-05-01\n")
    wide_cols = [f"c{j:03d}" for j in range(310)]
    wide_rows = [[i * 1000 + j for j in range(310)] for i in range(4)]
    (src / "wide.csv").write_text(
        "\n".join([",".join(wide_cols), *(",".join(map(str, r)) for r in wide_rows)]) + "\n"
    )
    (src / "nulls.csv").write_text("id,note,score\n1,,\n2,,\n3,,\n")
    lake = tmp_path / "lake"
    entities = [
        {"name": "empty", "path": "empty.csv"},
        {"name": "mixed", "path": "mixed.csv", "infer_schema_length": 100},
        {"name": "names", "path": "names.csv"},
        {"name": "header_only", "path": "header_only.csv"},
        {"name": "one_row", "path": "one.csv"},
        {"name": "wide", "path": "wide.csv"},
        {"name": "nulls", "path": "nulls.csv", "schema_overrides": {"score": "Float64"}},
    ]
    spec = spec_for(spec_name, {"type": "csv", "path": str(src)}, lake, entities)
    first = run_flow(spec)
    assert first.is_completed()
    result = {r["entity"]: r for r in first.result()}
    # a header-only file is an empty table, not an error: published with its columns
    assert result["header_only"]["rows"] == 0
    assert result["header_only"]["detail"] == "source is empty: published an empty table"
    empty_table = read_lake(lake, "header_only")
    assert empty_table.height == 0
    assert empty_table.columns == ["id", "name", "amount"]
    assert result["one_row"]["rows"] == 1
    assert read_lake(lake, "one_row").rows() == [(7, "solo", dt.date(2024, 5, 1))]
    assert result["wide"]["rows"] == 4
    assert_frame_equal(
        read_lake(lake, "wide"), pl.DataFrame(wide_rows, schema=wide_cols, orient="row")
    )
    assert_frame_equal(
        read_lake(lake, "nulls"),
        pl.DataFrame(
            {"id": [1, 2, 3], "note": [None] * 3, "score": [None] * 3},
            schema={"id": pl.Int64, "note": pl.String, "score": pl.Float64},
        ),
    )
    broken = ("empty", "mixed", "names")
    before = {n: lake_files(lake, n) for n in broken}
    ledger_before = ledger_of(spec)

    (src / "empty.csv").write_bytes(b"")
    (src / "mixed.csv").write_text("\n".join([*mixed, "150,n/a"]) + "\n")  # past the window
    (src / "names.csv").write_bytes("id,name\n1,Ada\n2,Søren\n".encode("latin-1"))

    second = run_flow(spec)
    summary = failures(second, r"^3 of 7 entities failed: empty \(entity 'empty': ")
    assert_failed(
        summary,
        "empty",
        f"file {str(src / 'empty.csv')!r} is empty (0 bytes): a CSV needs at least a header line",
    )
    assert_failed(
        summary,
        "mixed",
        f"could not read {str(src / 'mixed.csv')!r}: ",
        # integer columns are cast by the engine (`blocks/homes/_csv_types.py`), which names the
        # column and the value that does not fit
        "`i64` failed in column 'v'",
        '["n/a"]',
        "raise `infer_schema_length`",
        "pin the column with `schema_overrides`",
    )
    assert_failed(
        summary,
        "names",
        f"could not read {str(src / 'names.csv')!r}: invalid utf-8 sequence",
        "set `encoding` (e.g. latin-1 or cp1252)",
    )
    for entity, want in (("header_only", 0), ("one_row", 1), ("wide", 4), ("nulls", 3)):
        assert (summary[entity]["status"], summary[entity]["rows"]) == ("ok", want), entity
    for name in broken:
        assert lake_files(lake, name) == before[name], name
        assert ledger_of(spec)[name] == ledger_before[name], name
    assert read_lake(lake, "names")["name"].to_list() == ["Ada"]
    assert not (lake / "_staging").exists()


# -- configuration ---------------------------------------------------------------------------


def test_unknown_block_name_fails_before_anything_moves(tmp_path: Path, spec_name: str) -> None:
    lake = tmp_path / "lake"
    spec = spec_for(
        spec_name, "sqlite-home/does-not-exist", lake, [{"name": "events", "table": "events"}]
    )
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=r"^home: no saved block 'sqlite-home/does-not-exist'"):
        state.result()
    assert not lake.exists()
    assert ledger_of(spec) == {}


# -- destinations that refuse writes ---------------------------------------------------------


@contextlib.contextmanager
def unwritable(lake: Path, entity: str) -> Iterator[tuple[str, ...]]:
    """Make the Store refuse one entity's writes; yields what the error must say.

    `chmod` does not stop root, so as root the table folder is made immutable
    (`chattr +i`); where that is unavailable, a file takes the place of the entity's
    staging folder, which no user can create files in either.
    """
    folder = lake / entity
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield (f"cannot move a staged file into {str(folder)!r}: permission denied",)
        finally:
            folder.chmod(0o755)
        return
    try:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        blocker = lake / "_staging" / entity
        blocker.parent.mkdir(exist_ok=True)
        blocker.write_text("")
        try:
            yield (f"{str(blocker)!r} is a file, not a directory",)
        finally:
            blocker.unlink()
        return
    try:
        yield (
            f"cannot move a staged file into {str(folder)!r}: permission denied",
            "give the user running hygge write access there",
        )
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True, capture_output=True)


def test_unwritable_table_folder_fails_that_entity_only(tmp_path: Path, spec_name: str) -> None:
    src = tmp_path / "src"
    write(rows(0, 50), src / "locked.parquet")
    write(rows(0, 50), src / "free.parquet")
    lake = tmp_path / "lake"
    entities = [
        {"name": n, "path": f"{n}.parquet", "watermark": WATERMARK} for n in ("locked", "free")
    ]
    spec = spec_for(spec_name, {"type": "parquet", "path": str(src)}, lake, entities)
    assert run_flow(spec).is_completed()
    before = lake_files(lake, "locked")
    ledger_before = ledger_of(spec)["locked"]
    manifests_before = manifests(lake, "locked")
    write(rows(0, 80), src / "locked.parquet")
    write(rows(0, 80), src / "free.parquet")

    with unwritable(lake, "locked") as expected:
        state = run_flow(spec)
    summary = failures(state, r"^1 of 2 entities failed: locked \(entity 'locked': cannot ")
    assert_failed(
        summary, "locked", *expected, "; the published table and the ledger are unchanged"
    )
    assert (summary["free"]["status"], summary["free"]["rows"]) == ("ok", 30)
    assert_frame_equal(read_lake(lake, "free").sort("id"), rows(0, 80))
    assert lake_files(lake, "locked") == before
    assert ledger_of(spec)["locked"] == ledger_before
    assert manifests(lake, "locked") == manifests_before
    assert not (lake / "_staging" / "locked").exists()

    # once the folder is writable again the entity catches up, each row exactly once
    state = run_flow(spec)
    assert state.is_completed()
    assert next(r for r in state.result() if r["entity"] == "locked")["rows"] == 30
    assert_frame_equal(read_lake(lake, "locked").sort("id"), rows(0, 80))


def test_store_path_that_is_a_file_fails_with_the_path_named(
    tmp_path: Path, spec_name: str
) -> None:
    src = write(rows(0, 10), tmp_path / "src" / "events.parquet")
    lake = tmp_path / "lake"
    lake.write_text("not a folder")  # e.g. `path:` pointing at a file by mistake
    entities = [{"name": n, "path": str(src)} for n in ("events", "copy")]
    spec = spec_for(spec_name, {"type": "parquet"}, lake, entities)
    state = run_flow(spec)
    # the whole Store is unusable, so the run stops before any entity starts
    assert state.is_failed()
    with pytest.raises(StoreError) as info:
        state.result()
    assert str(info.value) == (
        f"the Store's path {str(lake)!r} is a file, not a directory; point `path` at one"
    )
    assert lake.read_text() == "not a folder"
    assert ledger_of(spec) == {}


def test_disk_full_while_staging_keeps_the_published_table_and_ledger(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write(rows(0, 200), src / "full.parquet")
    write(rows(0, 200), src / "fine.parquet")
    lake = tmp_path / "lake"
    entities = [
        {"name": n, "path": f"{n}.parquet", "watermark": WATERMARK} for n in ("full", "fine")
    ]
    spec = spec_for(spec_name, {"type": "parquet", "path": str(src)}, lake, entities, retries=3)
    assert run_flow(spec).is_completed()
    before = lake_files(lake, "full")
    ledger_before = ledger_of(spec)["full"]
    manifests_before = manifests(lake, "full")
    write(rows(0, 500), src / "full.parquet")
    write(rows(0, 500), src / "fine.parquet")

    monkeypatch.setenv("HYGGE_FAULT", "stage.after_batch:enospc")
    monkeypatch.setenv("HYGGE_FAULT_ENTITY", "full")
    state = run_flow(spec)
    summary = failures(state, r"^1 of 2 entities failed: full \(entity 'full': cannot write")
    assert_failed(
        summary,
        "full",
        f"cannot write '{lake / '_staging' / 'full'!s}/",
        "the disk is full; the published table and the ledger are unchanged; "
        "free space there or point the Store's `path` elsewhere",
    )
    assert faults._hits["stage.after_batch"] == 1  # a full disk is not retried
    assert (summary["fine"]["status"], summary["fine"]["rows"]) == ("ok", 300)
    assert lake_files(lake, "full") == before
    assert ledger_of(spec)["full"] == ledger_before
    assert manifests(lake, "full") == manifests_before
    assert not (lake / "_staging" / "full").exists()

    monkeypatch.delenv("HYGGE_FAULT")
    state = run_flow(spec)
    assert state.is_completed()
    assert next(r for r in state.result() if r["entity"] == "full")["rows"] == 300
    assert_frame_equal(read_lake(lake, "full").sort("id"), rows(0, 500))

"""`deployments/example_json.yaml` as a user runs it: a folder of gzip NDJSON API responses,
flattened into the local lake, each day's file once, a broken line skipped and counted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from tests.test_azure_examples import run_spec


def day(folder: Path, name: str, first: int, broken: bool = False) -> None:
    lines = [
        json.dumps(
            {
                "id": i,
                "kind": "click" if i % 2 else "view",
                "customer": {"id": i % 7, "country": "DK"},
                "at": f"2026-11-0{1 + i // 100}T10:00:00",
            }
        )
        for i in range(first, first + 100)
    ]
    if broken:
        lines.insert(50, '{"id": 12345, "kind": ')  # a response cut short
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


@pytest.mark.slow
def test_example_json_flattens_each_days_responses_once(
    tmp_path: Path, prefect_server: str
) -> None:
    folder = tmp_path / "events"
    day(folder, "2026-11-01.ndjson.gz", 0)
    day(folder, "2026-11-02.ndjson.gz", 100, broken=True)
    env = {"HYGGE_JSON_DIR": str(folder), "HYGGE_LAKE": str(tmp_path / "lake")}
    done = run_spec("example_json.yaml", env, prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    # the cut-short line, counted and named under the summary table
    assert "object skipped (" in done.stdout and "2026-11-02.ndjson.gz line 51)" in done.stdout

    def lake() -> pl.DataFrame:
        return pl.read_parquet(sorted((tmp_path / "lake" / "events").glob("*.parquet")))

    got = lake().sort("id")
    assert got.columns == ["id", "kind", "customer__id", "customer__country", "at"]
    assert got["id"].to_list() == list(range(200))
    assert got["customer__id"].to_list() == [i % 7 for i in range(200)]
    day(folder, "2026-11-03.ndjson.gz", 200)
    done = run_spec("example_json.yaml", env, prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(lake()["id"].to_list()) == list(range(300))  # each day once

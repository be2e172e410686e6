"""Helpers shared by the flow tests: a growing SQLite `events` source and lake checks."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from tests.conftest import read_lake, source_events

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


def ts(seconds: int) -> str:
    return str(T0 + dt.timedelta(seconds=seconds))


def events_rows(start: int, count: int, per_second: int = 5) -> list[tuple[Any, ...]]:
    # `per_second` rows share each timestamp: the boundary is full of ties
    return [
        (i, ts(i // per_second), f"{i}.{i % 100:02d}", f"évènement {i} ✓")
        for i in range(start, start + count)
    ]


def spec_for(name: str, db: Path, lake: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 97},
        "entities": [
            {"name": "events", "table": "events", "watermark": {"column": "ts", "keys": ["id"]}}
        ],
        **extra,
    }


def assert_lake_equals_source(lake: Path, db: Path) -> None:
    got = read_lake(lake, "events").sort("id")
    want = source_events(db).sort("id")
    assert got["id"].to_list() == want["id"].to_list()
    assert got["ts"].dt.strftime("%Y-%m-%d %H:%M:%S").to_list() == want["ts"].to_list()
    assert got["amount"].cast(pl.String).to_list() == [
        str(Decimal(v).quantize(Decimal("0.01"))) for v in want["amount"].cast(pl.String)
    ]
    assert got["label"].to_list() == want["label"].to_list()


def summary_row(state: Any, entity: str) -> dict[str, Any]:
    return next(r for r in state.result() if r["entity"] == entity)


def failed_row(state: Any, entity: str) -> dict[str, Any]:
    """The summary row of an entity in a flow run that failed (the flow's error carries it)."""
    assert state.is_failed()
    try:
        state.result()
    except Exception as exc:
        return next(r for r in exc.summary if r["entity"] == entity)  # type: ignore[attr-defined]
    msg = "the flow run did not fail"
    raise AssertionError(msg)


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    return path


def file_spec_for(
    name: str, home: dict[str, Any] | str, lake: Path, entities: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A spec for a file Home (`home`) into a Parquet lake, with small batches."""
    return {
        "name": name,
        "home": home,
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 64},
        "entities": entities,
        **extra,
    }


def run_cli(
    spec: Path, api_url: str, fault: str | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m flows.run --spec SPEC` in its own process against a Prefect server; with
    `fault`, that process is SIGKILLed at the fault point (`hygge_core.faults`)."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    env.pop("HYGGE_FAULT", None)
    if fault:
        env["HYGGE_FAULT"] = f"{fault}:kill"
    return subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(spec), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

"""Shared fixtures: one real Prefect test server per session, and small real sources."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.testing.utilities import prefect_test_harness

from hygge_core import faults
from tests.azurite import azurite  # noqa: F401  (fixtures)
from tests.pg_server import pg, pg_schema  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True, scope="session")
def prefect_server() -> Iterator[str]:
    """A real (temporary, SQLite-backed) Prefect server for every flow run in the session."""
    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield str(PREFECT_API_URL.value())


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYGGE_FAULT", raising=False)
    monkeypatch.delenv("HYGGE_FAULT_ENTITY", raising=False)
    faults.reset()


@pytest.fixture
def spec_name() -> str:
    """A unique spec name, so each test has its own ledger block."""
    return f"t-{uuid.uuid4().hex[:12]}"


def run_flow(spec: dict[str, Any], **params: Any) -> Any:
    """Run the hygge flow in-process and return its final state (never raises)."""
    from flows.run import hygge

    return hygge(spec=spec, return_state=True, **params)


def ledger_of(spec: dict[str, Any]) -> dict[str, Any]:
    from blocks import WatermarkLedger
    from flows.spec import parse_spec

    return WatermarkLedger.load_or_new(parse_spec(spec).ledger_name).value


def read_lake(lake: Path, entity: str) -> pl.DataFrame:
    return pl.read_parquet(sorted((lake / entity).glob("*.parquet")))


def make_events_db(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    """A small `events` table: id, ts (DATETIME, second granularity), amount, label."""
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE IF NOT EXISTS events "
        "(id INTEGER PRIMARY KEY, ts DATETIME, amount DECIMAL(10,2), label TEXT)"
    )
    con.executemany("INSERT INTO events VALUES (?,?,?,?)", rows)
    con.commit()
    con.close()
    return path


def source_events(path: Path) -> pl.DataFrame:
    con = sqlite3.connect(path)
    out = con.execute("SELECT id, ts, amount, label FROM events WHERE ts IS NOT NULL").fetchall()
    con.close()
    return pl.DataFrame(out, schema=["id", "ts", "amount", "label"], orient="row")

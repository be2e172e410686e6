"""A Home's `concurrency_limit` holds across simultaneous flow runs (a Prefect global limit)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tests.conftest import make_events_db
from tests.flow_helpers import events_rows

HOLD = 3.0  # seconds each entity holds its slot (fault point `move.after_read:sleep3`)


def _start(spec: Path, api_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "HYGGE_FAULT": f"move.after_read:sleep{HOLD}"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.run", "--spec", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _two_runs_at_once(tmp: Path, api_url: str, home: dict[str, Any]) -> list[tuple[float, float]]:
    """Run two specs reading one Home into two lakes at once; when each entity ran (journal)."""
    tmp.mkdir(parents=True, exist_ok=True)
    procs, lakes = [], []
    for i in range(2):
        lake = tmp / f"lake{i}"
        spec = tmp / f"spec{i}.yaml"
        spec.write_text(
            yaml.safe_dump(
                {
                    "name": f"limit-{uuid.uuid4().hex[:8]}",
                    "home": home,
                    "store": {"type": "parquet", "path": str(lake)},
                    "entities": [{"name": "events", "table": "events"}],
                }
            ),
            encoding="utf-8",
        )
        procs.append(_start(spec, api_url))
        lakes.append(lake)
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    ends = []
    for lake in lakes:
        journal = pl.read_parquet(sorted((lake / "_journal").glob("*.parquet")))
        assert journal["status"].to_list() == ["ok"]
        ends.append((journal["started_at"][0].timestamp(), journal["ended_at"][0].timestamp()))
    return ends


def test_home_concurrency_limit_serialises_entities_across_flow_runs(
    tmp_path: Path, prefect_server: str
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    name = f"hygge-test-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [sys.executable, "-m", "prefect", "gcl", "create", name, "--limit", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr

    # without a limit the two entities hold their connections at the same time...
    # (their runs overlap: the later one starts before the earlier one ends)
    free = sorted(
        _two_runs_at_once(tmp_path / "free", prefect_server, {"type": "sqlite", "path": str(db)})
    )
    assert free[1][0] < free[0][1]
    # ...with a limit of 1, the second waits until the first has finished
    limited_home = {"type": "sqlite", "path": str(db), "concurrency_limit": name}
    limited = _two_runs_at_once(tmp_path / "limited", prefect_server, limited_home)
    assert abs(limited[0][1] - limited[1][1]) >= HOLD - 0.5


def test_missing_concurrency_limit_is_a_clear_error(tmp_path: Path, prefect_server: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 10))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": f"nolimit-{uuid.uuid4().hex[:8]}",
                "home": {"type": "sqlite", "path": str(db), "concurrency_limit": "no-such-limit"},
                "store": {"type": "parquet", "path": str(tmp_path / "lake")},
                "retries": 2,
                "entities": [{"name": "events", "table": "events"}],
            }
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(spec)],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "concurrency limit 'no-such-limit' does not exist on the Prefect server" in result.stderr
    assert "prefect gcl create no-such-limit --limit N" in result.stderr

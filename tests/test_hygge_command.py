"""The `hygge` console script as a user types it: init, run, history, selections, exit codes.

Real processes against the session's Prefect server; the project is the one `hygge init`
writes (a small SQLite shop), so what is checked is what a newcomer gets.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest

from blocks import WatermarkLedger

HYGGE = str(Path(sys.executable).parent / "hygge")  # installed by `pip install -e .`


def hygge(args: list[str], cwd: Path, api_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [HYGGE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def rows(lake: Path, entity: str) -> int:
    return int(pl.scan_parquet(lake / entity / "*.parquet").select(pl.len()).collect().item())


def summary_line(stdout: str, entity: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith(entity + " "))


def test_version_and_help() -> None:
    out = subprocess.run([HYGGE, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hygge 0.1.0"
    for command in ("run", "check", "history", "init", "server"):
        helped = subprocess.run([HYGGE, command, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0 and f"usage: hygge {command}" in helped.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh `hygge init` project; its folder names it, and so its ledger (unique per test)."""
    name = f"shop{uuid.uuid4().hex[:8]}"
    done = hygge(["init", name], tmp_path, None)
    assert done.returncode == 0, done.stderr
    return tmp_path / name


def test_init_then_run_works_straight_away_and_only_new_rows_move(
    project: Path, prefect_server: str
) -> None:
    first = hygge(["run"], project, prefect_server)
    assert first.returncode == 0, first.stderr
    assert "bundled example" not in first.stderr  # a project never runs the example
    assert first.stdout.count("entity ") == 1  # the summary, once
    assert " replace  500 " in summary_line(first.stdout, "orders")
    lake = project / "lake"
    assert (rows(lake, "orders"), rows(lake, "customers")) == (500, 200)
    assert not (project / "example_data").exists()

    # new orders at the source: the next run (from a subfolder) moves only those
    with sqlite3.connect(project / "data" / "shop.sqlite") as con:
        (last,) = con.execute("SELECT max(updated_at) FROM orders").fetchone()
        con.executemany(
            "INSERT INTO orders VALUES (?, 1, 1.5, 'new', ?)",
            [(10_001, "2025-01-01 00:00:00"), (10_002, "2025-01-01 00:00:00")],
        )
    assert last < "2025-01-01 00:00:00"
    second = hygge(["run"], project / "flows", prefect_server)
    assert second.returncode == 0, second.stderr
    assert " append   2 " in summary_line(second.stdout, "orders")
    assert rows(lake, "orders") == 502
    ledger = WatermarkLedger.load_or_new(f"hygge-ledger-{project.name}-shop").value
    assert ledger["orders"]["watermark"]["value"] == "2025-01-01T00:00:00"

    history = hygge(["history", "--entity", "shop.orders"], project, prefect_server)
    assert history.returncode == 0, history.stderr
    assert [ln.split()[2] for ln in history.stdout.splitlines()[2:]] == ["orders", "orders"]


def test_flow_and_entity_selection(project: Path, prefect_server: str) -> None:
    one = hygge(["run", "--entity", "shop.customers"], project, prefect_server)
    assert one.returncode == 0, one.stderr
    assert [ln.split()[0] for ln in one.stdout.splitlines()[2:]] == ["customers"]
    assert not (project / "lake" / "orders").exists()

    unknown = hygge(["run", "--flow", "nope"], project, prefect_server)
    assert unknown.returncode == 2
    assert f"no flow named 'nope' in project '{project.name}' (flows: shop)" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_typo_in_a_project_stops_before_anything_moves(project: Path) -> None:
    flow = project / "flows" / "shop" / "flow.yml"
    flow.write_text(flow.read_text().replace("batch_size:", "batch_sise:"))
    # no Prefect API at all: the mistake is found before one is needed
    done = hygge(["run"], project, "http://127.0.0.1:9/api")
    assert done.returncode == 2
    assert "batch_sise" in done.stderr and "batch_size" in done.stderr
    assert str(flow) in done.stderr
    assert not (project / "lake").exists()


def test_check_and_history_outside_a_project_need_a_spec(tmp_path: Path) -> None:
    for command in ("check", "history"):
        done = hygge([command, "--flow", "x"], tmp_path, "http://127.0.0.1:9/api")
        assert done.returncode == 2
        assert f"--flow needs a project: no hygge.yml in {tmp_path}" in done.stderr
    done = hygge(["check"], tmp_path, "http://127.0.0.1:9/api")
    assert done.returncode == 2 and "run `hygge init` to start a project" in done.stderr


def test_init_refuses_to_overwrite_a_project(project: Path) -> None:
    before = (project / "hygge.yml").read_text()
    again = hygge(["init", "."], project, None)
    assert again.returncode == 2
    assert "hygge.yml" in again.stderr
    assert (project / "hygge.yml").read_text() == before


def test_check_is_green_for_a_new_project_and_red_for_a_missing_table(
    project: Path, prefect_server: str
) -> None:
    green = hygge(["check"], project, prefect_server)
    assert green.returncode == 0, green.stdout + green.stderr
    assert green.stdout.splitlines()[-1] == "all 3 checks passed"
    assert not (project / "lake").exists()  # the probe leaves nothing behind

    entity = project / "flows" / "shop" / "entities" / "orders.yml"
    entity.write_text(entity.read_text().replace("table: orders", "table: orderz"))
    red = hygge(["check"], project, prefect_server)
    assert red.returncode == 1
    failed = [ln for ln in red.stdout.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and "orders: table 'orderz' does not exist" in failed[0]
    assert "check the entity's `table`" in failed[0]
    assert red.stdout.splitlines()[-1] == "1 of 3 checks failed"
    assert "Everything looks good" not in red.stdout


def test_a_missing_saved_block_is_a_configuration_error_before_any_flow_run(
    tmp_path: Path, prefect_server: str
) -> None:
    spec = tmp_path / "saved.yaml"
    spec.write_text(
        "name: saved_missing\n"
        "home: sqlite-home/nobody-saved-this\n"
        f"store: {{type: parquet, path: {tmp_path / 'lake'}}}\n"
        "entities: [{name: t, table: t}]\n"
    )
    done = hygge(["run", "--spec", str(spec)], tmp_path, prefect_server)
    assert done.returncode == 2
    assert "no saved block 'sqlite-home/nobody-saved-this'" in done.stderr
    assert "Traceback" not in done.stderr and "Flow run" not in done.stdout
    assert not (tmp_path / "lake").exists()

"""The command line a newcomer types: `python -m flows.run` on the bundled example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, api_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,  # the session's test server: no temporary server per call
        "HYGGE_EXAMPLE_DIR": str(cwd / "example_data"),
        "HYGGE_LAKE": str(cwd / "lake"),
        "PYTHONPATH": str(REPO),  # this checkout's code, whichever one `pip install -e` points at
    }
    return subprocess.run(
        [sys.executable, "-m", "flows.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def source_table(db: Path, table: str) -> pl.DataFrame:
    import adbc_driver_sqlite.dbapi as adbc

    with adbc.connect(str(db)) as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT * FROM {table}")
        return pl.from_arrow(cur.fetch_arrow_table())  # type: ignore[return-value]


def assert_matches_sqlite(got: pl.DataFrame, want: pl.DataFrame, table: str) -> None:
    """Rows in the same order, value by value: the Store has real types, so compare them as
    text against SQLite's own storage."""
    assert got.height == want.height, table
    for col in want.columns:
        g = got[col]
        if g.dtype == pl.Datetime:
            g = g.dt.strftime("%Y-%m-%d %H:%M:%S")
        elif g.dtype == pl.Boolean:
            g = g.cast(pl.Int64)
        elif g.dtype == pl.Date:
            g = g.cast(pl.String)
        expected = want[col].to_list()
        if isinstance(g.dtype, pl.Decimal):
            # SQLite holds DECIMAL(p,2) as REAL; the Store holds the exact 2-digit decimal
            g = g.cast(pl.String)
            expected = [f"{v:.2f}" for v in expected]
        assert g.to_list() == expected, f"{table}.{col}"


def lake_rows(lake: Path, table: str) -> int:
    return int(pl.scan_parquet(lake / table / "*.parquet").select(pl.len()).collect().item())


def test_example_runs_twice_and_the_lake_holds_exactly_the_source(
    tmp_path: Path, prefect_server: str
) -> None:
    dry = run_cli(["--dry-run"], tmp_path, prefect_server)
    assert dry.returncode == 0, dry.stderr
    assert "spec 'shop_to_lake': 4 entities" in dry.stdout
    assert "mode  replace (first load: no watermark yet)" in dry.stdout
    assert not (tmp_path / "lake").exists()  # a dry run moves nothing

    first = run_cli([], tmp_path, prefect_server)
    assert first.returncode == 0, first.stderr
    db = tmp_path / "example_data" / "shop.sqlite"
    lake = tmp_path / "lake"
    for table, key in [
        ("orders", ["order_id"]),
        ("order_lines", ["order_id", "line_no"]),
        ("customers", ["customer_id"]),
        ("products", ["product_id"]),
    ]:
        got = pl.read_parquet(sorted((lake / table).glob("*.parquet"))).sort(key)
        want = source_table(db, table).sort(key)
        assert_matches_sqlite(got, want, table)
    assert lake_rows(lake, "orders") == 1_000_000

    second = run_cli([], tmp_path, prefect_server)
    assert second.returncode == 0, second.stderr
    orders_line = next(line for line in second.stdout.splitlines() if line.startswith("orders "))
    assert orders_line.split()[2:4] == ["append", "0"]
    assert lake_rows(lake, "orders") == 1_000_000

    dry_again = run_cli(["--dry-run", "--entity", "orders"], tmp_path, prefect_server)
    assert "mode  append (incremental)" in dry_again.stdout
    assert "watermark now: updated_at = 2024-01-02T03:46:39" in dry_again.stdout


def test_cli_help_and_bad_spec(tmp_path: Path, prefect_server: str) -> None:
    helped = run_cli(["--help"], tmp_path, prefect_server)
    assert helped.returncode == 0
    options = ("--spec", "--entity", "--full-drop", "--incremental", "--concurrency", "--dry-run")
    for option in options:
        assert option in helped.stdout
    missing = run_cli(["--spec", "nope.yaml"], tmp_path, prefect_server)
    assert missing.returncode == 2
    assert "spec file 'nope.yaml' does not exist" in missing.stderr


def test_cli_exits_nonzero_when_an_entity_fails(tmp_path: Path, prefect_server: str) -> None:
    db = tmp_path / "one.sqlite"
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(10)])
    con.commit()
    con.close()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: cli-fail-{os.getpid()}\n"
        f"home: {{type: sqlite, path: {db}}}\n"
        f"store: {{type: parquet, path: {tmp_path / 'lake'}}}\n"
        "retries: 0\n"
        "entities:\n  - {name: good, table: t}\n  - {name: bad, table: missing}\n",
        encoding="utf-8",
    )
    result = run_cli(["--spec", str(spec)], tmp_path, prefect_server)
    assert result.returncode == 1
    assert "1 of 2 entities failed: bad" in result.stderr
    assert "table 'missing' does not exist" in result.stderr
    assert pl.read_parquet(sorted((tmp_path / "lake" / "good").glob("*.parquet"))).height == 10
    # the failure is said once, as one line with its cause, then in the summary: no traceback
    assert result.stderr.count("bad: failed: entity 'bad':") == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "Finished in state Failed" not in result.stderr
    # --verbose prints Prefect's own records too (the run logs always keep them)
    verbose = run_cli(["--spec", str(spec), "--verbose"], tmp_path, prefect_server)
    assert verbose.returncode == 1
    assert "Finished in state Failed" in verbose.stderr
    assert "Traceback" in verbose.stderr

    # a transient failure that is retried says so in one line, without its traceback
    spec.write_text(spec.read_text().replace("retries: 0", "retries: 1\nretry_delay_seconds: 0"))
    retried = subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(spec), "--entity", "good"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PREFECT_API_URL": prefect_server,
            "PYTHONPATH": str(REPO),
            "HYGGE_FAULT": "stage.after_batch@1:transient",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert retried.returncode == 0, retried.stderr
    assert "Retry 1/" in retried.stderr
    assert "Traceback" not in retried.stderr

"""Deployments end to end on a real Prefect server and process worker, all on 127.0.0.1.

`prefect server start`, `prefect deploy --all` from this repository's prefect.yaml, a process
worker, saved blocks, and `prefect deployment run --watch` exactly as the README tells a user.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped together, children included
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # a worker needs a second signal to stop promptly; SIGKILL the group after a grace period
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server (temporary PREFECT_HOME) and a process worker polling it."""
    home = tmp_path_factory.mktemp("prefect-home")
    work = tmp_path_factory.mktemp("deploy-data")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # where the example's spec puts its database and lake (see deployments/example.yaml)
        "HYGGE_EXAMPLE_DIR": str(work / "example_data"),
        "HYGGE_LAKE": str(work / "lake"),
        "WORK": str(work),
    }
    srv = _start(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        home / "server.log",
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or srv.poll() is not None:
                    log = (home / "server.log").read_text(errors="replace")
                    pytest.fail(f"the Prefect server did not start:\n{log[-3000:]}")
                time.sleep(0.5)
        cli(env, "work-pool", "create", "local-proc", "--type", "process")
        deployed = cli(env, "--no-prompt", "deploy", "--all")
        assert "hygge/shop-example-blocks" in deployed, deployed
        worker = _start(
            [*PREFECT, "worker", "start", "--pool", "local-proc"], env, home / "worker.log"
        )
        yield env
    finally:
        if worker is not None:
            _stop(worker)
        _stop(srv)


def cli(env: dict[str, str], *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [*PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, (
            f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout + result.stderr


def run_deployment(
    env: dict[str, str], name: str, *params: str
) -> subprocess.CompletedProcess[str]:
    args = [*PREFECT, "deployment", "run", name, "--watch", "--watch-timeout", "240"]
    for p in params:
        args += ["--param", p]
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def in_server(env: dict[str, str], code: str) -> str:
    """Run Python against the test server (saving blocks, reading the ledger)."""
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_deployment_runs_full_then_incremental_on_a_worker(server: dict[str, str]) -> None:
    work = Path(server["WORK"])
    db = work / "shop.sqlite"
    lake = work / "saved-lake"
    in_server(
        server,
        f"""
from flows.example import write_example
from blocks import SqliteHome, ParquetStore
write_example(__import__('pathlib').Path({str(db)!r}), 20_000)
SqliteHome(path={str(db)!r}).save('hygge-example-shop', overwrite=True)
ParquetStore(path={str(lake)!r}).save('hygge-example-lake', overwrite=True)
""",
    )
    first = run_deployment(server, "hygge/shop-example-blocks")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Completed" in first.stdout
    assert pl.read_parquet(sorted((lake / "orders").glob("*.parquet"))).height == 20_000

    # new and changed rows at the source; the next run on the worker continues from the ledger
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO orders SELECT order_id + 20000, customer_id, status, amount, "
        "discount, note, order_date, '2030-01-01 00:00:00' FROM orders WHERE order_id <= 10"
    )
    con.execute(
        "UPDATE orders SET status = 'refunded', updated_at = '2030-01-01 00:00:00' "
        "WHERE order_id <= 5"
    )
    con.commit()
    con.close()
    second = run_deployment(server, "hygge/shop-example-blocks", "concurrency=2")
    assert second.returncode == 0, second.stdout + second.stderr
    orders = pl.read_parquet(sorted((lake / "orders").glob("*.parquet")))
    assert orders.height == 20_000 + 15  # appended: 5 changed rows (as new versions) + 10 new
    assert orders.filter(pl.col("status") == "refunded").height == 5
    ledger = json.loads(
        in_server(
            server,
            """
import json
from blocks import WatermarkLedger
print(json.dumps(WatermarkLedger.load('hygge-ledger-shop-to-lake-blocks').value))
""",
        )
    )
    assert ledger["orders"]["watermark"]["value"] == "2030-01-01T00:00:00"
    assert ledger["orders"]["watermark"]["boundary"] == sorted(
        [str(i) for i in range(1, 6)] + [str(i) for i in range(20_001, 20_011)]
    )


def test_deployment_with_a_failing_entity_fails_the_run(server: dict[str, str]) -> None:
    work = Path(server["WORK"])
    bad = work / "bad.yaml"
    bad.write_text(
        "name: failing\n"
        f"home: {{type: sqlite, path: {work / 'shop.sqlite'}}}\n"
        f"store: {{type: parquet, path: {work / 'bad-lake'}}}\n"
        "retries: 0\n"
        "entities:\n  - {name: products, table: products}\n  - {name: ghost, table: ghost}\n",
        encoding="utf-8",
    )
    result = run_deployment(server, "hygge/shop-example", f"spec={bad}")
    assert result.returncode != 0
    assert "Failed" in result.stdout + result.stderr
    # the healthy entity still landed
    assert pl.read_parquet(sorted((work / "bad-lake" / "products").glob("*.parquet"))).height == 500

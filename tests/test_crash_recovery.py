"""Kill a real run with SIGKILL at many points, run again, and demand the exact source.

Each kill is a real `python -m flows.run` process killed by a fault point (see
`hygge_tasks/faults.py`) or by the test after a random delay. The rerun must leave the lake
holding exactly the source rows (no row missing, none doubled, values equal) and the ledger
at the source's maximum watermark.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from tests.conftest import ledger_of

KILLED = -signal.SIGKILL


class Scenario:
    """A SQLite source that grows between runs, a Parquet lake and the CLI that moves it."""

    def __init__(self, tmp: Path, name: str, api_url: str, run_type: str) -> None:
        self.db = tmp / "src.sqlite"
        self.lake = tmp / "lake"
        self.api_url = api_url
        self.next_id = 0
        self.spec_dict: dict[str, Any] = {
            "name": name,
            "home": {"type": "sqlite", "path": str(self.db)},
            "store": {"type": "parquet", "path": str(self.lake), "max_rows_per_file": 5000},
            "run_type": run_type,
            "retries": 0,
            "defaults": {"batch_size": 2000},
            "entities": [
                {"name": "events", "table": "events", "watermark": {"column": "ts", "keys": ["id"]}}
            ],
        }
        import yaml

        self.spec = tmp / "spec.yaml"
        self.spec.write_text(yaml.safe_dump(self.spec_dict), encoding="utf-8")
        con = sqlite3.connect(self.db)
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts DATETIME, v REAL, s TEXT)")
        con.close()

    def grow(self, rows: int) -> None:
        # 7 rows per second of timestamp: every run ends inside a run of ties
        start = self.next_id
        data = [
            (
                i,
                f"2024-01-01 {i // 7 // 3600:02d}:{i // 7 // 60 % 60:02d}:{i // 7 % 60:02d}",
                i * 0.25,
                f"row {i} ✓",
            )
            for i in range(start, start + rows)
        ]
        con = sqlite3.connect(self.db)
        con.executemany("INSERT INTO events VALUES (?,?,?,?)", data)
        con.commit()
        con.close()
        self.next_id += rows

    def start(self, fault: str | None = None, extra_env: dict[str, str] | None = None) -> Any:
        """Start `python -m flows.run` on the spec; `fault` names a point to SIGKILL it at."""
        env = {**os.environ, "PREFECT_API_URL": self.api_url, **(extra_env or {})}
        env.pop("HYGGE_FAULT", None)
        if fault:
            env["HYGGE_FAULT"] = f"{fault}:kill"
        return subprocess.Popen(
            [sys.executable, "-m", "flows.run", "--spec", str(self.spec)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(
        self,
        fault: str | None = None,
        kill_after: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> int:
        proc = self.start(fault, extra_env)
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
        self.last_output = out
        return int(proc.returncode)

    def assert_exact(self, context: str) -> None:
        con = sqlite3.connect(self.db)
        want = con.execute("SELECT id, ts, v, s FROM events ORDER BY id").fetchall()
        con.close()
        files = sorted((self.lake / "events").glob("*.parquet"))
        got = pl.read_parquet(files).sort("id")
        assert got.height == len(want), (
            f"{context}: {got.height} rows in the lake, source has {len(want)}"
        )
        assert got["id"].n_unique() == got.height, f"{context}: duplicated rows"
        assert got["id"].to_list() == [w[0] for w in want], context
        assert got["ts"].dt.strftime("%Y-%m-%d %H:%M:%S").to_list() == [w[1] for w in want], context
        assert got["v"].to_list() == [w[2] for w in want], context
        assert got["s"].to_list() == [w[3] for w in want], context
        ledger = ledger_of(self.spec_dict)["events"]["watermark"]
        assert ledger["value"].replace("T", " ") == want[-1][1], context
        assert not (self.lake / "_staging").exists(), f"{context}: staging debris left"


# kill points across reading, staging, publishing (several files) and committing
INCREMENTAL_POINTS = [
    "stage.after_batch@1",
    "stage.after_batch@3",
    "stage.after_batch@6",
    "move.after_read",
    "publish.after_prepare",
    "publish.between_files@1",
    "publish.between_files@2",
    "publish.before_mark",
    "flow.before_ledger",
    "flow.before_mark_committed",
]
FULL_DROP_POINTS = [
    "stage.after_batch@2",
    "stage.after_batch@9",
    "move.after_read",
    "publish.after_prepare",
    "publish.before_mark",
    "flow.before_ledger",
    "flow.before_mark_committed",
]


def test_incremental_runs_survive_sigkill_anywhere(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    sc = Scenario(tmp_path, spec_name, prefect_server, "incremental")
    sc.grow(20_000)
    assert sc.run() == 0, sc.last_output
    sc.assert_exact("first load")
    for point in INCREMENTAL_POINTS:
        sc.grow(15_000)
        code = sc.run(fault=point)
        assert code == KILLED, (
            f"{point}: expected the run to be killed, got {code}\n{sc.last_output}"
        )
        assert sc.run() == 0, f"{point}: rerun failed\n{sc.last_output}"
        sc.assert_exact(f"after a kill at {point}")

    # a kill while recovering from a kill: the second run dies rolling the first one forward
    sc.grow(15_000)
    assert sc.run(fault="publish.before_mark") == KILLED
    assert sc.run(fault="publish.before_mark") == KILLED
    assert sc.run() == 0, sc.last_output
    sc.assert_exact("after a kill during recovery")

    # and at moments nobody chose: random delays across start-up, reading and publishing
    rng = random.Random(20261122)
    for i in range(5):
        sc.grow(15_000)
        sc.run(kill_after=rng.uniform(1.0, 6.0))
        assert sc.run() == 0, f"timed kill {i}: rerun failed\n{sc.last_output}"
        sc.assert_exact(f"after timed kill {i}")


def test_full_drop_runs_survive_sigkill_anywhere(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    sc = Scenario(tmp_path, spec_name, prefect_server, "full_drop")
    sc.grow(30_000)
    assert sc.run() == 0, sc.last_output
    for point in FULL_DROP_POINTS:
        before = pl.read_parquet(sorted((sc.lake / "events").glob("*.parquet"))).height
        sc.grow(5_000)
        code = sc.run(fault=point)
        assert code == KILLED, (
            f"{point}: expected the run to be killed, got {code}\n{sc.last_output}"
        )
        # readers see the old table or the new one, never a mix or nothing
        now = pl.read_parquet(sorted((sc.lake / "events").glob("*.parquet"))).height
        assert now in (before, sc.next_id), f"{point}: {now} rows visible after the kill"
        assert sc.run() == 0, f"{point}: rerun failed\n{sc.last_output}"
        sc.assert_exact(f"after a kill at {point}")

    # the two-rename swap (filesystems without RENAME_EXCHANGE), killed between its renames
    sc.grow(5_000)
    no_exchange = {"HYGGE_NO_RENAME_EXCHANGE": "1"}
    assert sc.run(fault="publish.between_swap_renames", extra_env=no_exchange) == KILLED
    assert sc.run(extra_env=no_exchange) == 0, sc.last_output
    sc.assert_exact("after a kill between the swap's renames")


def test_a_second_run_on_the_same_store_fails_fast_and_changes_nothing(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    sc = Scenario(tmp_path, spec_name, prefect_server, "incremental")
    sc.grow(20_000)
    assert sc.run() == 0, sc.last_output
    sc.grow(15_000)
    # the first run takes the Store's lock; SIGSTOP then holds it there, alive
    first = sc.start()
    lock = sc.lake / "_hygge.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lock.exists() and str(first.pid) in lock.read_text(encoding="utf-8"):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    try:
        files = sorted(p.name for p in (sc.lake / "events").glob("*.parquet"))
        second = sc.run()
        assert second == 1, sc.last_output
        assert "another hygge run is writing to" in sc.last_output
        assert f"pid {first.pid}" in sc.last_output
        assert sorted(p.name for p in (sc.lake / "events").glob("*.parquet")) == files
    finally:
        first.send_signal(signal.SIGCONT)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    sc.assert_exact("after two overlapping runs")

    # with `lock_wait_seconds`, a run queues behind the holder instead
    sc.spec_dict["lock_wait_seconds"] = 120
    import yaml

    sc.spec.write_text(yaml.safe_dump(sc.spec_dict), encoding="utf-8")
    sc.grow(5_000)
    runs = [sc.start(), sc.start()]
    outputs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    sc.assert_exact("after two queued runs")

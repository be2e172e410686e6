"""The benchmark suite at tiny sizes, so it never rots: every workload runs and reports.

No timing thresholds: on shared CI machines only the suite's own same-run ratios mean anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_suite_smoke_reports_every_workload(prefect_server: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    cmd = [
        sys.executable, "-m", "bench.suite",
        "--sizes", "2000", "--repeat", "1", "--no-dlt", "--no-server",
        "--groups", "parquet,parquet_parts,csv,sqlite,many", "--entities", "3",
        "--work", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    names = {r["name"] for r in results}
    assert names == {
        "parquet.hygge",
        "parquet.hygge_reencode",
        "parquet.polars_sink",
        "parquet.pyarrow",
        "parquet.read_only",
        "parquet_parts.hygge",
        "parquet_parts.hygge_reencode",
        "parquet_parts.polars_sink",
        "csv.hygge",
        "csv.polars_sink",
        "csv.read_only",
        "sqlite.hygge",
        "sqlite.adbc_pyarrow",
        "sqlite.adbc_polars",
        "sqlite.read_only",
        "many.hygge",
    }
    for r in results:
        assert r["error"] is None, r
        assert r["rows"] == (3_000 if r["group"] == "many" else 2_000), r
        assert r["rows_s"] > 0 and r["peak_mb"] > 0 and r["command_seconds"] > 0, r
        assert r["ratio"] is not None and r["ratio"] > 0, r
        # the printed table has the row too
        assert f"{r['group']}." in proc.stdout and r["name"].split(".")[1] in proc.stdout
    assert "targets:" in proc.stdout

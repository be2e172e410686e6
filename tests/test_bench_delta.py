"""The Delta benchmarks at a tiny size, so they never rot: every workload runs, each merge
leaves the table it should. No timing thresholds (only same-run ratios mean anything)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_delta_smoke_runs_every_workload(prefect_server: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, "-m", "bench.delta", "--rows", "2000", "--repeat", "1",
        "--work", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(results) == sorted(
        f"{g}.{k}"
        for g in ("append", "full_drop", "merge", "merge_spread", "flow")
        for k in ("hygge", "deltalake")
    )
    for name, r in results.items():
        assert r["seconds"] > 0 and r["peak_mb"] > 0, name
        if name.startswith("flow"):
            assert r["rows"] == 2_000, name
        elif name.startswith("append"):
            assert r["rows_after"] == 3_000, name
        elif name.startswith("full_drop"):
            assert r["rows_after"] == 2_000, name
        else:
            # 1% of 2,000: 12 updated, 6 new, 2 deleted
            assert r["rows_after"] == 2_000 + 6 - 2, name
            assert (r["num_target_rows_updated"], r["num_target_rows_inserted"]) == (12, 6)
            assert r["num_target_rows_deleted"] == 2, name
    assert "targets:" in proc.stdout and "append:" in proc.stdout

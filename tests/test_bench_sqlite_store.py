"""The SQLite Store's benchmark at a tiny size, so it never rots: every workload runs and
leaves the table it should. No timing thresholds (only same-run ratios mean anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sqlite_store_smoke_runs_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, "-m", "bench.sqlite_store", "--rows", "2000", "--repeat", "1",
        "--work", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(results) == sorted(
        ["full_drop.hygge", "full_drop.adbc", "full_drop.adbc_text", "upsert.hygge", "upsert.adbc"]
    )
    for name, (r,) in results.items():
        assert r["seconds"] > 0 and r["peak_mb"] > 0, name
        if name.startswith("full_drop"):
            assert r["rows"] == r["table_rows"] == 2_000, name
        else:
            # 1% of 2,000 (at least 10): 12 updated, 8 new
            assert (r["rows"], r["table_rows"]) == (20, 2_008), name
    assert "target full_drop" in proc.stdout

"""The ledger with a million rows tied at the watermark: inline set versus set beside the data.

    python -m bench.boundary [--rows N]

A SQLite table of N rows (default 1,000,000) that all share one `DATE` watermark value, keyed
by `id`, moved into a local Parquet Store by the real flow on a temporary Prefect server. Two
configurations in the same run:
- inline: every identity in the ledger block (what hygge did before; `INLINE_LIMIT` raised);
- spilled: the set in the Store's state area, its digest in the ledger (the default).
For each: the ledger entry's JSON size, the median time of saving the ledger block (5 saves),
the first load, and an incremental run that adds one more tied row (it reads the set back and
drops the N rows already loaded). Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DAY = "2024-05-01"


def make_db(path: Path, rows: int) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, day DATE, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?, 'x')", ((i, DAY) for i in range(rows)))
    con.commit()
    con.close()


def add_row(path: Path, row_id: int) -> None:
    con = sqlite3.connect(path)
    con.execute("INSERT INTO t VALUES (?, ?, 'x')", (row_id, DAY))
    con.commit()
    con.close()


def measure(db: Path, lake: Path, rows: int) -> dict[str, Any]:
    from blocks import WatermarkLedger
    from flows.run import hygge
    from flows.spec import parse_spec

    spec = {
        "name": f"bench-{uuid.uuid4().hex[:8]}",
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "entities": [{"name": "t", "table": "t", "watermark": {"column": "day", "keys": ["id"]}}],
    }
    start = time.perf_counter()
    hygge(spec=spec)
    first = time.perf_counter() - start
    ledger = WatermarkLedger.load(parse_spec(spec).ledger_name)
    entry_bytes = len(json.dumps(ledger.value["t"]))
    saves = []
    for _ in range(5):
        t0 = time.perf_counter()
        ledger.save(parse_spec(spec).ledger_name, overwrite=True)
        saves.append(time.perf_counter() - t0)
    add_row(db, rows)
    start = time.perf_counter()
    hygge(spec=spec)
    second = time.perf_counter() - start
    state = sum(p.stat().st_size for p in (lake / "_state").rglob("*") if p.is_file())
    return {
        "entry": entry_bytes,
        "save": statistics.median(saves),
        "first": first,
        "second": second,
        "state": state,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from hygge_tasks import boundary_spill

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        root = Path(tmp)
        results = {}
        for name, limit in [("inline", 10**12), ("spilled", boundary_spill.INLINE_LIMIT)]:
            db = root / f"{name}.db"
            make_db(db, args.rows)
            boundary_spill.INLINE_LIMIT = limit
            results[name] = measure(db, root / f"lake-{name}", args.rows)
    a, b = results["inline"], results["spilled"]
    print(f"{args.rows:,} rows tied at one watermark value")
    print(f"{'':28}{'inline':>14}{'spilled':>14}{'ratio':>9}")
    rows = [
        ("ledger entry (bytes)", "entry", "{:,.0f}"),
        ("ledger save (s, median 5)", "save", "{:.3f}"),
        ("state object (bytes)", "state", "{:,.0f}"),
        ("first load (s)", "first", "{:.2f}"),
        ("next run, +1 tied row (s)", "second", "{:.2f}"),
    ]
    for label, key, fmt in rows:
        ratio = f"{a[key] / b[key]:.1f}x" if b[key] else "-"
        print(f"{label:28}{fmt.format(a[key]):>14}{fmt.format(b[key]):>14}{ratio:>9}")


if __name__ == "__main__":
    main()

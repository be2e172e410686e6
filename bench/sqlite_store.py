"""The SQLite Store's benchmarks (issue 18), each beside a hand-written ADBC script doing the
same work, in the same run:

    python -m bench.sqlite_store                       # 1M rows, median of 3, every workload
    python -m bench.sqlite_store --rows 200k --repeat 1 --only full_drop --json out.json

- **full_drop**: the bench table (`bench/data.py`, read with `ParquetFile.iter_batches`) into
  a new SQLite database: `SqliteStore`'s writer and publish (types bound as SQLite holds them,
  staged as Arrow IPC, one transaction that creates the table, ingests the rows and records
  the run) against `adbc_ingest(mode="create")` of the same reader, whose only change to the
  rows is the cast ADBC needs (decimal to text), and against the same with timestamps and
  dates cast to text by Arrow first (`adbc_text`: faster than the driver's own formatting);
  the target is met against the faster of the two;
- **upsert**: 1% of the rows changed (60% updates, 40% new keys) upserted by `id` into the
  table as hygge wrote it (a unique index on `id`): the Store's merge run against a hand-written
  `adbc_ingest` into a temporary table and `INSERT ... ON CONFLICT (id) DO UPDATE`.

Each run is its own process; the parent times it and takes its peak RSS as `bench.suite` does
(GNU time). Seconds are the work after imports and set-up (a copy of the upsert's target is
made before the clock starts). Sources are built once under `--work`. See `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import orders, write_parquet  # noqa: E402
from bench.suite import measure, parse_size, size_label  # noqa: E402
from bench.workloads import MARK  # noqa: E402

BATCH = 100_000
GROUPS = ["full_drop", "upsert"]
LABELS = {
    "full_drop.hygge": "SqliteStore writer, replace (one transaction)",
    "full_drop.adbc": "adbc_ingest(mode='create'), decimals as text",
    "full_drop.adbc_text": "the same, timestamps and dates as text too",
    "upsert.hygge": "SqliteStore writer, upsert by id (one transaction)",
    "upsert.adbc": "adbc_ingest to temp + INSERT ... ON CONFLICT",
}
TARGET = 0.9


def _batches(src: str) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(src).iter_batches(batch_size=BATCH)


def _adbc_ready(batch: Any, temporal: bool = False) -> Any:
    """The one cast a hand-written ADBC ingest needs (SQLite's driver binds no decimals), and
    with `temporal` timestamps and dates as Arrow's text too."""
    import pyarrow as pa

    def text(t: pa.DataType) -> bool:
        return pa.types.is_decimal(t) or (
            temporal and (pa.types.is_timestamp(t) or pa.types.is_date(t))
        )

    cols = [c.cast(pa.string()) if text(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _store(db: Path, keys: list[str]) -> Any:
    from blocks.stores.sqlite import SqliteStore

    return SqliteStore(path=str(db), state_path=str(db) + "-hygge").for_entity(keys, [])


def child(name: str, args: dict[str, Any]) -> dict[str, Any]:
    import adbc_driver_sqlite.dbapi as adbc
    import pyarrow as pa

    group, kind = name.split(".", 1)
    db = Path(args["out"]) / "mart.sqlite"
    src = args["src"] if group == "full_drop" else args["changes"]
    if group == "upsert":
        shutil.copy(args["target"], db)  # before the clock: each run upserts a fresh copy
    store = _store(db, ["id"] if group == "upsert" else []) if kind == "hygge" else None
    start = time.perf_counter()
    rows = 0
    if store is not None:
        writer = store.open_writer(
            "orders", "r-bench", "replace" if group == "full_drop" else "append"
        )
        for batch in _batches(src):
            writer.write(batch)
            rows += batch.num_rows
        writer.commit_files(None, rows)
    else:
        conn = adbc.connect(str(db))
        cur = conn.cursor()
        first = next(_batches(src))
        schema = _adbc_ready(first).schema
        stream = pa.RecordBatchReader.from_batches(schema, (_adbc_ready(b) for b in _batches(src)))
        if group == "full_drop":
            rows = cur.adbc_ingest("orders", stream, mode="create")
        else:
            rows = cur.adbc_ingest("changes", stream, mode="create", temporary=True)
            cols = ", ".join(f'"{n}"' for n in schema.names)
            sets = ", ".join(f'"{n}" = excluded."{n}"' for n in schema.names if n != "id")
            cur.execute(
                f"INSERT INTO orders ({cols}) SELECT {cols} FROM temp.changes WHERE true "
                f"ON CONFLICT (id) DO UPDATE SET {sets}"
            )
            cur.fetchall()
        conn.commit()
        cur.close()
        conn.close()
    seconds = time.perf_counter() - start
    import sqlite3

    with sqlite3.connect(db) as con:  # after the clock: the rows really are in the table
        held = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    return {"rows": rows, "seconds": seconds, "table_rows": held}


def build(work: Path, rows: int) -> dict[str, str]:
    """The bench Parquet file, the 1% of changes, and the upsert target (written once)."""
    import polars as pl

    work.mkdir(parents=True, exist_ok=True)
    label = size_label(rows)
    src = write_parquet(work / label, rows)
    changes = work / label / "sqlite-changes.parquet"
    if not changes.exists():
        n = max(rows // 100, 10)
        updated = orders(0, rows).gather_every(max(rows // (n * 6 // 10), 1)).head(n * 6 // 10)
        updated = updated.with_columns(comment=pl.lit("changed"))
        fresh = orders(rows, n - updated.height)
        pl.concat([updated, fresh]).write_parquet(changes)
    target = work / label / "sqlite-target.sqlite"
    if not target.exists():
        part = Path(str(target) + ".part")
        part.unlink(missing_ok=True)
        store = _store(part, ["id"])
        writer = store.open_writer("orders", "r-seed", "replace")
        for batch in _batches(str(src)):
            writer.write(batch)
        writer.commit_files(None, rows)
        part.replace(target)
    return {"src": str(src), "changes": str(changes), "target": str(target)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1m")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(GROUPS))
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hygge-bench"))
    p.add_argument("--json", help="also write every run's figures (by workload) to this file")
    p.add_argument("--child", nargs=2, metavar=("NAME", "ARGS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(MARK + json.dumps(child(a.child[0], json.loads(a.child[1]))), flush=True)
        return 0
    rows = parse_size(a.rows)
    paths = build(Path(a.work), rows)
    import os

    env = {**os.environ, "DO_NOT_TRACK": "1"}
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(a.repeat):
        for group in a.only.split(","):
            for kind in kinds(group):  # alternating: all see the same machine
                name = f"{group}.{kind}"
                with tempfile.TemporaryDirectory() as out:
                    args = json.dumps({**paths, "out": out})
                    cmd = [sys.executable, "-m", "bench.sqlite_store", "--child", name, args]
                    results.setdefault(name, []).append(measure(cmd, env))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"{rows:,} rows, median of {a.repeat}")
    print(
        f"{'workload':<66} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} "
        "speed / fastest hand-written"
    )
    for group in a.only.split(","):
        median = {
            k: statistics.median(r["seconds"] for r in results[f"{group}.{k}"])
            for k in kinds(group)
        }
        best = min(v for k, v in median.items() if k != "hygge")
        for kind in kinds(group):
            rs = results[f"{group}.{kind}"]
            secs, done = median[kind], rs[0]["rows"]
            assert len({r["table_rows"] for r in rs}) == 1, f"{group}.{kind}: tables differ"
            peak = statistics.median(r["peak_mb"] for r in rs)
            print(
                f"{name_label(group, kind):<66} {done:>10,} {secs:>8.2f} {done / secs:>10,.0f} "
                f"{peak:>8.0f} {best / secs:.2f}x"
            )
        ratio = best / median["hygge"]
        verdict = "met" if ratio >= TARGET else "missed"
        print(
            f"  target {group}: hygge >= {TARGET}x the fastest hand-written ADBC: "
            f"{ratio:.2f}x, {verdict}"
        )
    return 0


def kinds(group: str) -> list[str]:
    return ["hygge", "adbc", "adbc_text"] if group == "full_drop" else ["hygge", "adbc"]


def name_label(group: str, kind: str) -> str:
    return f"{group}.{kind}  {LABELS[f'{group}.{kind}']}"


if __name__ == "__main__":
    raise SystemExit(main())

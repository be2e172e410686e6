"""Throughput and peak memory of hygge's engine beside raw-library baselines, same run.

Each workload runs in its own child process (so peak RSS is its own), `--repeat` times; the
median is reported with the ratio to each baseline. The engine is `hygge_tasks.move.move`,
the body of the entity task, without Prefect's start-up (the whole command is timed
separately by `--cli`).

    python bench/throughput.py                 # 1M rows, 3 repeats
    python bench/throughput.py --rows 200000 --repeat 1   # the CI smoke size
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _prepare(work: Path, rows: int) -> dict[str, Path]:
    """The source data: the example shop database and a Parquet copy of its orders table."""
    import polars as pl

    from flows.example import write_example

    db = work / "shop.sqlite"
    if not db.exists():
        write_example(db, rows)
    parquet = work / "orders.parquet"
    if not parquet.exists():
        import adbc_driver_sqlite.dbapi as adbc

        with adbc.connect(str(db)) as conn:
            cur = conn.cursor()
            cur.execute("SELECT * FROM orders")
            pl.from_arrow(cur.fetch_arrow_table()).write_parquet(parquet)  # type: ignore[union-attr]
    return {"db": db, "parquet": parquet}


def _hygge(home: Any, request: Any, out: Path) -> int:
    from blocks.stores.parquet import ParquetStore
    from hygge_tasks.move import EntityPlan, move

    plan = EntityPlan(name="orders", request=request, mode="replace")
    store = ParquetStore(path=str(out))
    result = move(plan, home, store, "bench", logging.getLogger("bench"))
    return result.rows


def workload(name: str, work: Path, out: Path) -> int:
    """Run one workload once; return the rows it moved."""
    # baselines import only what they use, so their peak memory is theirs alone
    import polars as pl
    import pyarrow.parquet as pq

    src = {"db": work / "shop.sqlite", "parquet": work / "orders.parquet"}
    out.mkdir(parents=True, exist_ok=True)
    if name == "sqlite.hygge":
        from blocks.base import ReadRequest
        from blocks.homes.sqlite import SqliteHome

        request = ReadRequest(entity="orders", table="orders")
        return _hygge(SqliteHome(path=str(src["db"])), request, out)
    if name == "sqlite.baseline_adbc":
        import adbc_driver_sqlite.dbapi as adbc

        with adbc.connect(str(src["db"])) as conn:
            cur = conn.cursor()
            cur.execute("SELECT * FROM orders")
            reader = cur.fetch_record_batch()
            with pq.ParquetWriter(out / "o.parquet", reader.schema, compression="zstd") as w:
                rows = 0
                for batch in reader:
                    w.write_batch(batch)
                    rows += batch.num_rows
        return rows
    if name == "parquet.hygge":
        from blocks.base import ReadRequest
        from blocks.homes.parquet import ParquetHome

        request = ReadRequest(entity="orders", path=str(src["parquet"]))
        return _hygge(ParquetHome(), request, out)
    if name == "parquet.baseline_polars_sink":
        pl.scan_parquet(src["parquet"]).sink_parquet(out / "o.parquet", compression="zstd")
        return pq.ParquetFile(out / "o.parquet").metadata.num_rows
    if name == "parquet.baseline_pyarrow":
        table = pq.read_table(src["parquet"])
        pq.write_table(table, out / "o.parquet", compression="zstd")
        return table.num_rows
    if name == "postgres.hygge":
        from pydantic import SecretStr

        from blocks.base import ReadRequest
        from blocks.credentials import PostgresCredentials
        from blocks.homes.postgres import PostgresHome

        creds = PostgresCredentials(dsn=SecretStr(os.environ["HYGGE_BENCH_PG"]))
        request = ReadRequest(entity="orders", table="orders")
        return _hygge(PostgresHome(credentials=creds), request, out)
    if name == "postgres.baseline_adbc":
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(os.environ["HYGGE_BENCH_PG"]) as conn:
            cur = conn.cursor()
            cur.execute("SELECT * FROM orders")
            reader = cur.fetch_record_batch()
            # ADBC hands `numeric` over as an extension type over text: write its storage
            schema = pa_schema_without_extensions(reader.schema)
            with pq.ParquetWriter(out / "o.parquet", schema, compression="zstd") as w:
                rows = 0
                for batch in reader:
                    w.write_batch(_storage(batch, schema))
                    rows += batch.num_rows
        return rows
    msg = f"unknown workload {name!r}"
    raise SystemExit(msg)


def pa_schema_without_extensions(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema(
        pa.field(
            f.name, f.type.storage_type if isinstance(f.type, pa.BaseExtensionType) else f.type
        )
        for f in schema
    )


def _storage(batch: Any, schema: Any) -> Any:
    import pyarrow as pa

    cols = [c.storage if isinstance(c.type, pa.BaseExtensionType) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def _postgres(work: Path) -> Any:
    """A throwaway PostgreSQL 15 holding the same `orders` table (tests/pg_server.py)."""
    import adbc_driver_postgresql.dbapi as pg
    import adbc_driver_sqlite.dbapi as lite

    from tests.pg_server import start_server

    server = start_server()
    with lite.connect(str(work / "shop.sqlite")) as src:
        cur = src.cursor()
        cur.execute("SELECT * FROM orders")
        table = cur.fetch_arrow_table()
    with pg.connect(server.uri, autocommit=True) as conn:
        conn.cursor().adbc_ingest("orders", table, mode="replace")
        conn.cursor().execute("VACUUM ANALYZE orders")
    return server


WORKLOADS = {
    "sqlite": ["sqlite.hygge", "sqlite.baseline_adbc"],
    "parquet": ["parquet.hygge", "parquet.baseline_polars_sink", "parquet.baseline_pyarrow"],
    "postgres": ["postgres.hygge", "postgres.baseline_adbc"],
}


def _child(name: str, work: Path) -> dict[str, Any]:
    # engine time only: import what the workload needs before the clock starts
    import polars  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    if name.endswith(".hygge"):
        import blocks  # noqa: F401
        import hygge_tasks.move  # noqa: F401
    out = Path(tempfile.mkdtemp(prefix="hygge-bench-out-"))
    try:
        start = time.perf_counter()
        rows = workload(name, work, out)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "workload": name,
        "rows": rows,
        "seconds": seconds,
        "bytes_out": size,
        "peak_mb": peak_kb / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", default=None, help="where to keep generated sources")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", action="append", choices=sorted(WORKLOADS), help="run only these groups"
    )
    args = parser.parse_args()
    work = Path(args.work or Path(tempfile.gettempdir()) / f"hygge-bench-{args.rows}")
    if args.child:
        print(json.dumps(_child(args.child, work)))
        return
    work.mkdir(parents=True, exist_ok=True)
    _prepare(work, args.rows)
    python = sys.version.split()[0]
    print(f"rows={args.rows:,} repeat={args.repeat} cores={os.cpu_count()} python={python}")
    print(f"{'workload':32} {'rows/s':>12} {'MB/s out':>9} {'peak MB':>8} {'ratio':>7}")
    groups = {g: n for g, n in WORKLOADS.items() if not args.only or g in args.only}
    server = _postgres(work) if "postgres" in groups else None
    if server is not None:
        os.environ["HYGGE_BENCH_PG"] = server.uri
    try:
        _run(groups, args, work)
    finally:
        if server is not None:
            server.stop()
    print("ratio = hygge rows/s divided by that row's rows/s (>= 1: hygge is as fast or faster)")


def _run(groups: dict[str, list[str]], args: Any, work: Path) -> None:
    for group, names in groups.items():
        medians: dict[str, dict[str, float]] = {}
        for name in names:
            runs = []
            for _ in range(args.repeat):
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--rows",
                        str(args.rows),
                        "--work",
                        str(work),
                        "--child",
                        name,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            sec = statistics.median(r["seconds"] for r in runs)
            medians[name] = {
                "rows_s": runs[0]["rows"] / sec,
                "mb_s": runs[0]["bytes_out"] / sec / 1e6,
                "peak": max(r["peak_mb"] for r in runs),
            }
        ours = medians[f"{group}.hygge"]["rows_s"]
        for name, m in medians.items():
            ratio = ours / m["rows_s"]
            print(
                f"{name:32} {m['rows_s']:>12,.0f} {m['mb_s']:>9.1f} {m['peak']:>8.0f} {ratio:>7.2f}"
            )


if __name__ == "__main__":
    main()

"""dlt and connectorx workloads, run once by the dlt venv: `.venv-dlt/bin/python THIS NAME ARGS`.

dlt pulls setuptools>=84 while prefect-azure pins setuptools<81, so dlt (and connectorx, the
fastest raw SQL reader it uses) live in their own venv (`bench/README.md`); this file imports
nothing of hygge. Output as `bench/workloads.py`: a last line `BENCH-RESULT {...}` with rows and
the engine seconds (`pipeline.run`, or the read and write of the connectorx baseline).

Each dlt workload is what a dlt user would write for the fastest path: Arrow batches (or
`sql_table` with the connectorx backend) into the `filesystem` destination as Parquet.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MARK = "BENCH-RESULT "
BATCH = 100_000


def _dlt(resource: Any, out: Path) -> float:
    import dlt
    from dlt.destinations import filesystem

    pipeline = dlt.pipeline(
        pipeline_name="bench",
        destination=filesystem(bucket_url=str(out / "lake")),
        dataset_name="bench",
        pipelines_dir=str(out / "_dlt"),
    )
    start = time.perf_counter()
    pipeline.run(resource, loader_file_format="parquet")
    return time.perf_counter() - start


def _psycopg2(dsn: str) -> str:
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dlt's docs use psycopg2
    return dsn.replace("postgresql://", "postgresql+psycopg2://", 1)


def run(name: str, args: dict[str, Any]) -> dict[str, Any]:
    import polars as pl
    import pyarrow.parquet as pq

    group, kind = name.split(".", 1)
    src, out = args.get("src", ""), Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    if kind == "connectorx":
        import connectorx as cx

        uri = f"sqlite://{src}" if group == "sqlite" else args["dsn"]
        start = time.perf_counter()
        table = cx.read_sql(uri, "SELECT * FROM orders", return_type="arrow")
        pl.from_arrow(table).write_parquet(out / "orders.parquet", compression="zstd")
        seconds = time.perf_counter() - start
        return {"rows": table.num_rows, "seconds": seconds}
    if kind != "dlt":
        msg = f"unknown workload {name!r}"
        raise SystemExit(msg)

    import dlt

    if group in ("sqlite", "postgres"):
        from dlt.sources.sql_database import sql_table

        uri = f"sqlite:///{src}" if group == "sqlite" else _psycopg2(args["dsn"])
        resource = sql_table(
            credentials=uri, table="orders", backend="connectorx", chunk_size=BATCH
        )
    else:

        @dlt.resource(name="orders", write_disposition="replace")
        def orders() -> Any:
            if group == "csv":
                lf = pl.scan_csv(src, infer_schema_length=10_000, try_parse_dates=True)
                for frame in lf.collect_batches(chunk_size=BATCH):
                    yield frame.to_arrow()
            else:
                files = sorted(Path(src).glob("*.parquet")) if Path(src).is_dir() else [src]
                for f in files:
                    yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH)

        resource = orders()
    seconds = _dlt(resource, out)
    written = [p for p in (out / "lake").rglob("*.parquet") if "orders" in p.parts]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in written)
    return {"rows": rows, "seconds": seconds}


def main() -> None:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = run(name, args)
    out = Path(args["out"])
    result["bytes_out"] = sum(
        p.stat().st_size for p in out.rglob("*.parquet") if "_dlt" not in p.parts
    )
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

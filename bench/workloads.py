"""One benchmark workload, run once in its own process: `python -m bench.workloads NAME ARGS`.

`ARGS` is a JSON object (`src`, `out`, and for SQL sources `dsn`). The last line printed is
`BENCH-RESULT {...}` with the rows moved and the engine seconds: for hygge the entity task's own
`EntityResult.seconds` (from the flow run's summary), for a baseline the work after its imports.
The parent (`bench/suite.py`) times the whole process and takes its peak RSS.

hygge runs as users run it: the parent flow (`flows.run.hygge`, the body of
`python -m flows.run`) with an inline spec, `full_drop`, against `PREFECT_API_URL` when that is
set (else Prefect starts a temporary server, as the command line does).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARK = "BENCH-RESULT "
BATCH = 100_000


def _hygge(home: dict[str, Any], entities: list[dict[str, Any]], out: str) -> dict[str, Any]:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.run import hygge

    spec = {
        "name": "bench",
        "home": home,
        "store": {"type": "parquet", "path": out},
        "run_type": "full_drop",
        "concurrency": int(os.environ.get("HYGGE_BENCH_CONCURRENCY", "4")),
        "entities": entities,
    }
    start = time.perf_counter()
    state = hygge(spec, return_state=True)
    flow_seconds = time.perf_counter() - start
    summary = state.result()  # raises when an entity failed
    return {
        "rows": sum(r["rows"] for r in summary),
        # one entity: its task's own seconds; many: the flow run's, from its start to its end
        "seconds": summary[0]["seconds"] if len(summary) == 1 else flow_seconds,
        "flow_seconds": flow_seconds,
        "entities": len(summary),
    }


def _pg_dsn(args: dict[str, Any]) -> str:
    return str(args["dsn"])


def run(name: str, args: dict[str, Any]) -> dict[str, Any]:
    src, out = args.get("src", ""), Path(args["out"])
    target = out / "orders.parquet"
    out.mkdir(parents=True, exist_ok=True)
    kind = name.split(".", 1)[1]
    group = name.split(".", 1)[0]

    if kind == "hygge_reencode" and group in ("parquet", "parquet_parts"):
        # the decode + encode path: what the engine does whenever a row could change
        entity = {"name": "orders", "path": src, "reencode": "always"}
        return _hygge({"type": "parquet"}, [entity], str(out))
    if kind == "hygge_old_dates" and group == "csv":
        # the per-value date inference the CSV Home used before issue 20
        home = {"type": "csv", "fast_dates": False}
        return _hygge(home, [{"name": "orders", "path": src}], str(out))
    if kind == "hygge":
        if group in ("parquet", "parquet_parts"):
            # nothing changes the rows: the files are copied as they are (`reencode: auto`)
            return _hygge({"type": "parquet"}, [{"name": "orders", "path": src}], str(out))
        if group == "csv":
            return _hygge({"type": "csv"}, [{"name": "orders", "path": src}], str(out))
        if group == "sqlite":
            home = {"type": "sqlite", "path": src}
            return _hygge(home, [{"name": "orders", "table": "orders"}], str(out))
        if group == "postgres":
            home = {"type": "postgres", "credentials": {"dsn": _pg_dsn(args)}}
            return _hygge(home, [{"name": "orders", "table": "orders"}], str(out))
        if group == "mysql":
            m = args["mysql"]
            home = {
                "type": "mysql",
                "host": m["host"],
                "port": m["port"],
                "database": m["database"],
                "credentials": {"username": m["user"], "password": m["password"]},
            }
            return _hygge(home, [{"name": "orders", "table": "orders"}], str(out))
        if group == "many":
            tables = [{"name": t, "table": t} for t in args["tables"]]
            return _hygge({"type": "sqlite", "path": src}, tables, str(out))

    # import what a baseline needs before its clock starts: engine time is the work alone
    # (after hygge's branches: hygge imports Polars itself, as `python -m flows.run` does)
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rows = 0
    if kind == "polars_sink" and group in ("parquet", "parquet_parts"):
        pattern = f"{src}/*.parquet" if Path(src).is_dir() else src
        pl.scan_parquet(pattern).sink_parquet(target, compression="zstd")
    elif kind == "polars_sink" and group == "csv":
        # the CSV Home's defaults: types inferred from 10,000 rows, ISO dates parsed
        lf = pl.scan_csv(src, infer_schema_length=10_000, try_parse_dates=True)
        lf.sink_parquet(target, compression="zstd")
    elif kind == "pyarrow":
        pq.write_table(pq.read_table(src), target, compression="zstd")
    elif kind in ("adbc_pyarrow", "adbc_polars"):
        conn, cur, reader = _adbc_reader(group, src, args)
        schema = _plain_schema(reader.schema)
        if kind == "adbc_pyarrow":
            with pq.ParquetWriter(target, schema, compression="zstd") as w:
                for batch in reader:
                    w.write_batch(_plain(batch, schema))
        else:
            # the same read, encoded by Polars' parallel sink
            stream = pa.RecordBatchReader.from_batches(schema, (_plain(b, schema) for b in reader))
            pl.scan_arrow_c_stream(stream).sink_parquet(target, compression="zstd")
        cur.close()
        conn.close()
    elif kind == "connectorx_stream":
        # the MySQL Home's driver, raw: its own types (DECIMAL as decimal128(38, 10)), streamed
        reader = _cx_reader(args)
        with pq.ParquetWriter(target, reader.schema, compression="zstd") as w:
            for batch in reader:
                w.write_batch(batch)
    elif kind == "read_only" and group == "mysql":
        rows = sum(batch.num_rows for batch in _cx_reader(args))
        return {"rows": rows, "seconds": time.perf_counter() - start}
    elif kind == "read_only":
        # the source read in full by the fastest streaming reader, nothing written: no tool
        # that reads this source can move it faster
        if group in ("parquet", "parquet_parts", "csv"):
            pattern = f"{src}/*.parquet" if Path(src).is_dir() else src
            lf = (
                pl.scan_csv(src, infer_schema_length=10_000, try_parse_dates=True)
                if group == "csv"
                else pl.scan_parquet(pattern)
            )
            rows = sum(frame.height for frame in lf.collect_batches(chunk_size=BATCH))
        else:
            conn, cur, reader = _adbc_reader(group, src, args)
            rows = sum(batch.num_rows for batch in reader)
            cur.close()
            conn.close()
        return {"rows": rows, "seconds": time.perf_counter() - start}
    else:
        msg = f"unknown workload {name!r}"
        raise SystemExit(msg)
    seconds = time.perf_counter() - start
    rows = pq.ParquetFile(target).metadata.num_rows
    return {"rows": rows, "seconds": seconds}


def _adbc_reader(group: str, src: str, args: dict[str, Any]) -> Any:
    if group == "sqlite":
        import adbc_driver_sqlite.dbapi as adbc

        conn = adbc.connect(f"file:{src}?mode=ro")
        cur = conn.cursor()
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH)})
    else:
        import adbc_driver_postgresql.dbapi as pg

        conn = pg.connect(_pg_dsn(args))
        cur = conn.cursor()
    cur.execute("SELECT * FROM orders")
    return conn, cur, cur.fetch_record_batch()  # the reader needs its cursor open


def _cx_reader(args: dict[str, Any]) -> Any:
    import connectorx as cx

    m = args["mysql"]
    url = f"mysql://{m['user']}:{m['password']}@{m['host']}:{m['port']}/{m['database']}"
    return cx.read_sql(url, "SELECT * FROM orders", return_type="arrow_stream", batch_size=BATCH)


def _plain_schema(schema: Any) -> Any:
    """ADBC hands PostgreSQL `numeric` over as an extension type over text: keep its storage."""
    import pyarrow as pa

    ext = pa.BaseExtensionType
    return pa.schema(
        pa.field(f.name, f.type.storage_type if isinstance(f.type, ext) else f.type) for f in schema
    )


def _plain(batch: Any, schema: Any) -> Any:
    import pyarrow as pa

    cols = [c.storage if isinstance(c.type, pa.BaseExtensionType) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = run(name, args)
    out = Path(args["out"])
    result["bytes_out"] = sum(
        p.stat().st_size for p in out.rglob("*.parquet") if "_journal" not in p.parts
    )
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

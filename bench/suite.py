"""hygge's benchmark suite: every workload beside its baselines and dlt, same run, one command.

    python -m bench.suite                          # 1M and 10M rows, median of 3, everything
    python -m bench.suite --sizes 1m --repeat 1    # quicker
    python -m bench.suite --groups parquet,csv --no-dlt

Each run of each workload is its own process: the suite times the whole command (wall seconds)
and takes its peak RSS (`wait4`, as `/usr/bin/time -v` does); the process reports its engine
seconds (for hygge the entity task's `EntityResult.seconds`). Rates are rows / engine seconds;
the ratio column is hygge's rate divided by that row's, so >= 1 means hygge is faster. The
targets (issue 8) are checked at the end. See `bench/README.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import write_sources  # noqa: E402
from bench.workloads import MARK  # noqa: E402

DLT_PYTHON = ROOT / "bench" / ".venv-dlt" / "bin" / "python"
GROUPS = ["parquet", "parquet_parts", "csv", "sqlite", "postgres", "mysql", "many"]

#: what each workload is, for the table
LABELS = {
    "parquet.hygge": "ParquetHome -> ParquetStore (files copied)",
    "parquet.hygge_reencode": "the same, reencode: always",
    "parquet.polars_sink": "polars scan_parquet().sink_parquet()",
    "parquet.pyarrow": "pyarrow read_table + write_table",
    "parquet.dlt": "dlt: Arrow batches -> filesystem parquet",
    "parquet_parts.hygge": "ParquetHome (10 parts) -> ParquetStore (copied)",
    "parquet_parts.hygge_reencode": "the same, reencode: always",
    "parquet_parts.polars_sink": "polars scan_parquet(parts).sink_parquet()",
    "csv.hygge": "CsvHome -> ParquetStore",
    "csv.hygge_old_dates": "the same, fast_dates: false (per-value inference)",
    "csv.polars_sink": "polars scan_csv().sink_parquet()",
    "csv.dlt": "dlt: polars CSV batches -> filesystem parquet",
    "sqlite.hygge": "SqliteHome -> ParquetStore",
    "sqlite.adbc_pyarrow": "ADBC read + pyarrow ParquetWriter",
    "sqlite.adbc_polars": "ADBC read + polars sink_parquet",
    "sqlite.connectorx": "connectorx read + polars write_parquet",
    "sqlite.dlt": "dlt: sql_table(backend=connectorx)",
    "postgres.hygge": "PostgresHome -> ParquetStore",
    "postgres.adbc_pyarrow": "ADBC read + pyarrow ParquetWriter",
    "postgres.adbc_polars": "ADBC read + polars sink_parquet",
    "postgres.connectorx": "connectorx read + polars write_parquet",
    "postgres.dlt": "dlt: sql_table(backend=connectorx)",
    "mysql.hygge": "MysqlHome -> ParquetStore",
    "mysql.connectorx_stream": "connectorx arrow_stream + pyarrow ParquetWriter",
    "many.hygge": "SQLite tables -> ParquetStore, one flow run",
}
for _group, _reader in {
    "parquet": "polars scan_parquet",
    "parquet_parts": "polars scan_parquet",
    "csv": "polars scan_csv",
    "sqlite": "ADBC",
    "postgres": "ADBC",
    "mysql": "connectorx arrow_stream",
}.items():
    LABELS[f"{_group}.read_only"] = f"read only ({_reader}), nothing written"
#: raw-library baselines the engine targets (>= 0.9x the fastest of them) and dlt's multiple
RAW = {"polars_sink", "pyarrow", "adbc_pyarrow", "adbc_polars", "connectorx", "connectorx_stream"}
DLT_TARGET = {"parquet": 3.0, "parquet_parts": 3.0, "csv": 3.0, "sqlite": 2.0, "postgres": 2.0}
RAW_TARGET = 0.9
ENGINE = {"parquet": ["polars_sink"], "csv": ["polars_sink"]}  # what the 0.9x target names
#: files nothing changes are copied, not re-encoded: the copy's multiple over Polars' sink
COPY_TARGET = 5.0
#: where the engine's decode + encode is measured apart from the copy (`reencode: always`)
REENCODED = {"parquet", "parquet_parts"}
#: CSV dates parsed once (issue 20): hygge's multiple over its old per-value date parse
DATES_TARGET = 1.5


@dataclass
class Result:
    group: str
    size: int
    name: str
    rows: int = 0
    seconds: float = 0.0  # engine, median
    command_seconds: float = 0.0  # whole process, median
    peak_mb: float = 0.0  # the largest of the runs
    bytes_out: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    ratio: float | None = None  # hygge rows/s over this row's
    error: str | None = None

    @property
    def kind(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def rows_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def size_label(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


# -- running one process ------------------------------------------------------------------------


TIME = Path("/usr/bin/time")
TIME_MARK = "BENCH-TIME "


def measure(cmd: list[str], env: dict[str, str], timeout: float = 3600) -> dict[str, Any]:
    """Run `cmd`; its BENCH-RESULT, wall seconds and peak RSS (MB) of the process.

    Peak RSS comes from GNU `/usr/bin/time` where installed: the process is forked from that
    small program. A child forked straight from this (large) process would start its high-water
    mark at ours, since Linux carries it over `vfork` + `exec`; `wait4` is the fallback.
    """
    if TIME.exists():
        cmd = [str(TIME), "-f", f"{TIME_MARK}%M", *cmd]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        msg = f"{' '.join(cmd[:7])} failed (exit {proc.returncode}):\n{tail}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(lines[-1][len(MARK) :])
    result["command_seconds"] = wall
    peak_kb = [int(ln.split()[-1]) for ln in stderr.splitlines() if ln.startswith(TIME_MARK)]
    result["peak_mb"] = (peak_kb[-1] if peak_kb else usage.ru_maxrss) / 1024  # kB on Linux
    return result


def run_workload(
    group: str, size: int, name: str, args: dict[str, Any], repeat: int, env: dict[str, str]
) -> Result:
    res = Result(group=group, size=size, name=name)
    dlt = name.endswith((".dlt", ".connectorx"))
    for _ in range(repeat):
        out = Path(tempfile.mkdtemp(prefix="hygge-bench-out-"))
        try:
            run_args = json.dumps({**args, "out": str(out)})
            if dlt:
                cmd = [str(DLT_PYTHON), str(ROOT / "bench" / "dlt_run.py"), name, run_args]
            else:
                cmd = [sys.executable, "-m", "bench.workloads", name, run_args]
            res.runs.append(measure(cmd, env))
        except RuntimeError as exc:
            res.error = str(exc)
            print(f"  ! {group} {size_label(size)} {name}: {exc}", file=sys.stderr)
            return res
        finally:
            shutil.rmtree(out, ignore_errors=True)
    res.rows = res.runs[0]["rows"]
    res.seconds = statistics.median(r["seconds"] for r in res.runs)
    res.command_seconds = statistics.median(r["command_seconds"] for r in res.runs)
    res.peak_mb = max(r["peak_mb"] for r in res.runs)
    res.bytes_out = int(statistics.median(r["bytes_out"] for r in res.runs))
    return res


# -- sources and servers ------------------------------------------------------------------------


def many_tables(work: Path, tables: int, rows: int) -> tuple[Path, list[str]]:
    """A SQLite database of `tables` small tables (the first `rows` rows of the bench table)."""
    import adbc_driver_sqlite.dbapi as adbc

    from bench.data import _SQLITE_DDL, orders

    db = work / f"many-{tables}x{rows}.sqlite"
    names = [f"t{i:03d}" for i in range(tables)]
    if db.exists():
        return db, names
    tmp = db.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    frame = orders(0, rows)
    import polars as pl

    frame = frame.with_columns(
        amount=pl.col("amount").cast(pl.Float64),
        created_at=pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M:%S"),
        order_date=pl.col("order_date").dt.strftime("%Y-%m-%d"),
        is_paid=pl.col("is_paid").cast(pl.Int64),
    ).to_arrow()
    import sqlite3

    with sqlite3.connect(tmp) as con:
        con.executescript(";".join(_SQLITE_DDL.replace("orders", n) for n in names))
    with adbc.connect(str(tmp)) as conn:
        cur = conn.cursor()
        for n in names:
            cur.adbc_ingest(n, frame, mode="append")
        conn.commit()
    tmp.replace(db)
    return db, names


def start_postgres(parquet: Path) -> Any:
    """A throwaway PostgreSQL 15 (tests/pg_server.py) holding the bench table as `orders`."""
    import adbc_driver_postgresql.dbapi as pg
    import pyarrow.parquet as pq

    from tests.pg_server import start_server

    server = start_server()
    ddl = (
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, quantity int NOT "
        "NULL, unit_price double precision NOT NULL, amount numeric(12,2) NOT NULL, status text "
        "NOT NULL, comment text NOT NULL, created_at timestamp NOT NULL, order_date date NOT "
        "NULL, is_paid boolean NOT NULL, discount double precision)"
    )
    try:
        with pg.connect(server.uri, autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(ddl)
            for batch in pq.ParquetFile(parquet).iter_batches(batch_size=200_000):
                cur.adbc_ingest("orders", batch, mode="append")
            cur.execute("VACUUM ANALYZE orders")
    except BaseException:
        server.stop()
        raise
    return server


def start_mariadb(parquet: Path, work: Path) -> Any:
    """A throwaway MariaDB (tests/mariadb_server.py) holding the bench table as `orders`."""
    import polars as pl

    from tests.mariadb_server import start_server

    server = start_server()
    ddl = (
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT NOT NULL, quantity INT NOT "
        "NULL, unit_price DOUBLE NOT NULL, amount DECIMAL(12,2) NOT NULL, status VARCHAR(16) NOT "
        "NULL, comment VARCHAR(64) NOT NULL, created_at DATETIME(6) NOT NULL, order_date DATE "
        "NOT NULL, is_paid BOOL NOT NULL, discount DOUBLE)"
    )
    tsv = work / f"orders-{parquet.parent.name}.tsv"
    try:
        if not tsv.exists():
            # LOAD DATA's defaults: tab-separated, `\N` for NULL
            frame = pl.read_parquet(parquet).with_columns(pl.col("is_paid").cast(pl.Int8))
            frame.write_csv(
                tsv,
                separator="\t",
                include_header=False,
                null_value="\\N",
                datetime_format="%Y-%m-%d %H:%M:%S%.6f",
                quote_style="never",
            )
        server.execute(ddl, f"LOAD DATA INFILE '{tsv}' INTO TABLE orders", "ANALYZE TABLE orders")
    except BaseException:
        server.stop()
        raise
    return server


def maria_args(server: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "database": server.database,
    }


def prefect_database() -> tuple[Any, str]:
    """A throwaway PostgreSQL with an empty `prefect` database, and its asyncpg URL."""
    import adbc_driver_postgresql.dbapi as pg

    from tests.pg_server import start_server

    server = start_server()
    with pg.connect(server.uri, autocommit=True) as conn:
        conn.cursor().execute("CREATE DATABASE prefect")
    base = server.uri.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0]
    return server, f"{base}/prefect"


class PrefectServer:
    """`prefect server start` in the background, with its own home and database.

    The database is SQLite in `home` (Prefect's default), or the PostgreSQL at `database_url`
    (`postgresql+asyncpg://...`, Prefect's production set-up).
    """

    def __init__(self, home: Path, database_url: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/api"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        env.pop("PREFECT_API_URL", None)
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        cmd = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.log = (home / "server.log").open("w")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        msg = f"the Prefect server did not start; see {home / 'server.log'}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# -- the plan -----------------------------------------------------------------------------------


def plan(
    groups: list[str], sizes: list[int], with_dlt: bool, old_dates: bool = False
) -> list[tuple[str, int, list[str]]]:
    """(group, size, workloads) in run order."""
    out = []
    largest, smallest = max(sizes), min(sizes)
    peers = ["dlt"] if with_dlt else []
    cx = ["connectorx"] if with_dlt else []
    # `read_only`: the source's read alone, the ceiling of any tool's multiple over dlt
    floor = ["read_only"]
    for size in sizes:
        if "parquet" in groups:
            names = ["hygge", "hygge_reencode", "polars_sink", "pyarrow", *peers, *floor]
            out.append(("parquet", size, names))
        if "parquet_parts" in groups and size == largest:
            out.append(("parquet_parts", size, ["hygge", "hygge_reencode", "polars_sink"]))
        if "csv" in groups:
            before = ["hygge_old_dates"] if old_dates else []
            out.append(("csv", size, ["hygge", *before, "polars_sink", *peers, *floor]))
        if "sqlite" in groups:
            names = ["hygge", "adbc_pyarrow", "adbc_polars", *cx, *peers, *floor]
            out.append(("sqlite", size, names))
        if "postgres" in groups and size == smallest:
            names = ["hygge", "adbc_pyarrow", "adbc_polars", *cx, *peers, *floor]
            out.append(("postgres", size, names))
        if "mysql" in groups and size == smallest:
            out.append(("mysql", size, ["hygge", "connectorx_stream", *floor]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="1m,10m", help="row counts, e.g. 1m,10m or 2000")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (median)")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"of {','.join(GROUPS)}")
    parser.add_argument("--no-dlt", action="store_true", help="skip dlt and connectorx")
    parser.add_argument("--entities", type=int, default=200, help="tables of the `many` run")
    parser.add_argument("--entity-rows", type=int, default=1_000, help="rows per such table")
    parser.add_argument(
        "--no-server",
        action="store_true",
        help="no `prefect server start`: hygge uses PREFECT_API_URL or a temporary server",
    )
    parser.add_argument(
        "--prefect-db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the started server's database: Prefect's default SQLite, or a throwaway PostgreSQL",
    )
    parser.add_argument(
        "--old-dates",
        action="store_true",
        help="also run the CSV Home with fast_dates: false (the date parse before issue 20)",
    )
    parser.add_argument("--work", help="where generated sources are kept (default: $TMPDIR)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    with_dlt = not args.no_dlt and DLT_PYTHON.exists()
    if not args.no_dlt and not with_dlt:
        print(f"note: {DLT_PYTHON} not found: dlt and connectorx skipped (bench/README.md)")
    work = Path(args.work or Path(tempfile.gettempdir()) / "hygge-bench")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RUNTIME__DLTHUB_TELEMETRY": "false",
    }
    print(machine_line(sizes, args.repeat))
    server = pg = prefect_pg = maria = None
    results: list[Result] = []
    many: dict[str, Any] | None = None
    try:
        if not args.no_server:
            url = None
            if args.prefect_db == "postgres":
                prefect_pg, url = prefect_database()
            server = PrefectServer(work / f"prefect-home-{args.prefect_db}", url)
            env["PREFECT_API_URL"] = server.url
            print(f"prefect server: {server.url} (started by the suite; {args.prefect_db})")
        elif env.get("PREFECT_API_URL"):
            print(f"prefect server: {env['PREFECT_API_URL']}")
        else:
            print("prefect server: none (each hygge run starts a temporary one)")
        sources = {size: write_sources(work / f"rows-{size}", size) for size in sizes}
        for group, size, names in plan(groups, sizes, with_dlt, args.old_dates):
            src = sources[size]
            wargs: dict[str, Any] = {
                "parquet": {"src": str(src["parquet"])},
                "parquet_parts": {"src": str(src["parts"])},
                "csv": {"src": str(src["csv"])},
                "sqlite": {"src": str(src["sqlite"])},
                "postgres": {},
                "mysql": {},
            }[group]
            if group == "postgres":
                if pg is None:
                    pg = start_postgres(src["parquet"])
                wargs = {"dsn": pg.uri}
            if group == "mysql":
                if maria is None:
                    maria = start_mariadb(src["parquet"], work)
                wargs = {"mysql": maria_args(maria)}
            for name in names:
                res = run_workload(group, size, f"{group}.{name}", wargs, args.repeat, env)
                results.append(res)
                print(f"  {group} {size_label(size)} {name}: {progress_line(res)}", flush=True)
        if "many" in groups:
            db, tables = many_tables(work, args.entities, args.entity_rows)
            wargs = {"src": str(db), "tables": tables}
            res = run_workload("many", args.entity_rows, "many.hygge", wargs, args.repeat, env)
            results.append(res)
            many = many_summary(res, len(tables))
    finally:
        if pg is not None:
            pg.stop()
        if maria is not None:
            maria.stop()
        if server is not None:
            server.stop()
        if prefect_pg is not None:
            prefect_pg.stop()
    add_ratios(results)
    print()
    print(render(results))
    checks = targets(results, sizes, many)
    print()
    print("\n".join(checks))
    if args.json:
        payload = {
            "machine": machine_line(sizes, args.repeat),
            "results": [{**asdict(r), "rows_s": r.rows_s} for r in results],
            "many": many,
            "targets": checks,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 1 if any(r.error for r in results) else 0


def machine_line(sizes: list[int], repeat: int) -> str:
    import polars
    import pyarrow

    py = sys.version.split()[0]
    return (
        f"sizes={','.join(size_label(s) for s in sizes)} repeat={repeat} cores={os.cpu_count()} "
        f"python={py} polars={polars.__version__} pyarrow={pyarrow.__version__}"
    )


def progress_line(res: Result) -> str:
    if res.error:
        return "FAILED"
    return f"{res.rows_s:,.0f} rows/s, command {res.command_seconds:.1f} s, {res.peak_mb:.0f} MB"


def add_ratios(results: list[Result]) -> None:
    ours = {(r.group, r.size): r for r in results if r.kind == "hygge" and not r.error}
    for r in results:
        h = ours.get((r.group, r.size))
        if h is not None and not r.error and r.rows_s > 0:
            r.ratio = h.rows_s / r.rows_s


def many_summary(res: Result, tables: int) -> dict[str, Any] | None:
    if res.error:
        return None
    flow = statistics.median(r["flow_seconds"] for r in res.runs)
    return {
        "entities": tables,
        "rows_per_entity": res.size,
        "flow_seconds": flow,
        "command_seconds": res.command_seconds,
        "ms_per_entity": 1000 * flow / tables,
        "peak_mb": res.peak_mb,
    }


def render(results: list[Result]) -> str:
    head = (
        f"{'workload':<26} {'what':<44} {'rows':>11} {'rows/s':>11} {'engine s':>9} "
        f"{'command s':>9} {'MB/s out':>8} {'peak MB':>8} {'hygge/this':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        label = f"{r.group}.{size_label(r.size)}.{r.kind}"
        what = LABELS.get(r.name, r.name)
        if r.error:
            lines.append(f"{label:<26} {what:<44} {'failed':>11}")
            continue
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        mb_s = r.bytes_out / r.seconds / 1e6 if r.seconds else 0.0
        lines.append(
            f"{label:<26} {what:<44} {r.rows:>11,} {r.rows_s:>11,.0f} {r.seconds:>9.2f} "
            f"{r.command_seconds:>9.2f} {mb_s:>8.1f} {r.peak_mb:>8.0f} {ratio:>10}"
        )
    lines.append("rows/s = rows / engine seconds (hygge: the entity task's own); command s =")
    lines.append("the whole process; peak MB = its peak RSS; hygge/this >= 1: hygge is faster")
    return "\n".join(lines)


def targets(results: list[Result], sizes: list[int], many: dict[str, Any] | None) -> list[str]:
    """The issue's targets, one line each: met or missed, with the figures."""
    out = ["targets:"]

    def mark(ok: bool) -> str:
        return "met   " if ok else "MISSED"

    by = {(r.group, r.size, r.kind): r for r in results if not r.error}
    for group, size in sorted({(r.group, r.size) for r in results if r.group != "many"}):
        h = by.get((group, size, "hygge"))
        if h is None:
            continue
        sink = by.get((group, size, "polars_sink"))
        if group in REENCODED and sink is not None:
            ratio = h.rows_s / sink.rows_s
            out.append(
                f"  {mark(ratio >= COPY_TARGET)} {group} {size_label(size)} copied: {ratio:.2f}x "
                f"polars_sink (target >= {COPY_TARGET}x)"
            )
            h = by.get((group, size, "hygge_reencode"), h)  # the engine's own path, below
        before = by.get((group, size, "hygge_old_dates"))
        if before is not None:
            ratio = h.rows_s / before.rows_s
            out.append(
                f"  {mark(ratio >= DATES_TARGET)} {group} {size_label(size)} dates parsed once: "
                f"{ratio:.2f}x fast_dates: false (target >= {DATES_TARGET}x)"
            )
        raw = [r for (g, s, k), r in by.items() if g == group and s == size and k in RAW]
        named = [r for r in raw if r.kind in ENGINE.get(group, [])] or raw
        if named:
            best = max(named, key=lambda r: r.rows_s)
            ratio = h.rows_s / best.rows_s
            out.append(
                f"  {mark(ratio >= RAW_TARGET)} {group} {size_label(size)}: {ratio:.2f}x "
                f"{best.kind} (target >= {RAW_TARGET}x the fastest raw baseline)"
            )
        peer = by.get((group, size, "dlt"))
        if peer is not None and group in DLT_TARGET:
            ratio = h.rows_s / peer.rows_s
            want = DLT_TARGET[group]
            read = by.get((group, size, "read_only"))
            ceiling = f"; reading alone is {read.rows_s / peer.rows_s:.2f}x dlt" if read else ""
            out.append(
                f"  {mark(ratio >= want)} {group} {size_label(size)}: {ratio:.2f}x dlt "
                f"(target >= {want:g}x{ceiling})"
            )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        for group in ("parquet", "csv", "sqlite"):
            a, b = by.get((group, small, "hygge")), by.get((group, large, "hygge"))
            if a and b:
                ratio = b.peak_mb / a.peak_mb
                ok = ratio <= 1.25 and b.peak_mb < 1024
                out.append(
                    f"  {mark(ok)} {group} peak RSS {size_label(large)} / {size_label(small)}: "
                    f"{b.peak_mb:.0f} / {a.peak_mb:.0f} MB = {ratio:.2f}x "
                    "(target <= 1.25x and < 1 GB)"
                )
    if many is not None:
        out.append(
            f"  {mark(many['flow_seconds'] < 60)} {many['entities']} entities x "
            f"{many['rows_per_entity']:,} rows: flow run {many['flow_seconds']:.1f} s "
            f"({many['ms_per_entity']:.0f} ms/entity), whole command "
            f"{many['command_seconds']:.1f} s (target < 60 s)"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())

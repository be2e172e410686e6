"""Key-set reconciliation at 10M keys: hygge's bucketed engine beside DuckDB's anti-join.

    python -m bench.keyset [--keys N] [--deleted F] [--types int64,string] [--repeat K]

The previous run's key set holds N keys (default 10,000,000); the source has lost a fraction F
of them (default 1%, chosen at random) and gained as many new ones, which this run wrote. All
read the same Parquet files and write their results as Parquet (zstd). Each run is its own
process (`bench.suite.measure`: wall seconds, peak RSS from GNU time); the process reports its
engine seconds (the work after its imports). Medians of K runs; a ratio is DuckDB's figure
over hygge's (>= 1: hygge is faster, or smaller). The counts must agree.

- **hygge**: `hygge_tasks.keyset.diff_keys`, the source streamed from its Parquet file in
  100,000-row batches (as a Home yields them), the written keys through a `KeyCollector`: the
  deleted keys (read back once, as the caller streams them to the Store) and the new key set.
- **duckdb-anti**: the anti-join alone, `COPY (SELECT p.id FROM previous p ANTI JOIN source s
  ...)`: the deleted keys, nothing else.
- **duckdb-full**: hygge's whole job: the anti-join, then the new key set (previous semi-join
  source, computed once (`MATERIALIZED`), plus the distinct written keys not among them,
  `UNION ALL`).

DuckDB runs with its defaults (every core, 80% of RAM as its memory limit). Its `=` never
matches NULLs where hygge's keys do; these keys have none.

The key types: `int64` (0..N-1), and `string` (`cust-` and 12 digits, 17 characters).
DuckDB (`pip install duckdb`, in the `bench` extra; it can live beside hygge) must be
importable by this Python.
"""

from __future__ import annotations

import argparse
import importlib.util
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

from bench.suite import measure  # noqa: E402
from bench.workloads import MARK  # noqa: E402

BATCH = 100_000


def _column(values: Any, kind: str) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(values, pa.int64())
    if kind == "int64":
        return array
    digits = pc.utf8_lpad(pc.cast(array, pa.string()), 12, "0")
    return pc.binary_join_element_wise("cust-", digits, "")


def make_inputs(work: Path, keys: int, deleted: float, kind: str) -> dict[str, str]:
    """previous.parquet, source.parquet and written.parquet for one key type (kept for reuse)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / f"{kind}-{keys}-{deleted:g}"
    paths = {n: folder / f"{n}.parquet" for n in ("previous", "source", "written", "keyset")}
    if all(p.exists() for p in paths.values()):
        return {n: str(p) for n, p in paths.items()}
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(17)
    held = np.arange(keys, dtype=np.int64)
    new = np.arange(keys, keys + int(keys * deleted), dtype=np.int64)
    source = np.concatenate([held[rng.random(keys) >= deleted], new])
    rng.shuffle(source)  # a source returns its rows in its own order
    for name, values in (("previous", held), ("source", source), ("written", new)):
        table = pa.table({"id": _column(values, kind)})
        pq.write_table(table, paths[name], compression="zstd", row_group_size=1_000_000)
    # the key set as hygge writes it (in hash-bucket order), for the state step
    from hygge_tasks.keyset import diff_keys

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        stream = pq.ParquetFile(paths["previous"]).iter_batches(batch_size=BATCH)
        shutil.move(diff_keys(["id"], stream, None, None, Path(tmp)).path, paths["keyset"])
    return {n: str(p) for n, p in paths.items()}


def run_hygge(args: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from hygge_tasks.keyset import KeyCollector, diff_keys

    out = Path(args["out"])
    start = time.perf_counter()
    written = KeyCollector(["id"], out)
    for batch in pq.ParquetFile(args["written"]).iter_batches(batch_size=BATCH):
        written.add(batch)
    source = pq.ParquetFile(args["source"]).iter_batches(batch_size=BATCH, columns=["id"])
    diff = diff_keys(["id"], source, written, Path(args["previous"]), out)
    # the caller streams the deletes to the Store: read them once, as it would
    deleted = sum(b.num_rows for b in diff.deleted_batches())
    seconds = time.perf_counter() - start
    assert deleted == diff.deleted_count
    return {"seconds": seconds, "deleted": diff.deleted_count, "count": diff.count}


def run_state(args: dict[str, Any]) -> dict[str, Any]:
    """A key set of N keys, as hygge writes it, kept in a local Store and fetched back."""
    from blocks.stores.parquet import ParquetStore
    from hygge_tasks.keyset_store import fetch_keyset, store_keyset

    out, path = Path(args["out"]), Path(args["keyset"])
    start = time.perf_counter()
    store = ParquetStore(path=str(out / "lake"))
    ref = store_keyset(store, "t", "r1", path)
    fetch_keyset(store, "t", ref, out / "next")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb": path.stat().st_size / 2**20, "count": ref["count"]}


def run_duckdb(args: dict[str, Any]) -> dict[str, Any]:
    """The anti-join alone (`anti`: the deleted keys), or hygge's whole job (`full`)."""
    import duckdb

    out = Path(args["out"])
    start = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{out / 'duckdb.tmp'}'")
    prev, src, wrote = (f"read_parquet('{args[n]}')" for n in ("previous", "source", "written"))
    parquet = "(FORMAT parquet, COMPRESSION zstd)"
    con.execute(
        f"COPY (SELECT p.id FROM {prev} p ANTI JOIN {src} s ON p.id = s.id) "
        f"TO '{out / 'deleted.parquet'}' {parquet}"
    )
    total: Any = (None,)
    if args["mode"] == "full":
        # as hygge does it: the held keys the source kept, then the written ones not among them
        con.execute(
            "COPY (WITH kept AS MATERIALIZED "
            f"(SELECT p.id FROM {prev} p SEMI JOIN {src} s ON p.id = s.id) "
            "SELECT id FROM kept UNION ALL "
            f"SELECT w.id FROM (SELECT DISTINCT id FROM {wrote}) w ANTI JOIN kept k "
            f"ON w.id = k.id) TO '{out / 'keyset.parquet'}' {parquet}"
        )
    seconds = time.perf_counter() - start
    if args["mode"] == "full":
        total = con.execute(f"SELECT count(*) FROM '{out / 'keyset.parquet'}'").fetchone()
    gone = con.execute(f"SELECT count(*) FROM '{out / 'deleted.parquet'}'").fetchone()
    assert total is not None and gone is not None
    return {"seconds": seconds, "deleted": gone[0], "count": total[0]}


_ENV = {"PATH": "/usr/bin:/bin", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _command(tool: str, inputs: dict[str, str], work: Path) -> list[str]:
    """One measured process; its output folder goes when it exits (`--run` removes it)."""
    out = tempfile.mkdtemp(prefix="keyset-out-", dir=work)
    payload = json.dumps({**inputs, "out": out, "mode": tool.partition("-")[2]})
    return [sys.executable, "-m", "bench.keyset", "--run", tool, payload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--deleted", type=float, default=0.01)
    parser.add_argument("--types", default="int64,string")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hygge-bench")
    parser.add_argument("--no-duckdb", action="store_true", help="hygge's rows only")
    args = parser.parse_args()
    tools = ["hygge"]
    if args.no_duckdb:
        pass
    elif importlib.util.find_spec("duckdb") is None:
        print("duckdb is not installed here (`pip install duckdb`): its rows are skipped")
    else:
        tools += ["duckdb-anti", "duckdb-full"]
    print(f"{args.keys:,} keys held, {args.deleted:.1%} deleted at the source and as many added")
    head = f"{'engine s':>10}{'command s':>11}{'peak MB':>9}{'deleted':>11}{'new set':>12}"
    print(f"{'keys':8}{'tool':13}{head}")
    # the state step imports the Stores, hence Prefect: give it a HOME of its own
    env = {**_ENV, "HOME": str(args.work / "home")}
    for kind in args.types.split(","):
        inputs = make_inputs(args.work, args.keys, args.deleted, kind)
        medians: dict[str, dict[str, Any]] = {}
        for tool in tools:
            runs = []
            for _ in range(args.repeat):
                runs.append(measure(_command(tool, inputs, args.work), env))
            timed = ("seconds", "command_seconds", "peak_mb")
            med = {k: statistics.median(r[k] for r in runs) for k in timed}
            med.update(deleted=runs[0]["deleted"], count=runs[0]["count"])
            medians[tool] = med
            count = "-" if med["count"] is None else f"{med['count']:,}"
            print(
                f"{kind:8}{tool:13}{med['seconds']:>10.2f}{med['command_seconds']:>11.2f}"
                f"{med['peak_mb']:>9.0f}{med['deleted']:>11,}{count:>12}",
                flush=True,
            )
        h = medians["hygge"]
        state = [
            measure(_command("hygge-state", inputs, args.work), env) for _ in range(args.repeat)
        ]
        print(
            f"{kind:8}the key set ({state[0]['mb']:.1f} MB) kept in a local ParquetStore "
            f"and fetched back, SHA-256 checked: "
            f"{statistics.median(r['seconds'] for r in state):.2f} s, "
            f"peak {statistics.median(r['peak_mb'] for r in state):.0f} MB"
        )
        if len(tools) == 1:
            continue
        agree = (h["deleted"], h["count"]) == (
            medians["duckdb-full"]["deleted"],
            medians["duckdb-full"]["count"],
        ) and h["deleted"] == medians["duckdb-anti"]["deleted"]
        for tool in ("duckdb-anti", "duckdb-full"):
            d = medians[tool]
            print(
                f"{kind:8}{tool}/hygge: time {d['seconds'] / h['seconds']:.2f}x, "
                f"peak {d['peak_mb'] / h['peak_mb']:.2f}x"
            )
        print(f"{kind:8}counts {'agree' if agree else 'DISAGREE'}")
        if not agree:
            raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        tool, payload = sys.argv[2], json.loads(sys.argv[3])
        run = {"hygge": run_hygge, "hygge-state": run_state}.get(tool, run_duckdb)
        try:
            result = run(payload)
        finally:
            shutil.rmtree(payload["out"], ignore_errors=True)
        print(MARK + json.dumps(result), flush=True)
    else:
        main()

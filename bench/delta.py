"""The Delta Store's benchmarks (issue 14), each beside a hand-written `deltalake` script doing
the same work, in the same run:

    python -m bench.delta                              # 10M rows, median of 1, every workload
    python -m bench.delta --rows 1m --repeat 3 --only append,full_drop

- **append**: the bench table (`bench/data.py`, read with `ParquetFile.iter_batches`) appended
  to a table of 1,000 rows: `DeltaStore`'s writer and publish (stage, move into the table, one
  commit) against `write_deltalake(mode="append")` from the same reader;
- **full_drop**: the same rows replacing that table (`mode="replace"`, one overwrite commit)
  against `write_deltalake(mode="overwrite")`;
- **merge** / **merge_spread**: 1% of the rows changed (at 10M: 60k updates, 30k new keys, 10k
  deletes) merged into the table as hygge wrote it: `_delta_log.write_run` (de-duplication,
  the key-range predicate, deletes in the same commit) against a hand-written merge
  (`t.id = s.id`, a delete flag). `merge` changes recent keys (the newest 10%),
  `merge_spread` keys across the table;
- **flow**: a first full load as users run it, the hygge flow (ParquetHome -> DeltaStore,
  `full_drop`; its entity task's own seconds; Prefect at `PREFECT_API_URL`, else a temporary
  server) against `write_deltalake` into a new table.

Each run is its own process; the parent times it and takes its peak RSS as `bench.suite` does
(GNU time). Seconds are the work after imports and set-up (the seed table, the copy of the
merge target). Sources are built once under `--work` and reused. See `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import os
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
SEED = 1_000
GROUPS = ["append", "full_drop", "merge", "merge_spread", "flow"]
LABELS = {
    "append.hygge": "DeltaStore writer, append (one commit)",
    "append.deltalake": "write_deltalake(mode='append')",
    "full_drop.hygge": "DeltaStore writer, replace (one commit)",
    "full_drop.deltalake": "write_deltalake(mode='overwrite')",
    "merge.hygge": "write_run merge + deletes, recent keys",
    "merge.deltalake": "hand-written merge, recent keys",
    "merge_spread.hygge": "write_run merge + deletes, keys spread",
    "merge_spread.deltalake": "hand-written merge, keys spread",
    "flow.hygge": "hygge flow (full_drop), ParquetHome -> Delta",
    "flow.deltalake": "write_deltalake into a new table",
}


# -- one workload, in its own process -----------------------------------------------------------


def _batches(src: str) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(src).iter_batches(batch_size=BATCH)


def _hygge_write(out: Path, run_id: str, mode: str, batches: Any) -> int:
    from blocks import DeltaStore

    store = DeltaStore(path=str(out))
    writer = store.open_writer("orders", run_id, mode)  # type: ignore[arg-type]
    rows = 0
    for batch in batches:
        writer.write(batch)
        rows += batch.num_rows
    writer.commit_files({"watermark": run_id}, rows)
    store.mark_committed("orders", run_id)
    return rows


def run(name: str, args: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from blocks import DeltaStore
    from blocks.stores import _delta_log as log

    group, kind = name.split(".", 1)
    out = Path(args["out"])
    uri = str(out / "orders")
    src = args.get("src", "")
    if group == "flow":
        return _flow(kind, src, out)
    if group in ("append", "full_drop"):
        seed = pq.ParquetFile(src).read_row_group(0).slice(0, SEED)
        mode = "append" if group == "append" else "replace"
        if kind == "hygge":
            _hygge_write(out, "seed", "replace", seed.to_batches())
            start, cpu = time.perf_counter(), time.process_time()
            rows = _hygge_write(out, "r1", mode, _batches(src))
        else:
            write_deltalake(uri, seed)
            schema = pq.read_schema(src)
            start, cpu = time.perf_counter(), time.process_time()
            reader = pa.RecordBatchReader.from_batches(schema, _batches(src))
            write_deltalake(uri, reader, mode="append" if mode == "append" else "overwrite")
            rows = pq.ParquetFile(src).metadata.num_rows
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"rows": rows, "seconds": seconds, "cpu": cpu, "rows_after": _rows(uri)}
    changes, deletes = Path(args["changes"]), Path(args["deletes"])
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "hygge":
        store = DeltaStore(path=str(out))
        txn = log.next_txn(uri, None)
        metrics = log.write_run(
            uri,
            None,
            "merge",
            [changes],
            add_columns=False,
            keys=["id"],
            order=["created_at"],
            props=log.commit_properties("m1", txn, "orders"),
            writer=store._writer_properties(),
            name="orders",
            description="",
            deletes=[deletes],
        )
    else:
        # what a user writes by hand: the changes and the deleted keys, flagged, one merge
        upserts = pq.read_table(changes)
        gone = pq.read_table(deletes)
        flagged = pa.table(
            {
                f.name: gone.column(f.name) if f.name == "id" else pa.nulls(gone.num_rows, f.type)
                for f in upserts.schema
            }
        )
        source = pa.concat_tables(
            [
                upserts.append_column("deleted", pa.repeat(False, upserts.num_rows)),
                flagged.append_column("deleted", pa.repeat(True, gone.num_rows)),
            ]
        )
        merger = DeltaTable(uri).merge(source, "t.id = s.id", source_alias="s", target_alias="t")
        metrics = (
            merger.when_matched_delete("s.deleted")
            .when_matched_update_all("NOT s.deleted", except_cols=["deleted"])
            .when_not_matched_insert_all("NOT s.deleted", except_cols=["deleted"])
            .execute()
        )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    keep = ("num_target_rows_updated", "num_target_rows_inserted", "num_target_rows_deleted")
    changed = pq.ParquetFile(changes).metadata.num_rows + pq.ParquetFile(deletes).metadata.num_rows
    return {
        "rows": changed,
        "seconds": seconds,
        "cpu": cpu,
        "rows_after": _rows(uri),
        "files_scanned": metrics.get("num_target_files_scanned"),
        "files_skipped": metrics.get("num_target_files_skipped_during_scan"),
        **{k: metrics.get(k) for k in keep},
    }


def _flow(kind: str, src: str, out: Path) -> dict[str, Any]:
    """A first full load as users run it: the hygge flow (its entity task's own seconds), or
    `write_deltalake` into a new table from the same file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    if kind == "deltalake":
        start, cpu = time.perf_counter(), time.process_time()
        reader = pa.RecordBatchReader.from_batches(pq.read_schema(src), _batches(src))
        write_deltalake(str(out / "orders"), reader)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"rows": _rows(str(out / "orders")), "seconds": seconds, "cpu": cpu}
    from flows.run import hygge

    spec = {
        "name": "bench-delta",
        "home": {"type": "parquet"},
        "store": {"type": "delta", "path": str(out)},
        "run_type": "full_drop",
        "entities": [{"name": "orders", "path": src}],
    }
    cpu = time.process_time()
    summary = hygge(spec, return_state=True).result()
    # the flow's process also runs Prefect's client: its CPU is an upper bound of the task's
    return {
        "rows": summary[0]["rows"],
        "seconds": summary[0]["seconds"],
        "cpu": time.process_time() - cpu,
    }


def _rows(uri: str) -> int:
    import pyarrow as pa
    from deltalake import DeltaTable

    files = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    return int(pa.compute.sum(files.column("num_records")).as_py())


# -- sources ------------------------------------------------------------------------------------


def merge_target(work: Path, rows: int, src: Path) -> Path:
    """The bench table as hygge's Delta Store writes it (one full load), built once."""
    from blocks import DeltaStore

    per_file = DeltaStore.model_fields["max_rows_per_file"].default
    target = work / f"delta-target-{rows}-{per_file}"
    if not (target / "orders" / "_delta_log").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        _hygge_write(target, "load", "replace", _batches(str(src)))
    return target


def merge_changes(work: Path, rows: int, spread: bool) -> tuple[Path, Path]:
    """1% of the rows as changes (at 10M: 60k updates and 10k deletes of existing keys, the
    newest 10% of keys or spread over the table, and 30k new keys), as the writer stages
    them (UTC timestamps)."""
    import polars as pl

    folder = work / f"delta-changes-{rows}-{'spread' if spread else 'recent'}"
    changes, deletes = folder / "changes.parquet", folder / "deletes.parquet"
    if changes.exists() and deletes.exists():
        return changes, deletes
    folder.mkdir(parents=True, exist_ok=True)
    n = max(10, rows // 100)
    updates, inserts, gone = n * 6 // 10, n * 3 // 10, n // 10
    span = rows if spread else max(updates + gone, rows // 10)
    picked = orders(rows - span, span).gather_every(max(1, span // (updates + gone)))
    picked = picked.head(updates + gone)
    updated = picked.head(updates).with_columns(
        status=pl.lit("changed"), created_at=pl.col("created_at") + pl.duration(days=1)
    )
    frame = pl.concat([updated, orders(rows, inserts)]).with_columns(
        pl.col("created_at").dt.replace_time_zone("UTC")
    )
    frame.write_parquet(changes)
    picked.slice(updates).select("id").write_parquet(deletes)
    return changes, deletes


# -- the driver ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "run":
        result = run(sys.argv[2], json.loads(sys.argv[3]))
        print(MARK + json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.delta", description=__doc__)
    parser.add_argument("--rows", default="10m", help="rows of the bench table")
    parser.add_argument("--repeat", type=int, default=1, help="runs per workload (median)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"of {','.join(GROUPS)}")
    parser.add_argument("--work", help="where sources are kept (default: $TMPDIR/hygge-bench)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = parse_size(args.rows)
    groups = [g for g in args.only.split(",") if g]
    work = Path(args.work or Path(tempfile.gettempdir()) / "hygge-bench")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    src = write_parquet(work / f"rows-{rows}", rows)
    results: dict[str, dict[str, Any]] = {}
    for group in groups:
        wargs: dict[str, Any] = {"src": str(src)}
        target = None
        if group.startswith("merge"):
            target = merge_target(work, rows, src)
            changes, deletes = merge_changes(work, rows, group == "merge_spread")
            wargs = {"changes": str(changes), "deletes": str(deletes)}
        for kind in ("hygge", "deltalake"):
            name = f"{group}.{kind}"
            runs = []
            for _ in range(args.repeat):
                out = Path(tempfile.mkdtemp(prefix="hygge-bench-delta-", dir=work))
                try:
                    if target is not None:
                        shutil.rmtree(out)
                        shutil.copytree(target, out)
                    cmd = [sys.executable, "-m", "bench.delta", "run", name]
                    runs.append(measure([*cmd, json.dumps({**wargs, "out": str(out)})], env))
                finally:
                    shutil.rmtree(out, ignore_errors=True)
            results[name] = _median(runs)
            print(f"  {name}: {_line(results[name])}", flush=True)
    print()
    print(render(results, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    out["seconds"] = statistics.median(r["seconds"] for r in runs)
    out["command_seconds"] = statistics.median(r["command_seconds"] for r in runs)
    out["peak_mb"] = max(r["peak_mb"] for r in runs)
    out["cpu"] = statistics.median(r["cpu"] for r in runs)
    out["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return out


def _line(r: dict[str, Any]) -> str:
    extra = {k: v for k, v in r.items() if k.startswith(("num_", "files_", "rows_after"))}
    return (
        f"{r['seconds']:.2f} s ({r['all_seconds']}), CPU {r['cpu']:.2f} s, "
        f"{r['peak_mb']:.0f} MB, {extra}"
    )


def render(results: dict[str, dict[str, Any]], rows: int) -> str:
    head = (
        f"{'workload':<26} {'what':<42} {'seconds':>8} {'CPU s':>7} {'peak MB':>8} "
        f"{'hygge/this':>10}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        group = name.split(".", 1)[0]
        ours = results.get(f"{group}.hygge")
        ratio = ours and r["seconds"] / ours["seconds"]
        label = f"{group}.{size_label(rows)}.{name.split('.', 1)[1]}"
        lines.append(
            f"{label:<26} {LABELS[name]:<42} {r['seconds']:>8.2f} {r['cpu']:>7.2f} "
            f"{r['peak_mb']:>8.0f} {ratio:>10.2f}"
        )
    lines.append("hygge/this = this row's seconds over hygge's (>= 1: hygge is faster)")
    lines.append("targets:")

    def mark(ok: bool) -> str:
        return "met   " if ok else "MISSED"

    a, b = results.get("append.hygge"), results.get("append.deltalake")
    if a and b:
        x = b["seconds"] / a["seconds"]
        lines.append(f"  {mark(x >= 0.9)} append: {x:.2f}x write_deltalake (target >= 0.9x)")
    h, d = results.get("flow.hygge"), results.get("flow.deltalake")
    if h and d:
        x = d["seconds"] / h["seconds"]
        lines.append(f"  {mark(x >= 0.9)} first load as users run it: {x:.2f}x write_deltalake")
    f = results.get("full_drop.hygge")
    if a and f:
        x = f["seconds"] / a["seconds"]
        lines.append(f"  {mark(x <= 1.1)} full drop: {x:.2f}x the append's time (target <= 1.1x)")
    for group in ("merge", "merge_spread"):
        m, h = results.get(f"{group}.hygge"), results.get(f"{group}.deltalake")
        if m and h:
            x = m["seconds"] / h["seconds"]
            ok = x <= 1.5 and m["peak_mb"] < 1024
            lines.append(
                f"  {mark(ok)} {group}: {x:.2f}x the hand-written merge's time, peak "
                f"{m['peak_mb']:.0f} MB (targets <= 1.5x, < 1024 MB)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Parquet read from object storage: hygge's ParquetHome beside Polars' own scan, same run.

    python -m bench.cloud_read                    # 10 files x 1M rows, median of 3
    python -m bench.cloud_read --files 2 --rows 200000 --repeat 1

10 Parquet files (the orders table of `bench.data`, zstd) are uploaded once to Azurite and to
moto's S3 server (both on 127.0.0.1, started here as the tests start them). Each workload
runs in its own process and reads the folder into a local Parquet lake (zstd):
- hygge: the engine (`hygge_tasks.move.move`: list, footers, read, encode, publish) with a
  `ParquetHome` on the bucket or container and a `ParquetStore`;
- polars: `pl.scan_parquet("<s3|az>://.../parts/*.parquet", storage_options=...)` sunk with
  `sink_parquet(..., compression="zstd")`, the same URLs and options.
Both emulators share the machine's cores with the readers, so the ratio is what this
measures (target: hygge at >= 0.9x Polars' rows/s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _child(kind: str, place: str, home_json: str, out: str) -> dict[str, Any]:
    import logging

    import polars as pl

    from blocks import ParquetHome, ParquetStore
    from blocks.base import ReadRequest
    from blocks.homes._place import storage_options
    from hygge_tasks.entity import EntityPlan
    from hygge_tasks.move import move

    home = ParquetHome(**json.loads(home_json))
    request = ReadRequest(entity="orders", path="parts")
    start = time.perf_counter()
    if kind == "hygge":
        plan = EntityPlan(name="orders", request=request, mode="replace")
        store = ParquetStore(path=out)
        rows = move(plan, home, store, "bench", logging.getLogger("bench")).rows
    else:
        files = home.files(request)  # the options only: Polars lists the glob itself
        url = files[0].url.rsplit("/", 1)[0] + "/*.parquet"
        target = Path(out) / "polars.parquet"
        pl.scan_parquet(url, storage_options=storage_options(files)).sink_parquet(
            target, compression="zstd"
        )
        rows = pl.scan_parquet(target).select(pl.len()).collect().item()
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return {"seconds": seconds, "rows": rows, "rss_mb": int(peak.split()[1]) / 1024}


def _measure(
    kind: str, place: str, home: dict[str, Any], out: Path, env: dict[str, str]
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    args = [kind, place, json.dumps(home), str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.cloud_read", "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env} if kind == "hygge" else None,
    )
    if done.returncode != 0:
        msg = f"{kind} on {place} failed:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:  # one workload, in this process (`_measure`)
        print(json.dumps(_child(*argv[1:5])))
        return
    from bench.data import orders
    from tests.azurite import start_azurite
    from tests.s3_server import start_s3_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--hygge-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in hygge's process only (e.g. POLARS_ROW_GROUP_PREFETCH_SIZE=4)",
    )
    parser.add_argument("--places", default="s3,azurite")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.hygge_env)
    work = Path(tempfile.mkdtemp(prefix="hygge-cloud-bench-"))
    azurite, s3 = start_azurite(), start_s3_server()
    try:
        bucket, container = s3.new_bucket(), azurite.new_container()
        blobs, client = azurite.container(container), s3.client()
        for i in range(args.files):
            buf = io.BytesIO()
            orders(i * args.rows, args.rows).write_parquet(buf, compression="zstd")
            client.put_object(Bucket=bucket, Key=f"parts/part-{i:02d}.parquet", Body=buf.getvalue())
            blobs.upload_blob(f"parts/part-{i:02d}.parquet", buf.getvalue())
        places = {
            "s3": {"bucket": bucket, "aws_credentials": s3.credentials()},
            "azurite": {
                "container": container,
                "credentials": {"connection_string": azurite.connection_string},
            },
        }
        places = {p: places[p] for p in args.places.split(",")}
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for run in range(args.repeat):
            for place, home in places.items():
                for kind in ("polars", "hygge"):
                    out = work / f"{place}-{kind}-{run}"
                    results.setdefault((place, kind), []).append(
                        _measure(kind, place, home, out, env)
                    )
    finally:
        for proc in (azurite.process, s3.process):
            proc.terminate()
        shutil.rmtree(work, ignore_errors=True)  # about 2 GB of lakes per run
    total = args.files * args.rows
    print(
        f"Parquet from object storage, {args.files} files x {args.rows:,} rows, "
        f"median of {args.repeat} (emulators on 127.0.0.1)"
    )
    print(f"{'place':<8} {'reader':<7} {'seconds':>8} {'rows/s':>11} {'peak RSS':>9} {'ratio':>6}")
    for place in places:
        peer = statistics.median(r["seconds"] for r in results[(place, "polars")])
        for kind in ("polars", "hygge"):
            runs = results[(place, kind)]
            assert all(r["rows"] == total for r in runs), runs
            mid = statistics.median(r["seconds"] for r in runs)
            rss = max(r["rss_mb"] for r in runs)
            print(
                f"{place:<8} {kind:<7} {mid:>8.2f} {total / mid:>11,.0f} {rss:>8.0f}M "
                f"{peer / mid:>5.2f}x"
            )
    print("ratio = Polars' seconds / this reader's (target for hygge: >= 0.90x)")
    # each repeat ran the two readers back to back: their ratio shares that moment's load
    for place in places:
        pairs = zip(results[(place, "polars")], results[(place, "hygge")], strict=True)
        ratios = sorted(p["seconds"] / h["seconds"] for p, h in pairs)
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        mid = statistics.median(ratios)
        print(f"{place}: hygge / Polars per repeat: {shown}; median {mid:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])

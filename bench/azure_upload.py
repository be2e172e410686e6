"""Azure Store upload throughput against Azurite, beside raw Azure SDK baselines in the same run.

    python -m bench.azure_upload                 # 1M rows, median of 3
    python -m bench.azure_upload --rows 200000 --repeat 1

Workloads (each a separate process, so peak RSS is its own):
- hygge: the engine (`hygge_tasks.move.move`, no Prefect start-up) moving the bench Parquet
  file to an AdlsStore, i.e. read + encode + block upload + commit.
- script: what a hand-written script does: pyarrow `read_table`, `write_table` into memory,
  `upload_blob(..., max_concurrency=4)`.
- upload only: `upload_blob` of hygge's own output bytes (the network/emulator floor).

Azurite is single-threaded Node.js on the same 2 cores, so absolute MB/s say more about the
emulator than about Azure; the ratios are what this measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _child(kind: str, src: str, conn: str, container: str) -> dict[str, Any]:
    import io

    import pyarrow.parquet as pq
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(conn).get_container_client(container)
    if kind == "hygge":
        # imports (Prefect's included) before the clock: this measures the engine
        import logging

        from blocks import AdlsStore, ParquetHome
        from blocks.base import ReadRequest
        from hygge_tasks.entity import EntityPlan
        from hygge_tasks.move import move
    start = time.perf_counter()
    if kind == "hygge":
        store = AdlsStore(
            container=container,
            path="hygge",
            credentials={"connection_string": conn},  # type: ignore[arg-type]
        )
        plan = EntityPlan(
            name="orders", request=ReadRequest(entity="orders", path=src), mode="replace"
        )
        result = move(plan, ParquetHome(), store, "bench", logging.getLogger("bench"))
        rows, nbytes = result.rows, result.bytes
    elif kind == "script":
        table = pq.read_table(src)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        client.get_blob_client("script/orders.parquet").upload_blob(
            buf.getvalue(), overwrite=True, max_concurrency=4
        )
        rows, nbytes = table.num_rows, buf.tell()
    else:
        data = Path(src).read_bytes()
        client.get_blob_client("raw/orders.parquet").upload_blob(
            data, overwrite=True, max_concurrency=4
        )
        rows, nbytes = 0, len(data)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent
    hwm = next(x for x in Path("/proc/self/status").read_text().splitlines() if "VmHWM" in x)
    rss = int(hwm.split()[1]) / 1024
    return {"kind": kind, "seconds": seconds, "rows": rows, "bytes": nbytes, "rss_mb": rss}


def _run(kind: str, src: Path, conn: str, container: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.azure_upload", "--child", kind, str(src), conn, container],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return

    from bench.data import orders
    from tests.azurite import start_azurite

    work = Path(tempfile.mkdtemp(prefix="hygge-azure-bench-"))
    src = work / "orders.parquet"
    orders(0, args.rows).write_parquet(src, compression="zstd")
    server = start_azurite()
    try:
        container = server.new_container()
        results: dict[str, list[dict[str, Any]]] = {"hygge": [], "script": [], "upload": []}
        for _ in range(args.repeat):
            for kind in results:
                results[kind].append(_run(kind, src, server.connection_string, container))
    finally:
        server.process.terminate()
    mid = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    size = {k: v[0]["bytes"] for k, v in results.items()}
    print(f"Azure upload, {args.rows:,} rows, median of {args.repeat} (Azurite on 127.0.0.1)")
    print(
        f"{'workload':<10} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} {'peak RSS':>9} {'ratio':>6}"
    )
    for kind in results:
        rows = results[kind][0]["rows"]
        rps = f"{rows / mid[kind]:,.0f}" if rows else "-"
        mbs = size[kind] / mid[kind] / 1e6
        rss = max(r["rss_mb"] for r in results[kind])
        ratio = mid["script"] / mid[kind]
        print(f"{kind:<10} {mid[kind]:>8.2f} {rps:>10} {mbs:>7.1f} {rss:>8.0f}M {ratio:>5.2f}x")
    print("ratio = the script's seconds / this workload's seconds (>1: faster than the script)")


if __name__ == "__main__":
    main()

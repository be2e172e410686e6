"""Memory as tables grow (issue 20): hygge's whole command at 1M, 10M and 100M rows.

    python -m bench.scale                         # 1M and 10M, Parquet parts, CSV, SQLite
    python -m bench.scale --with-100m --groups parts   # and 100M (10 parts of 10M, ~5 GB)

Each run is its own process, as in the suite (`bench/suite.py`): peak RSS of the whole command
from GNU time, beside the same-run baseline reading the same source (Polars' own sink; for
SQLite, ADBC into Polars' sink). The ratio is each row's peak at a size over its peak at 10M
rows; the target is <= 1.25x and < 600 MB at 100M. Sources are generated once under `--work`
(`bench/data.py`) and kept; `--clean` removes the 100M ones afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import write_csv, write_parts, write_sqlite  # noqa: E402
from bench.suite import PrefectServer, Result, parse_size, run_workload, size_label  # noqa: E402

#: group -> (the suite's workload group, workloads run); the first is hygge's default path
GROUPS: dict[str, tuple[str, list[str]]] = {
    "parts": ("parquet_parts", ["hygge", "hygge_reencode", "polars_sink"]),
    "csv": ("csv", ["hygge", "polars_sink"]),
    "sqlite": ("sqlite", ["hygge", "adbc_polars"]),
}
BASE = 10_000_000  # the ratio's denominator
BIG = 100_000_000
TARGET_RATIO, TARGET_MB = 1.25, 600
#: free disk needed for 100M rows per group (sources; the output is about as large again)
DISK_GB = {"parts": 11, "csv": 25, "sqlite": 23}


def source(work: Path, group: str, rows: int) -> Path:
    where = work / f"rows-{rows}"
    if group == "parts":
        return write_parts(where, rows)
    if group == "csv":
        return write_csv(where, rows)
    return write_sqlite(where, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="1m,10m", help="row counts, e.g. 1m,10m,30m")
    parser.add_argument("--with-100m", action="store_true", help="add 100M rows (~5 GB of parts)")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"of {','.join(GROUPS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per workload (largest peak)")
    parser.add_argument("--work", help="where generated sources are kept (default: $TMPDIR)")
    parser.add_argument("--clean", action="store_true", help="delete the 100M sources after")
    args = parser.parse_args(argv)

    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    if args.with_100m:
        sizes = sorted({*sizes, BIG})
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    work = Path(args.work or Path(tempfile.gettempdir()) / "hygge-bench")
    work.mkdir(parents=True, exist_ok=True)
    if BIG in sizes and not (work / f"rows-{BIG}").exists():
        need = sum(DISK_GB[g] for g in groups)
        free = shutil.disk_usage(work).free / 1e9
        if free < need:
            parser.error(f"100M rows of {','.join(groups)} need ~{need} GB; {free:.0f} GB free")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = PrefectServer(work / "prefect-home-sqlite")
    env["PREFECT_API_URL"] = server.url
    results: list[Result] = []
    try:
        for group in groups:
            suite_group, names = GROUPS[group]
            for size in sizes:
                src = source(work, group, size)
                for name in names:
                    wargs: dict[str, Any] = {"src": str(src)}
                    full = f"{suite_group}.{name}"
                    res = run_workload(suite_group, size, full, wargs, args.repeat, env)
                    results.append(res)
                    print(
                        f"  {group} {size_label(size)} {name}: {res.rows:,} rows, "
                        f"command {res.command_seconds:.1f} s, {res.peak_mb:.0f} MB",
                        flush=True,
                    )
    finally:
        server.stop()
        if args.clean:
            shutil.rmtree(work / f"rows-{BIG}", ignore_errors=True)
    print()
    print(render(results))
    return 1 if any(r.error for r in results) else 0


def render(results: list[Result]) -> str:
    sizes = sorted({r.size for r in results})
    head = f"{'workload':<30}" + "".join(f"{size_label(s) + ' MB':>10}" for s in sizes)
    head += "".join(f"{size_label(s) + '/10M':>10}" for s in sizes if s != BASE)
    lines = [head, "-" * len(head)]
    checks = []
    for name in dict.fromkeys(r.name for r in results):
        peak = {r.size: r.peak_mb for r in results if r.name == name and not r.error}
        line = f"{name:<30}" + "".join(
            f"{peak[s]:>10.0f}" if s in peak else f"{'-':>10}" for s in sizes
        )
        for s in sizes:
            if s == BASE:
                continue
            ok = s in peak and BASE in peak
            line += f"{peak[s] / peak[BASE]:>10.2f}" if ok else f"{'-':>10}"
        lines.append(line)
        if ".hygge" in name and BIG in peak and BASE in peak:
            ratio = peak[BIG] / peak[BASE]
            met = ratio <= TARGET_RATIO and peak[BIG] < TARGET_MB
            checks.append(
                f"  [{'met' if met else 'MISSED'}] {name} 100M / 10M: {peak[BIG]:.0f} / "
                f"{peak[BASE]:.0f} MB = {ratio:.2f}x (target <= {TARGET_RATIO}x and "
                f"< {TARGET_MB} MB)"
            )
    lines.append("peak MB = peak RSS of the whole command (GNU time); X/10M = its peak over 10M's")
    return "\n".join(lines + checks)


if __name__ == "__main__":
    raise SystemExit(main())

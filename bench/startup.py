"""How long a newcomer waits: the example's commands from a fresh HOME, as a user types them.

    python -m bench.startup [--repeat N] [--work DIR]

Each command is a whole process with a new empty HOME and no PREFECT_* settings (a machine
that never ran Prefect), timed beside `python -c "import prefect"` in the same run:
- cold: the first `python -m flows.run` (builds the example database, starts hygge's local
  Prefect server, which creates its own database, and moves 1.35M rows);
- warm: the same command again, measured after one unmeasured repeat (the server is reused;
  0 new rows for the incremental tables);
- dry run: `python -m flows.run --dry-run`;
- history: `python -m flows.run --history`.
The server is stopped at the end. Medians of N (cold: N fresh HOMEs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: issue 13's targets, seconds of wall time on 2 cores
TARGETS = {"cold": 30.0, "warm": 6.0, "dry run": 3.0, "history": 3.0}
COMMANDS = {
    "import prefect": [sys.executable, "-c", "import prefect"],
    "cold": [sys.executable, "-m", "flows.run"],
    "warm": [sys.executable, "-m", "flows.run"],
    "dry run": [sys.executable, "-m", "flows.run", "--dry-run"],
    "history": [sys.executable, "-m", "flows.run", "--history"],
}


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HYGGE_"))}
    return {**env, "HOME": str(home)}


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        msg = f"{' '.join(command[1:])} exited {done.returncode}:\n{done.stderr[-2000:]}"
        raise SystemExit(msg)
    return seconds


def stop_server(home: Path) -> None:
    record = home / ".prefect" / "hygge-server" / "server.json"
    if record.exists():
        pid = int(json.loads(record.read_text())["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hygge-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    homes = []
    try:
        for i in range(args.repeat):
            # a fresh machine each time: new HOME, new folder (example database, lake)
            home, cwd = work / f"home-{i}", work / f"cwd-{i}"
            for folder in (home, cwd):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
            homes.append(home)
            env = env_for(home)
            times["import prefect"].append(timed(COMMANDS["import prefect"], cwd, env))
            times["cold"].append(timed(COMMANDS["cold"], cwd, env))
            for name in ("warm", "dry run", "history"):
                timed(COMMANDS[name], cwd, env)  # once to warm the page cache
                times[name].append(timed(COMMANDS[name], cwd, env))
            if i + 1 < args.repeat:
                stop_server(home)
    finally:
        for home in homes:
            stop_server(home)
    base = statistics.median(times["import prefect"])
    print(f"{'command':<16}{'median s':>10}{'min s':>8}{'x import prefect':>18}{'target':>9}  met")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        met = "" if target is None else ("yes" if median <= target else "NO")
        shown = f"{target:.0f} s" if target else ""
        print(
            f"{name:<16}{median:>10.2f}{min(values):>8.2f}{median / base:>18.2f}{shown:>9}  {met}"
        )


if __name__ == "__main__":
    main()

"""The README's deployment sequence, run exactly as written, on a fresh clone (slow).

The shell blocks of "Run on a Prefect server" (each follows a `<!-- deploy:NAME -->` line) run
with bash in a `git clone` of this checkout, with its uncommitted changes copied over, a new
empty HOME and no Prefect settings: hygge's local Prefect server, a process worker in a second
"terminal" that inherits nothing from the first, the deployments of prefect.yaml, saved blocks
and `prefect deployment run --watch`, all on 127.0.0.1. One stand-in: the clone's
`.venv/bin/activate` puts this interpreter first on PATH and the clone on PYTHONPATH (what
"Start here" sets up with `pip install -e .`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BLOCKS = ["server", "worker", "run-example", "save-blocks", "run-blocks", "stop"]
#: rows of the bundled example's tables (flows/example.py)
EXAMPLE_ROWS = {"orders": 1_000_000, "order_lines": 300_000, "customers": 50_000, "products": 500}


def readme_blocks() -> dict[str, str]:
    """The README's deployment shell blocks, by the name in the comment before each."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"<!-- deploy:([a-z-]+) -->\n```bash\n(.*?)```", text, flags=re.S)
    return dict(found)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def fresh_clone(dest: Path) -> Path:
    """`git clone` this checkout, then lay its uncommitted changes and new files over it."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)
    changed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for rel in filter(None, changed.split("\0")):
        src, dst = REPO / rel, dest / rel
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        else:
            dst.unlink(missing_ok=True)  # deleted here, not yet committed
    return dest


@dataclass
class Terminal:
    """One shell session: blocks run one after another and keep its exports and directory."""

    cwd: Path
    env: dict[str, str]
    state: Path
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def run(self, name: str, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # each block's exports carry over to the next, as in a terminal
        keep = f"export -p | grep -v '^declare -[a-z]*r' > {self.state}"
        wrapped = f". {self.state}\n{script}\n{keep}"
        result = subprocess.run(
            ["bash", "-e", "-c", wrapped],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.results[name] = result
        return result


@dataclass
class Sequence:
    clone: Path
    home: Path
    port: int
    blocks: dict[str, str]
    term: Terminal
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None

    def python(self, code: str) -> str:
        result = self.term.run("python", f"python - <<'EOF'\n{code}\nEOF", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def deployment_run(self, name: str, *params: str) -> subprocess.CompletedProcess[str]:
        args = " ".join(f"--param '{p}'" for p in params)
        return self.term.run("deployment", f"prefect deployment run '{name}' {args} --watch")

    def worker_output(self) -> str:
        assert self.worker_log is not None
        return self.worker_log.read_text(errors="replace")


def _base_env(home: Path) -> dict[str, str]:
    """A newcomer's environment: no Prefect settings, no virtualenv, a new empty HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "HYGGE_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN
    )
    env.update(
        HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",  # the worker looks for runs every second, not 10
    )
    return env


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _server_record(home: Path) -> dict[str, object] | None:
    """hygge's record of its local server (flows/local_server.py), if it wrote one."""
    path = home / ".prefect" / "hygge-server" / "server.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sequence]:
    """The README's sequence up to (not including) stopping the worker and the server."""
    blocks = readme_blocks()
    assert list(blocks) == BLOCKS, f"the README's deployment blocks changed: {list(blocks)}"
    root = tmp_path_factory.mktemp("newcomer")
    clone = fresh_clone(root / "hygge")
    home = root / "home"
    home.mkdir()
    activate = clone / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(
        "# stands in for the virtualenv of 'Start here': this interpreter, and this clone\n"
        f'export VIRTUAL_ENV="{VENV_BIN.parent}"\n'
        f'export PATH="{VENV_BIN}:$PATH"\n'
        f'export PYTHONPATH="{clone}"\n',
        encoding="utf-8",
    )
    env = _base_env(home)
    state = root / "terminal-1.sh"
    state.write_text(f". {activate}\n", encoding="utf-8")  # terminal 1 has the venv active
    seq = Sequence(clone, home, 0, blocks, Terminal(clone, env, state))
    try:
        result = seq.term.run("server", blocks["server"])
        assert result.returncode == 0, result.stdout + result.stderr
        record = _server_record(home)
        assert record is not None, "`hygge server start` left no record"
        seq.port = int(str(record["port"]))
        # terminal 2 starts from the newcomer's environment, not from terminal 1's
        seq.worker_log = root / "worker.log"
        seq.worker = subprocess.Popen(
            ["bash", "-e", "-c", blocks["worker"]],
            cwd=clone,
            env=env,
            stdout=seq.worker_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        for name in ("run-example", "save-blocks", "run-blocks"):
            seq.term.run(name, blocks[name])
            if seq.term.results[name].returncode != 0:
                break  # the first test reports it, with the worker's log
        yield seq
    finally:
        if seq.worker is not None and seq.worker.poll() is None:
            _stop_group(seq.worker)
        record = _server_record(home)
        if record is not None:  # not stopped by the last test: stop the server it started
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(str(record["pid"])), signal.SIGTERM)


def test_the_readme_sequence_runs_as_written(sequence: Sequence) -> None:
    for name in ("server", "run-example", "save-blocks", "run-blocks"):
        result = sequence.term.results.get(name)
        assert result is not None, f"block {name!r} never ran"
        assert result.returncode == 0, (
            f"block {name!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
            f"worker:\n{sequence.worker_output()[-4000:]}"
        )
    assert "Completed" in sequence.term.results["run-example"].stdout
    assert "Completed" in sequence.term.results["run-blocks"].stdout

    # the first deployment run created the example database in the checkout, nowhere else
    assert (sequence.clone / "example_data" / "shop.sqlite").is_file()
    assert "creating the example database" in sequence.worker_output()
    assert not (sequence.home / "example_data").exists()
    for lake in (sequence.clone / "lake", sequence.home / "hygge-lake" / "shop"):
        for entity, rows in EXAMPLE_ROWS.items():
            files = sorted((lake / entity).glob("*.parquet"))
            assert pl.read_parquet(files).height == rows, (lake, entity)

    ledgers = json.loads(
        sequence.python(
            "import json\n"
            "from blocks import WatermarkLedger\n"
            "names = ['hygge-ledger-shop-to-lake', 'hygge-ledger-shop-to-lake-blocks']\n"
            "print(json.dumps({n: sorted(WatermarkLedger.load(n).value) for n in names}))"
        )
    )
    assert ledgers == {
        "hygge-ledger-shop-to-lake": sorted(EXAMPLE_ROWS),
        "hygge-ledger-shop-to-lake-blocks": sorted(EXAMPLE_ROWS),
    }


def test_the_next_run_on_the_worker_continues_from_the_ledger(sequence: Sequence) -> None:
    db = sequence.clone / "example_data" / "shop.sqlite"
    lake = sequence.home / "hygge-lake" / "shop"
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO orders SELECT order_id + 1000000, customer_id, status, amount, "
        "discount, note, order_date, '2030-01-01 00:00:00' FROM orders WHERE order_id <= 10"
    )
    con.execute(
        "UPDATE orders SET status = 'refunded', updated_at = '2030-01-01 00:00:00' "
        "WHERE order_id <= 5"
    )
    con.commit()
    con.close()
    result = sequence.deployment_run("hygge/shop-example-blocks", "concurrency=2")
    assert result.returncode == 0, result.stdout + result.stderr
    orders = pl.read_parquet(sorted((lake / "orders").glob("*.parquet")))
    assert orders.height == 1_000_000 + 15  # appended: 5 changed rows (as new versions) + 10 new
    assert orders.filter(pl.col("status") == "refunded").height == 5
    ledger = json.loads(
        sequence.python(
            "import json\n"
            "from blocks import WatermarkLedger\n"
            "print(json.dumps(WatermarkLedger.load('hygge-ledger-shop-to-lake-blocks').value))"
        )
    )
    assert ledger["orders"]["watermark"]["value"] == "2030-01-01T00:00:00"
    assert ledger["orders"]["watermark"]["boundary"] == sorted(
        [str(i) for i in range(1, 6)] + [str(i) for i in range(1_000_001, 1_000_011)]
    )


def test_two_runs_of_the_scheduled_deployment_never_overlap(sequence: Sequence) -> None:
    states = json.loads(
        sequence.python(
            """
import json, time
from prefect import get_client
from prefect.deployments import run_deployment

d = get_client(sync_client=True).read_deployment_by_name('hygge/shop-example-blocks')
limit = [d.global_concurrency_limit.limit, d.concurrency_options.collision_strategy.value]
runs = [run_deployment('hygge/shop-example-blocks', timeout=0) for _ in range(2)]
deadline = time.monotonic() + 180
while True:
    with get_client(sync_client=True) as client:
        states = [client.read_flow_run(r.id).state for r in runs]
    if all(s.is_final() for s in states) or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps({"limit": limit, "states": sorted(s.type.value for s in states)}))
"""
        )
    )
    assert states["limit"] == [1, "CANCEL_NEW"]
    assert states["states"] == ["CANCELLED", "COMPLETED"]


def test_a_failing_entity_fails_the_deployment_run(sequence: Sequence) -> None:
    db = sequence.clone / "example_data" / "shop.sqlite"
    bad = sequence.home / "bad.yaml"
    bad.write_text(
        "name: failing\n"
        f"home: {{type: sqlite, path: {db}}}\n"
        f"store: {{type: parquet, path: {sequence.home / 'bad-lake'}}}\n"
        "retries: 0\n"
        "entities:\n  - {name: products, table: products}\n  - {name: ghost, table: ghost}\n",
        encoding="utf-8",
    )
    result = sequence.deployment_run("hygge/shop-example", f"spec={bad}")
    assert result.returncode != 0
    assert "Failed" in result.stdout + result.stderr
    # the healthy entity still landed
    products = sorted((sequence.home / "bad-lake" / "products").glob("*.parquet"))
    assert pl.read_parquet(products).height == 500


def test_the_worker_and_the_server_stop_as_the_readme_says(sequence: Sequence) -> None:
    worker = sequence.worker
    assert worker is not None and worker.poll() is None, sequence.worker_output()[-3000:]
    # "Ctrl-C twice": two SIGINTs to the terminal's foreground process group
    for _ in range(2):
        os.killpg(worker.pid, signal.SIGINT)
        time.sleep(1)
    worker.wait(timeout=30)
    result = sequence.term.run("stop", sequence.blocks["stop"])
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 30
    while _port_open(sequence.port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _port_open(sequence.port), "the server still answers after `hygge server stop`"
    assert _server_record(sequence.home) is None

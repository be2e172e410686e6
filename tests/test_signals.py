"""Ctrl-C and SIGTERM stop a real run within 10 s, say what was kept, and leave nothing running.

Each test starts a real `python -m flows.run` (or the `hygge` console script) in its own
process group on a SQLite source of three tables, slowed by a per-batch fault point so that
`orders` and `order_lines` are mid-flight when `customers` has committed. It sends the signal
(to the process group, as a terminal's Ctrl-C does, or to the main process only), and checks
the exit time, the exit code, the one line, that no process the run started is left (by pid,
and that the temporary Prefect server's port no longer listens), and then that a rerun leaves
the destination equal to the source, row for row.

Prefect's own temporary server (`HYGGE_LOCAL_SERVER=0`) is the one a signal could orphan;
hygge's local server runs in its own session for later commands and must survive a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml

from flows import interrupts
from hygge_core import stop
from hygge_core.errors import InterruptError

REPO = Path(__file__).resolve().parents[1]
HYGGE_SCRIPT = Path(sys.executable).parent / "hygge"
TABLES = {"customers": 500, "orders": 60_000, "order_lines": 90_000}
#: every batch of 1,000 rows waits this long while a signal is due: 60+ s per table in all
SLOW = "stage.after_batch:sleep0.25"
LINE = (
    "hygge: interrupted: orders and order_lines not published; customers committed; "
    "rerun to continue"
)
BOUND = 10.0


@pytest.fixture
def board() -> Iterator[None]:
    """A clean stop request and board, and clean again afterwards."""
    stop.clear()
    interrupts.clear()
    try:
        yield
    finally:
        stop.clear()
        interrupts.clear()


def test_the_line_names_each_entity_by_what_happened_to_it(board: None) -> None:
    interrupts.plan(["customers", "orders", "order_lines", "items", "mirror"])
    interrupts.mark("mirror", "staged")  # its Store publishes after a wait
    interrupts.mark("customers", "committed")
    interrupts.mark("items", "published")
    interrupts.mark("items", "failed")  # a failed ledger save: the data stays published
    assert interrupts.line() == (
        "interrupted: orders and order_lines not published; mirror staged (the rerun publishes "
        "it); items published (the rerun commits its watermark); customers committed; rerun to "
        "continue"
    )
    interrupts.mark("items", "committed")
    assert interrupts.line().endswith("; customers and items committed; rerun to continue")


def test_the_line_before_any_entity_and_with_many(board: None) -> None:
    assert interrupts.line() == (
        "interrupted: no entity had started; nothing was published; rerun to continue"
    )
    interrupts.plan([f"e{i}" for i in range(9)])
    assert interrupts.line() == (
        "interrupted: e0, e1, e2, e3, e4 and 4 more not published; rerun to continue"
    )


def test_a_stop_request_stops_a_move_and_is_never_retried(board: None) -> None:
    stop.check("orders")  # nothing asked yet
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGINT)  # the first signal is the one that counts
    assert stop.requested() == signal.SIGTERM
    assert interrupts.exit_code() == 143
    with pytest.raises(InterruptError, match="entity 'orders': stopped by SIGTERM") as info:
        stop.check("orders")
    assert stop.is_interrupt(info.value)
    # a library's own KeyboardInterrupt (Polars stops on Ctrl-C), wrapped by a Store
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            msg = "cannot write Parquet: KeyboardInterrupt"
            raise OSError(msg) from exc
    except OSError as wrapped:
        assert stop.is_interrupt(wrapped)
    assert not stop.is_interrupt(ValueError("a real failure"))


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Prefect home for the module: its database is created once, by the first run."""
    home = tmp_path_factory.mktemp("prefect-home")
    try:
        yield home
    finally:
        record = home / "hygge-server" / "server.json"
        if record.exists():  # hygge's local server, started by a test below
            pid = int(json.loads(record.read_text())["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)


@dataclass
class Shop:
    """A SQLite source of three tables, a Parquet lake, and the run that moves one to the other."""

    root: Path
    prefect_home: Path
    local_server: bool = False
    output: list[str] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.root / "shop.sqlite"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    def create(self) -> None:
        con = sqlite3.connect(self.db)
        for name, count in TABLES.items():
            con.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, ts TEXT, v REAL, s TEXT)")
            con.executemany(
                f"INSERT INTO {name} VALUES (?, ?, ?, ?)",
                (
                    (
                        i,
                        f"2024-01-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:00",
                        i / 4,
                        f"{name} {i}",
                    )
                    for i in range(count)
                ),
            )
        con.commit()
        con.close()
        spec = {
            "name": f"signals-{self.root.name}",
            "home": {"type": "sqlite", "path": str(self.db)},
            "store": {"type": "parquet", "path": str(self.lake)},
            "concurrency": 3,
            "retries": 2,
            "retry_delay_seconds": 1,
            "defaults": {"batch_size": 1000},
            "entities": [
                {"name": name, "table": name, "watermark": {"column": "ts", "keys": ["id"]}}
                for name in TABLES
            ],
        }
        self.spec.write_text(yaml.safe_dump(spec), encoding="utf-8")

    def env(self, slow: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HYGGE_"))}
        env.update(
            PREFECT_HOME=str(self.prefect_home),
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            HYGGE_LOCAL_SERVER="1" if self.local_server else "0",
        )
        if slow:
            env["HYGGE_FAULT"] = SLOW
        return env

    def start(self, command: list[str], slow: bool) -> subprocess.Popen[str]:
        self.output = []
        process = subprocess.Popen(
            [*command, "--spec", str(self.spec)],
            cwd=self.root,
            env=self.env(slow),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives a command
        )
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: self.output.extend(stream), daemon=True).start()
        return process

    def mid_flight(self, process: subprocess.Popen[str], timeout: float = 300) -> None:
        """Wait until customers is committed while orders and order_lines are staging."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.poll() is None, "".join(self.output)
            staging = self.lake / "_staging"
            if (
                self.committed("customers")
                and (staging / "orders").exists()
                and (staging / "order_lines").exists()
            ):
                return
            time.sleep(0.1)
        raise AssertionError("the run never got mid-flight:\n" + "".join(self.output))

    def committed(self, entity: str) -> bool:
        for path in (self.lake / "_manifests" / entity).glob("*.json"):
            try:
                if json.loads(path.read_text())["state"] == "committed":
                    return True
            except (OSError, ValueError, KeyError):
                continue
        return False

    def assert_exact(self) -> None:
        con = sqlite3.connect(self.db)
        for name in TABLES:
            want = con.execute(f"SELECT id, ts, v, s FROM {name} ORDER BY id").fetchall()
            files = sorted((self.lake / name).glob("*.parquet"))
            got = pl.read_parquet(files).sort("id")
            assert got.height == len(want), f"{name}: {got.height} rows, source {len(want)}"
            assert got["id"].n_unique() == got.height, f"{name}: duplicated rows"
            assert got.select("id", "ts", "v", "s").rows() == want, name
        con.close()
        assert not (self.lake / "_staging").exists() or not any(
            (self.lake / "_staging").rglob("*.parquet")
        ), "staging debris left"


def _ts(i: int) -> str:
    # a minute per 60 ids: every batch ends inside a run of ties
    return f"2024-01-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:00"


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            out[child] = cmdline.replace(b"\0", b" ").decode(errors="replace")
            todo.append(child)
    return out


def running(pid: int) -> bool:
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False
    return "zombie" not in status.lower()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_of(cmdline: str) -> int | None:
    words = cmdline.split()
    return int(words[words.index("--port") + 1]) if "--port" in words else None


@dataclass(frozen=True)
class Case:
    command: str  # "flows.run" or "hygge"
    signum: int
    group: bool  # to the process group (a terminal's Ctrl-C), or the main process only


CASES = [
    pytest.param(Case("flows.run", signal.SIGINT, True), id="ctrl-c-to-the-group"),
    pytest.param(Case("flows.run", signal.SIGTERM, True), id="sigterm-to-the-group"),
    pytest.param(Case("flows.run", signal.SIGTERM, False), id="sigterm-to-the-main-process"),
    pytest.param(Case("hygge", signal.SIGINT, True), id="hygge-run-ctrl-c"),
    pytest.param(Case("hygge", signal.SIGTERM, False), id="hygge-run-sigterm-to-main"),
]


def command_of(case: Case) -> list[str]:
    if case.command == "hygge":
        assert HYGGE_SCRIPT.exists(), f"the console script is not installed: {HYGGE_SCRIPT}"
        return [str(HYGGE_SCRIPT), "run"]
    return [sys.executable, "-m", "flows.run"]


@pytest.mark.kill  # runs stopped half-way by signals, as the SIGKILL tests stop them
@pytest.mark.parametrize("case", CASES)
def test_signal_stops_the_run_within_10_s_and_the_rerun_is_exact(
    case: Case, tmp_path: Path, prefect_home: Path
) -> None:
    # `hygge run` as a new user has it: hygge's local server; flows.run on Prefect's own
    shop = Shop(tmp_path, prefect_home, local_server=case.command == "hygge")
    shop.create()
    process = shop.start(command_of(case), slow=True)
    try:
        shop.mid_flight(process)
        started = descendants(process.pid)
        sent = time.monotonic()
        if case.group:
            os.killpg(process.pid, case.signum)
        else:
            process.send_signal(case.signum)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after the signal:\n{''.join(shop.output)}")
        took = time.monotonic() - sent
        print(f"{case}: exit {process.returncode} {took:.2f} s after the signal")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    time.sleep(0.3)  # the output thread reads the last lines
    out = "".join(shop.output)
    assert took < BOUND, f"exited {took:.1f} s after the signal\n{out}"
    assert process.returncode == 128 + case.signum, out
    # the one line, once; only Prefect's log records of the last moments may come after it
    lines = out.splitlines()
    assert lines.count(LINE) == 1, out
    assert all(_is_log_record(x) for x in lines[lines.index(LINE) + 1 :]), out
    assert "Traceback" not in out, out

    # nothing the run started is left: no temporary server, no child of any kind
    server = _local_server_pid(prefect_home) if shop.local_server else None
    kept = {} if server is None else {server, *descendants(server)}
    for pid, cmdline in started.items():
        if pid in kept:
            continue
        assert not running(pid), f"left running: {pid} {cmdline}"
        port = port_of(cmdline)
        if port is not None:
            assert not listening(port), f"port {port} still listens ({cmdline})"
    if server is not None:
        # hygge's own server is in its own session: the Ctrl-C did not reach it, later runs
        # reuse it (`hygge server stop` stops it)
        assert running(server)

    # nothing of the interrupted entities is visible; customers is committed
    assert not list((shop.lake / "orders").glob("*.parquet"))
    assert not list((shop.lake / "order_lines").glob("*.parquet"))
    assert shop.committed("customers")

    rerun = shop.start(command_of(case), slow=False)
    assert rerun.wait(timeout=300) == 0, "".join(shop.output)
    shop.assert_exact()
    if server is not None:
        assert _local_server_pid(prefect_home) == server, "the rerun started another server"


def _is_log_record(line: str) -> bool:
    """A Prefect console log record (`07:26:32.581 | INFO | ...`), or an empty line."""
    return not line.strip() or (line[:2].isdigit() and " | " in line)


def _local_server_pid(prefect_home: Path) -> int | None:
    record = prefect_home / "hygge-server" / "server.json"
    return int(json.loads(record.read_text())["pid"]) if record.exists() else None


@pytest.mark.kill
def test_a_second_ctrl_c_stops_the_run_at_once_and_the_rerun_is_exact(
    tmp_path: Path, prefect_home: Path
) -> None:
    shop = Shop(tmp_path, prefect_home)
    shop.create()
    process = shop.start(command_of(Case("flows.run", signal.SIGINT, True)), slow=True)
    try:
        shop.mid_flight(process)
        started = descendants(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.05)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # the impatient user
        process.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    out = "".join(shop.output)
    # the run either was still stopping (killed by the default handler now back in place)
    # or had just finished stopping on its own
    assert process.returncode in (-signal.SIGINT, 130), out
    assert took < 2.0, f"the second Ctrl-C took {took:.1f} s\n{out}"
    time.sleep(0.5)
    for pid, cmdline in started.items():
        assert not running(pid), f"left running: {pid} {cmdline}"
    rerun = shop.start(command_of(Case("flows.run", signal.SIGINT, True)), slow=False)
    assert rerun.wait(timeout=300) == 0, "".join(shop.output)
    shop.assert_exact()

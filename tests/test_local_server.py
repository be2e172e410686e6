"""A newcomer's machine: the README's example command with a new empty HOME and no Prefect
settings, and the local Prefect server that hygge starts for it and reuses.

Every command here is a real process with a real `prefect server start` behind it; each test
stops the server it caused in `finally`, by the pid hygge recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import make_events_db
from tests.flow_helpers import events_rows, spec_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HYGGE = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())"]


def newcomer_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a machine that never ran Prefect: no PREFECT_* at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("HYGGE_LOCAL_SERVER", None)
    return {**env, "HOME": str(home), **extra}


def record_of(home: Path) -> dict[str, object] | None:
    path = home / ".prefect" / "hygge-server" / "server.json"
    return json.loads(path.read_text()) if path.exists() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/status").read_text().lower()
    return ""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A new empty HOME; whatever server hygge starts in it is stopped afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield home
    finally:
        record = record_of(home)
        if record is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(record["pid"]), signal.SIGKILL)  # type: ignore[call-overload]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_readme_example_on_a_fresh_machine_runs_then_reuses_one_server(
    tmp_path: Path, home: Path
) -> None:
    env = newcomer_env(home)
    first = run([sys.executable, "-m", "flows.run"], tmp_path, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert "starting a local Prefect server" in first.stderr
    # the summary, once, with every entity committed
    assert first.stdout.count("entity       status") == 1, first.stdout
    for entity, rows in [("orders", "1,000,000"), ("order_lines", "300,000")]:
        line = next(ln for ln in first.stdout.splitlines() if ln.startswith(entity + " "))
        assert " ok " in line and rows in line, line
    lake = tmp_path / "lake"
    got = pl.scan_parquet(lake / "orders" / "*.parquet").select(pl.len()).collect().item()
    assert got == 1_000_000
    record = record_of(home)
    assert record is not None and alive(int(record["pid"]))  # type: ignore[call-overload]

    # later commands find the same server: no new one, and the ledger is remembered
    second = run([sys.executable, "-m", "flows.run"], tmp_path, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "starting a local Prefect server" not in second.stderr
    orders = next(ln for ln in second.stdout.splitlines() if ln.startswith("orders "))
    assert " append " in orders and " 0 " in orders, orders
    dry = run([sys.executable, "-m", "flows.run", "--dry-run"], tmp_path, env)
    assert dry.returncode == 0, dry.stderr
    assert "watermark now: updated_at = 2024-01-02T03:46:39" in dry.stdout
    assert record_of(home) == record

    status = run([*HYGGE, "server", "status"], tmp_path, env)
    assert status.returncode == 0 and f"running at {record['url']}" in status.stdout
    stop = run([*HYGGE, "server", "stop"], tmp_path, env)
    assert stop.returncode == 0 and f"pid {record['pid']}" in stop.stdout
    assert not alive(int(record["pid"]))  # type: ignore[call-overload]
    after = run([*HYGGE, "server", "status"], tmp_path, env)
    assert after.returncode == 3 and "not running" in after.stdout


def test_two_commands_at_once_start_one_server(tmp_path: Path, home: Path) -> None:
    env = newcomer_env(home)
    procs = [
        subprocess.Popen(
            [*HYGGE, "server", "start"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    urls = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    record = record_of(home)
    assert record is not None
    assert urls == [record["url"], record["url"]]
    servers = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and str(record["port"]).encode() in _cmdline(int(pid))
        and b"server" in _cmdline(int(pid))
    ]
    assert servers == [str(record["pid"])]


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def small_spec(tmp_path: Path, name: str) -> str:
    """A spec of its own (the session's server holds other tests' example ledger)."""
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 10))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_for(name, db, tmp_path / "lake")))
    return str(spec)


def test_a_configured_api_url_wins_and_no_server_is_started(
    tmp_path: Path, home: Path, prefect_server: str, spec_name: str
) -> None:
    env = newcomer_env(home, PREFECT_API_URL=prefect_server)
    spec = small_spec(tmp_path, spec_name)
    dry = run([sys.executable, "-m", "flows.run", "--spec", spec, "--dry-run"], tmp_path, env)
    assert dry.returncode == 0, dry.stderr
    assert "starting a local Prefect server" not in dry.stderr
    assert record_of(home) is None


def test_a_profile_api_url_wins_too(
    tmp_path: Path, home: Path, prefect_server: str, spec_name: str
) -> None:
    prefect_dir = home / ".prefect"
    prefect_dir.mkdir()
    (prefect_dir / "profiles.toml").write_text(
        f'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "{prefect_server}"\n'
    )
    spec = small_spec(tmp_path, spec_name)
    args = [sys.executable, "-m", "flows.run", "--spec", spec, "--dry-run"]
    dry = run(args, tmp_path, newcomer_env(home))
    assert dry.returncode == 0, dry.stderr
    assert f"spec {spec_name!r}: 1 entities" in dry.stdout  # planned against that server
    assert record_of(home) is None


def test_stop_never_signals_a_process_it_did_not_start(tmp_path: Path, home: Path) -> None:
    # a stale record whose pid now belongs to some other process
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        folder = home / ".prefect" / "hygge-server"
        folder.mkdir(parents=True)
        stale = {
            "pid": other.pid,
            "port": 1,
            "url": "http://127.0.0.1:1/api",
            "prefect_home": str(home / ".prefect"),
            "prefect_version": "3.8.8",
            "started_at": time.time() - 3600,
        }
        (folder / "server.json").write_text(json.dumps(stale))
        env = newcomer_env(home)
        status = run([*HYGGE, "server", "status"], tmp_path, env)
        assert status.returncode == 3 and "not running" in status.stdout
        stop = run([*HYGGE, "server", "stop"], tmp_path, env)
        assert stop.returncode == 0 and "not running" in stop.stdout
        assert other.poll() is None  # still running: not ours to stop
        assert record_of(home) is None  # the stale record is gone
    finally:
        other.kill()
        other.wait()


def test_an_unusable_prefect_home_is_one_clear_line(tmp_path: Path, home: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = newcomer_env(home, PREFECT_HOME=str(blocker / "prefect"))
    done = run([*HYGGE, "server", "start"], tmp_path, env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot start the local Prefect server in {blocker}/prefect/hygge-server" in (
        done.stderr
    )
    assert "make PREFECT_HOME a writable folder, or set PREFECT_API_URL" in done.stderr

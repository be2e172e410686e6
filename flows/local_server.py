"""hygge's own local Prefect server: started once in the background, reused by later commands.

Without `PREFECT_API_URL`, every Prefect process starts a temporary server of its own: 7-15 s
per command, and on a machine that has never run Prefect it must first create its database,
which can take longer than Prefect's 20 s start-up wait (the run then fails). So a hygge
command that finds no Prefect API configured starts one `prefect server start` in the
background, on 127.0.0.1 and a free port, waits for it as long as a first start needs, and
records it in `<PREFECT_HOME>/hygge-server/server.json`; later commands find it there and
start in about the time it takes to import Prefect.

It keeps its state where Prefect's temporary server would (`PREFECT_HOME`, by default
`~/.prefect`), so the watermark ledger is the same either way. A user's own Prefect settings
(`PREFECT_API_URL` in the environment, a profile or a settings file) always win, and this
module never starts, stops or signals any server but the one it recorded.
`HYGGE_LOCAL_SERVER=0` turns it off (Prefect's temporary server is used, with a start-up wait
long enough for a first start).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hygge_core.errors import ServerError

#: how long a start may take: a first start creates Prefect's database (36-62 s seen on 2 cores)
START_TIMEOUT = float(os.environ.get("HYGGE_SERVER_START_TIMEOUT", "300"))
#: Prefect's own temporary-server wait, raised for the same reason when this module is off
EPHEMERAL_TIMEOUT = "300"


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    port: int
    url: str
    prefect_home: str
    prefect_version: str
    started_at: float

    @property
    def health_url(self) -> str:
        return self.url.removesuffix("/api") + "/api/health"


def prefect_home() -> Path:
    """Where Prefect keeps its state, as Prefect itself decides (without importing it)."""
    raw = os.environ.get("PREFECT_HOME")
    return Path(raw).expanduser().absolute() if raw else Path.home() / ".prefect"


def state_dir() -> Path:
    return prefect_home() / "hygge-server"


def _record_path() -> Path:
    return state_dir() / "server.json"


def log_path() -> Path:
    return state_dir() / "server.log"


def enabled() -> bool:
    return os.environ.get("HYGGE_LOCAL_SERVER", "1").strip().lower() not in ("0", "false", "off")


def configured_api_url() -> str | None:
    """The Prefect API the user configured (environment, profile, settings file), if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def ensure_api(announce: bool = True) -> str | None:
    """Point this process at a Prefect API and return its URL.

    The user's own API when one is configured; else hygge's local server, started if it is
    not running; else (turned off) None: Prefect's temporary server, with a longer wait.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_TIMEOUT)
    url = configured_api_url()
    if url:
        return url
    if not enabled():
        _refresh_prefect_settings()
        return None
    record = start(announce=announce)
    os.environ["PREFECT_API_URL"] = record.url
    _refresh_prefect_settings()
    return record.url


def _refresh_prefect_settings() -> None:
    # Prefect read its settings when it was imported; make it see the environment as it is now
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def running() -> ServerRecord | None:
    """The recorded server, if its process is alive and its API answers."""
    record = _read_record()
    if record is None or not _alive(record.pid) or not _healthy(record):
        return None
    return record


def start(announce: bool = True, wait: bool = True) -> ServerRecord:
    """Return the local server, starting it first if needed (one process at a time).

    With `wait=False` a new server is launched and returned at once (`start()` again waits
    for it), so a command can do other work while the server creates its database.
    """
    try:
        return _start(announce, wait)
    except OSError as exc:
        msg = (
            f"cannot start the local Prefect server in {state_dir()}: {exc.strerror or exc}; "
            "make PREFECT_HOME a writable folder, or set PREFECT_API_URL to a server of yours"
        )
        raise ServerError(msg) from exc


def _start(announce: bool, wait: bool) -> ServerRecord:
    with _start_lock():
        record = _read_record()
        if record is not None and _alive(record.pid) and _is_ours(record):
            if record.prefect_version == _prefect_version():
                if _healthy(record):
                    return record
                if time.time() - record.started_at < START_TIMEOUT:
                    return _wait(record) if wait else record  # still starting
            _terminate(record)  # not answering, or another Prefect version
        port = record.port if record is not None and _port_free(record.port) else _free_port()
        record = _launch(port, announce)
        return _wait(record) if wait else record


def stop() -> ServerRecord | None:
    """Stop the recorded server (only it); return its record, or None if none was running."""
    with _start_lock():
        record = _read_record()
        if record is None:
            return None
        stopped = record if _alive(record.pid) and _is_ours(record) else None
        if stopped is not None:
            _terminate(stopped)
        _record_path().unlink(missing_ok=True)
        return stopped


def _temporary_servers() -> list[tuple[subprocess.Popen[bytes], int | None]]:
    """The temporary servers Prefect started in this process (it keeps them in a registry),
    each with its port."""
    module = sys.modules.get("prefect.server.api.server")
    servers = getattr(getattr(module, "SubprocessASGIServer", None), "_instances", {})
    found = [
        (getattr(server, "server_process", None), getattr(server, "port", None))
        for server in list(servers.values())
    ]
    return [(process, port) for process, port in found if process is not None]


def _temporary_processes() -> list[subprocess.Popen[bytes]]:
    return [process for process, _ in _temporary_servers()]


def temporary_server_gone() -> bool:
    """Whether Prefect's temporary server of this process has exited or stopped listening (a
    Ctrl-C to the process group stops it too): nothing is left to report to then."""
    servers = _temporary_servers()
    return bool(servers) and all(
        process.poll() is not None or (port is not None and not _listening(port))
        for process, port in servers
    )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_temporary(grace: float = 2.0) -> int:
    """Stop the temporary server Prefect started in this process (`HYGGE_LOCAL_SERVER=0`).

    Prefect stops it when the interpreter exits normally; an interrupted run ends sooner
    (`flows.interrupts`), and a server left behind would keep running with nobody to stop it.
    Returns how many were stopped. hygge's own server is not touched: it runs in its own
    session for later commands (`hygge server stop` stops it).
    """
    stopped = 0
    for process in _temporary_processes():
        if process.poll() is not None:
            continue
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)
        stopped += 1
    return stopped


def _launch(port: int, announce: bool) -> ServerRecord:
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fresh = not (prefect_home() / "prefect.db").exists()
    if announce:
        first = " (the first start creates Prefect's database: about a minute)" if fresh else ""
        print(
            f"hygge: starting a local Prefect server on 127.0.0.1:{port}{first}; "
            "later runs reuse it (`hygge server stop` stops it)",
            file=sys.stderr,
            flush=True,
        )
    env = {
        **os.environ,
        "DO_NOT_TRACK": os.environ.get("DO_NOT_TRACK", "1"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_HOME"] = str(prefect_home())  # the server runs from its state folder
    with log_path().open("wb") as log:
        command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            # its own session: a Ctrl-C in the terminal stops the run, not the shared server
            start_new_session=True,
        )
    record = ServerRecord(
        pid=process.pid,
        port=port,
        url=f"http://127.0.0.1:{port}/api",
        prefect_home=str(prefect_home()),
        prefect_version=_prefect_version(),
        started_at=time.time(),
    )
    _write_record(record)
    return record


def _wait(record: ServerRecord) -> ServerRecord:
    """Wait until the server answers; fail with its log if it exits or takes too long."""
    deadline = record.started_at + START_TIMEOUT
    while time.time() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, os.WNOHANG)  # reap it if it died as our child
        if not _alive(record.pid):
            _record_path().unlink(missing_ok=True)
            msg = (
                f"the local Prefect server stopped while starting; its log is {log_path()}:\n"
                f"{_log_tail()}"
            )
            raise ServerError(msg)
        if _healthy(record):
            return record
        time.sleep(0.25)
    _terminate(record)
    _record_path().unlink(missing_ok=True)
    msg = (
        f"the local Prefect server did not answer within {START_TIMEOUT:.0f} s (log: "
        f"{log_path()}); raise HYGGE_SERVER_START_TIMEOUT, or run your own server and set "
        "PREFECT_API_URL"
    )
    raise ServerError(msg)


def _read_record() -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads(_record_path().read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(record: ServerRecord) -> None:
    tmp = _record_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)), encoding="utf-8")
    tmp.replace(_record_path())


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """One process at a time checks for, starts or stops the server."""
    state_dir().mkdir(parents=True, exist_ok=True)
    with (state_dir() / "start.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _healthy(record: ServerRecord) -> bool:
    try:
        with urllib.request.urlopen(record.health_url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(record: ServerRecord) -> bool:
    """The pid still runs the server we started (pids are reused), judged by its command."""
    try:
        argv = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv]
    return "server" in words and "start" in words and str(record.port) in words


def _terminate(record: ServerRecord) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record.pid, os.WNOHANG)  # reap it if it is our child
            if not _alive(record.pid):
                return
            time.sleep(0.1)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _log_tail(lines: int = 15) -> str:
    try:
        text = log_path().read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])

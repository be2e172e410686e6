"""Ctrl-C and SIGTERM during `hygge run`: stop within seconds, say what was kept, leave nothing.

The command line installs `on_signal` for SIGINT and SIGTERM. The first signal asks the run to
stop (`hygge_core.stop`): each moving entity stops at its next batch and its writer removes
what it staged, nothing new starts, and what already finished is committed. The default
handlers come back at once, so a second Ctrl-C kills the process without waiting. A watchdog
ends the process `GRACE_SECONDS` after the signal whatever it is waiting for (Prefect's client
retrying a server the Ctrl-C also stopped, a query that does not return), after printing the
same line and stopping Prefect's temporary server if this process started one.

The one line names what happened to each entity, from `board`, which the flow keeps current:
`interrupted: orders and order_lines not published; customers committed; rerun to continue`.
The exit code is 128 + the signal: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from hygge_core import stop

#: from the signal to the forced exit; the run is asked to be done within 10 s
GRACE_SECONDS = float(os.environ.get("HYGGE_INTERRUPT_GRACE_SECONDS", "6"))
#: what the line calls each state an entity can be in
_WORDS = {
    "committed": "committed",
    "staged": "staged (the rerun publishes it)",
    "published": "published (the rerun commits its watermark)",
    "failed": "failed",
    "pending": "not published",
}
#: names the line lists per state before it says how many more
_NAMES_SHOWN = 6

_lock = threading.Lock()
_board: dict[str, str] = {}
_armed = False
_said = False


def mark(entity: str, state: str) -> None:
    """Record an entity's state: pending, staged (its publish waits), published, committed or
    failed."""
    with _lock:
        # published data stays published: a failed ledger save is finished by the next run
        if _board.get(entity) != "published" or state == "committed":
            _board[entity] = state


def clear() -> None:
    """Forget every entity (tests)."""
    with _lock:
        _board.clear()


def plan(entities: list[str]) -> None:
    for entity in entities:
        mark(entity, "pending")


def line() -> str:
    """The one line an interrupted run prints."""
    with _lock:
        board = dict(_board)
    parts = []
    for state in ("pending", "staged", "published", "failed", "committed"):
        names = [e for e, s in board.items() if s == state]
        if names:
            parts.append(f"{_names(names)} {_WORDS[state]}")
    if not parts:
        parts = ["no entity had started; nothing was published"]
    return f"interrupted: {'; '.join(parts)}; rerun to continue"


def _names(names: list[str]) -> str:
    if len(names) > _NAMES_SHOWN:
        shown = names[: _NAMES_SHOWN - 1]
        return f"{', '.join(shown)} and {len(names) - len(shown)} more"
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (the command line's main thread)."""
    global _armed
    _armed = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Keep hygge's SIGTERM handler inside a flow run started by the command line.

    Prefect's flow engine installs its own for the run; it would raise in the flow's thread
    wherever it is, while the entities' threads go on moving. Elsewhere (a deployment's run,
    or a flow run in a thread) nothing changes.
    """
    if not _armed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_signal and not stop.requested():
            signal.signal(signal.SIGTERM, previous)


def on_signal(signum: int, frame: FrameType | None) -> None:
    """The first signal asks the run to stop; a later one ends the process now."""
    if stop.requested():
        _exit_now(stop.requested())
    stop.request(signum)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # a second Ctrl-C kills at once
    deadline = time.monotonic() + GRACE_SECONDS
    watchdog = threading.Thread(
        target=_watch, args=(signum, deadline), name="hygge-interrupt-watchdog", daemon=True
    )
    watchdog.start()


def _watch(signum: int, deadline: float) -> None:
    """End the process at the deadline; sooner once the temporary server is gone and every
    writer has removed its staging (the flow can report nothing more then)."""
    from flows.local_server import temporary_server_gone

    while time.monotonic() < deadline:
        if stop.busy() == 0 and temporary_server_gone():
            break
        time.sleep(0.1)
    _exit_now(signum)


def exit_code() -> int | None:
    """128 + the signal when the run was interrupted, else None."""
    signum = stop.requested()
    return 128 + signum if signum else None


def finish() -> int:
    """Say what an interrupted run kept, stop this process's temporary server; the exit code."""
    signum = stop.requested()
    _say()
    _stop_children()
    return 128 + signum


def _say() -> None:
    global _said
    with _lock:
        if _said:
            return
        _said = True
    text = f"hygge: {line()}\n"
    # os.write: the thread that holds sys.stderr's lock may be the one that is stuck
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", errors="replace"))


def _stop_children() -> None:
    from flows.local_server import stop_temporary

    with contextlib.suppress(Exception):
        stop_temporary()


def _exit_now(signum: int) -> None:
    _say()
    _stop_children()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(128 + signum)

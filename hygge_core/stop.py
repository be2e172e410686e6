"""The stop request of the run in this process: a signal sets it, the engine checks it.

The command line sets it on Ctrl-C or SIGTERM (`flows.interrupts`). Each entity's move checks
it between batches and raises `InterruptError`, so its Store writer removes what it staged;
the scheduler starts nothing more, and no retry is attempted. What was published before stays,
and the next run recovers it as it recovers any interrupted run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from hygge_core.errors import InterruptError

_stop = threading.Event()
_signal = 0
_lock = threading.Lock()
_moving = 0


def request(signum: int) -> None:
    """Ask the run to stop, because of signal `signum`."""
    global _signal
    _signal = _signal or signum
    _stop.set()


def requested() -> int:
    """The signal that asked the run to stop, or 0 when none did."""
    return _signal if _stop.is_set() else 0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def check(entity: str) -> None:
    """Raise `InterruptError` for `entity` if the run was asked to stop."""
    signum = requested()
    if signum:
        msg = (
            f"stopped by {signal_name(signum)}: nothing of this run was published for it; "
            "rerun to continue"
        )
        raise InterruptError(msg, entity=entity)


def is_interrupt(exc: BaseException) -> bool:
    """Whether `exc` came from the stop request: hygge's own, or a library's KeyboardInterrupt
    (Polars stops its queries on Ctrl-C too, and a Store reports that as its own error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, InterruptError | KeyboardInterrupt):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def moving() -> Iterator[None]:
    """Count an entity's move while it runs, so an interrupted process knows when its
    writers have removed their staging."""
    global _moving
    with _lock:
        _moving += 1
    try:
        yield
    finally:
        with _lock:
            _moving -= 1


def busy() -> int:
    """How many entity moves are running in this process."""
    return _moving


def clear() -> None:
    """Forget a stop request (tests, and a process that runs again)."""
    global _signal
    _signal = 0
    _stop.clear()

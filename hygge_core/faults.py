"""Named fault points, so tests can crash or fail a run at an exact step.

Off unless `HYGGE_FAULT` is set, e.g. `HYGGE_FAULT=publish.between_files:kill` (SIGKILL the
process there), `stage.after_batch@3:raise` (raise on the third pass) or
`stage.after_batch:enospc` (raise a disk-full OSError). `HYGGE_FAULT_ENTITY` limits it to one
entity's thread when set by the engine (see `hygge_tasks.move`).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections import Counter

#: every fault point, where it sits; a name not listed here is a bug (`point` refuses it)
POINTS = {
    "stage.after_batch": "a Store staged one more batch (nothing is visible yet)",
    "move.after_read": "the engine read the whole entity, before the Store prepares",
    "deletes.after_stage": "a run's deletes are staged with its rows; nothing is visible yet",
    "postgres.before_read": "PostgreSQL connected, before the first batch is read",
    "publish.after_prepare": "the manifest says prepared; no file is visible yet",
    "publish.between_files": "some of a run's files are visible, the next is not yet",
    "publish.between_swap_renames": "a replace is half done: old table parked or dropped",
    "publish.before_mark": "every file is visible; the manifest still says prepared",
    "flow.before_ledger": "the run is published; the ledger does not cover it yet",
    "flow.before_mark_committed": "the ledger covers the run; the manifest is not committed",
}

_hits: Counter[str] = Counter()
_lock = threading.Lock()
_local = threading.local()


class InjectedFault(RuntimeError):
    """Raised at a fault point configured with `raise`."""


def set_entity(entity: str | None) -> None:
    """Tell the fault points which entity the current thread is moving."""
    _local.entity = entity


def point(name: str) -> None:
    if name not in POINTS:
        msg = f"{name!r} is not a fault point (hygge_core.faults.POINTS)"
        raise ValueError(msg)
    spec = os.environ.get("HYGGE_FAULT")
    if not spec:
        return
    wanted_entity = os.environ.get("HYGGE_FAULT_ENTITY")
    if wanted_entity and getattr(_local, "entity", None) != wanted_entity:
        return
    where, _, action = spec.partition(":")
    target, _, nth = where.partition("@")
    if target not in POINTS:
        # a misspelt point would never fire, and a test relying on it would prove nothing
        msg = f"HYGGE_FAULT names no fault point: {target!r}; known: {', '.join(POINTS)}"
        raise ValueError(msg)
    if target != name:
        return
    with _lock:
        _hits[name] += 1
        count = _hits[name]
    if nth and count != int(nth):
        return
    if action.startswith("sleep"):
        time.sleep(float(action.removeprefix("sleep") or 1))
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "transient":
        raise ConnectionResetError(errno.ECONNRESET, f"injected transient fault at {name}")
    msg = f"injected fault at {name}"
    raise InjectedFault(msg)


def reset() -> None:
    with _lock:
        _hits.clear()

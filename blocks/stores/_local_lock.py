"""An exclusive, crash-safe lock on a local Store directory (POSIX `flock`).

The kernel releases a `flock` when its process dies, even by SIGKILL, so a crashed run never
leaves a stale lock behind. The lock file records who holds it, for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from blocks.stores.protocol import waiting_message
from hygge_core.errors import StoreError


@contextmanager
def exclusive(
    directory: Path,
    owner: str,
    wait_seconds: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold `<directory>/_hygge.lock` for the duration; wait up to `wait_seconds` for it,
    telling `on_wait` once who holds it."""
    path = directory / "_hygge.lock"
    if directory.exists() and not directory.is_dir():
        msg = f"the Store's path {str(directory)!r} is a file, not a directory; point `path` at one"
        raise StoreError(msg)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        msg = (
            f"cannot create the Store's lock file {str(path)!r}: {exc.strerror}; "
            "check that the Store's `path` is a writable directory"
        )
        raise StoreError(msg) from exc
    try:
        deadline = time.monotonic() + wait_seconds
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None and wait_seconds > 0:
                    on_wait(waiting_message(str(directory), _holder(path), wait_seconds))
                    told = True
                if time.monotonic() >= deadline:
                    holder = _holder(path)
                    msg = (
                        f"another hygge run is writing to {str(directory)!r} ({holder}); "
                        "runs that share a Store take turns so neither corrupts the other. "
                        "Wait for it to finish, or set `lock_wait_seconds` in the spec to queue"
                    )
                    raise StoreError(msg) from None
                time.sleep(0.5)
        info = {
            "run": owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"run {info.get('run')}, pid {info.get('pid')} on {info.get('host')}, since {since}"

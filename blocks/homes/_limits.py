"""`max_connections`: how many connections the entities of a flow may hold to one database.

Entities run as threads of one process (Prefect's ThreadPoolTaskRunner), so an in-process
counter per connection identity is enough. A reader takes all the connections it needs at
once (a partitioned read needs several): taking them one by one could deadlock two readers
that each hold some and wait for the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Condition()
_in_use: dict[str, int] = {}


@contextmanager
def connection_slots(identity: str, wanted: int, limit: int) -> Iterator[int]:
    """Hold `min(wanted, limit)` connections to `identity`; yields how many were granted.

    Waits while granting them would put more than `limit` connections to `identity` in use.
    Each caller brings its own limit (an entity may override the Home's), and the wait
    respects the caller's.
    """
    take = max(1, min(wanted, limit))
    with _lock:
        while _in_use.get(identity, 0) + take > limit:
            _lock.wait(timeout=1.0)
        _in_use[identity] = _in_use.get(identity, 0) + take
    try:
        yield take
    finally:
        with _lock:
            _in_use[identity] -= take
            if not _in_use[identity]:
                del _in_use[identity]
            _lock.notify_all()


def in_use(identity: str) -> int:
    """Connections to `identity` held right now (for tests and logs)."""
    with _lock:
        return _in_use.get(identity, 0)

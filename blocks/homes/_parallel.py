"""Partitioned reads: several batch streams read in threads, merged into one, memory bounded.

Each stream runs in its own thread with its own connection and puts batches on one bounded
queue, so at most `queue_size` batches wait in memory however fast the readers are. The
first error stops every reader and is raised to the consumer; so is the consumer stopping.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def merge_streams(
    streams: Sequence[Callable[[], Iterator[pa.RecordBatch]]], queue_size: int = 4
) -> Iterator[pa.RecordBatch]:
    """Yield the batches of every stream as they arrive (no order across streams)."""
    out: queue.Queue[object] = queue.Queue(maxsize=queue_size)
    stop = threading.Event()

    def put(item: object) -> bool:
        # give up when the consumer has gone, instead of blocking on a full queue forever
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(stream: Callable[[], Iterator[pa.RecordBatch]]) -> None:
        try:
            for batch in stream():
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:
            put(_Failed(exc))

    threads = [
        threading.Thread(target=run, args=(s,), name=f"hygge-partition-{i}", daemon=True)
        for i, s in enumerate(streams)
    ]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < len(threads):
            item = out.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, _Failed):
                raise item.exc
            else:
                assert isinstance(item, pa.RecordBatch)
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

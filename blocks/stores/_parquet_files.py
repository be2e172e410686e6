"""Encoding one Parquet file from a stream of batches: Polars' parallel sink, or pyarrow's writer.

Polars encodes columns in parallel and is the faster of the two; pyarrow writes what Polars would
write differently (second-unit or zoned timestamps, decimal256, duplicate column names, other
codecs). Polars writes text as `large_string` where pyarrow writes `string`: both read as the
same table, and appends compare schemas by logical type (`blocks.stores._schema.comparable`).
"""

from __future__ import annotations

import contextlib
import errno
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.stores._schema import SMALL
from hygge_core.arrow_types import VIEWS, unview, unviewed
from hygge_core.errors import first_line


class FileWriter(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ArrowFile:
    """One Parquet file encoded by pyarrow (one column at a time): for what Polars cannot write."""

    def __init__(self, path: Path, schema: pa.Schema, codec: str, level: int | None) -> None:
        # large types, not views: what every reader (and older pyarrow) knows
        schema = unviewed(schema)
        self._writer = pq.ParquetWriter(path, schema, compression=codec, compression_level=level)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(unview(batch))

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


_END = object()
#: batches handed over but not yet encoded; Polars buffers at most about one row group more
_QUEUED_BATCHES = 2


class PolarsFile:
    """One Parquet file encoded by Polars' streaming sink, which encodes columns in parallel.

    The sink pulls batches through an Arrow C stream on its own thread; `write` hands each
    batch over through a small bounded queue, so memory stays bounded. The file is created
    here, as pyarrow's writer does, and the sink writes to that open file, so a cleaned-up
    staging folder is never created again behind recovery's back. An error of the sink
    surfaces at the next `write` or at `close`; the file is complete only after `close`.
    """

    def __init__(self, path: Path, schema: pa.Schema, codec: str, level: int | None) -> None:
        self._file = path.open("wb")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED_BATCHES)
        self._error: BaseException | None = None
        self._aborted = False
        reader = pa.RecordBatchReader.from_batches(schema, self._batches())
        # nullability is kept (NOT NULL columns stay `required`); text and binary are written
        # as large types, which `comparable` treats as equal to pyarrow's
        written = pa.schema(
            pa.field(f.name, _POLARS_OUT.get(f.type, f.type), f.nullable, f.metadata)
            for f in schema
        )
        self._thread = threading.Thread(
            target=self._sink,
            args=(pl.scan_arrow_c_stream(reader), written, codec, level),
            name=f"hygge-parquet-{path.name}",
            daemon=True,
        )
        self._thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (item := self._queue.get()) is not _END:
            if self._aborted:
                msg = "the write was aborted"
                raise RuntimeError(msg)
            yield item

    def _sink(self, lf: pl.LazyFrame, schema: pa.Schema, codec: str, level: int | None) -> None:
        try:
            lf.sink_parquet(
                self._file,
                compression=_POLARS_CODECS[codec.lower()],
                compression_level=level,
                arrow_schema=schema,
                engine="streaming",
            )
        except BaseException as exc:
            self._error = exc

    def _put(self, item: Any) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise()
                    raise OSError(errno.EIO, "the Parquet encoder stopped early") from None

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            if isinstance(exc, OSError):
                raise exc
            msg = f"cannot write Parquet: {first_line(exc)}"
            raise OSError(errno.EIO, msg) from exc

    def write(self, batch: pa.RecordBatch) -> None:
        self._put(batch)

    def close(self) -> None:
        if self._thread.is_alive():
            self._put(_END)
            self._thread.join()
        self._raise()
        self._file.close()

    def abort(self) -> None:
        self._aborted = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_END)
        while self._thread.is_alive():
            # unblock a sink waiting on the queue; it stops at the next batch it takes
            with contextlib.suppress(queue.Full):
                self._queue.put(_END, timeout=0.2)
            self._thread.join(timeout=0.2)
        self._error = None
        with contextlib.suppress(OSError):
            self._file.close()


_POLARS_CODECS: dict[str, Literal["lz4", "uncompressed", "snappy", "gzip", "brotli", "zstd"]] = {
    "zstd": "zstd",
    "snappy": "snappy",
    "gzip": "gzip",
    "lz4": "lz4",
    "brotli": "brotli",
    "none": "uncompressed",
    "uncompressed": "uncompressed",
}
_LEVELLED = {"zstd", "gzip", "brotli"}
#: what Polars writes each text and binary flavour as: the large types (views included)
_POLARS_OUT = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary(), **VIEWS}


def _polars_type(t: pa.DataType) -> bool:
    """Types Polars writes exactly as pyarrow would (same Parquet type, same Arrow type back)."""
    if pa.types.is_timestamp(t):
        # Polars has no second unit and keeps only named zones; UTC and naive are what Homes give
        return t.unit != "s" and t.tz in (None, "UTC")
    if pa.types.is_decimal(t):
        return isinstance(t, pa.Decimal128Type)
    return (
        pa.types.is_integer(t)
        or t in (pa.float32(), pa.float64(), pa.bool_(), pa.date32())
        or t in _POLARS_OUT
        or t in SMALL
    )


def polars_writes(schema: pa.Schema, codec: str, level: int | None) -> bool:
    """Whether this file goes through Polars' parallel encoder (else pyarrow's)."""
    codec = codec.lower()
    if codec not in _POLARS_CODECS or (level is not None and codec not in _LEVELLED):
        return False
    names = schema.names
    unique = bool(names) and len(set(names)) == len(names)
    return unique and all(_polars_type(f.type) for f in schema)

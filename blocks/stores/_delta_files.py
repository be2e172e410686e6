"""A Parquet file already in a Delta table's folder, as the `add` action that commits it.

A run's files are encoded once, by the Store's writer, and committed where they lie
(`DeltaTable.create_write_transaction`), instead of being read back and encoded again by
`write_deltalake`. Delta readers prune files by the statistics of the `add` action, so these are
taken from the file's own Parquet footer (no data page is read), in the form delta-rs writes:

- `numRecords` always; `nullCount` for the columns whose footer counts nulls in every row group;
- `minValues` / `maxValues` for integers, floats, strings (up to `_MAX_TEXT` characters), dates
  and UTC timestamps, of the first `_INDEXED` columns (Delta's `dataSkippingNumIndexedCols`
  default). Timestamps are kept to the millisecond as Delta's statistics are: the minimum is
  rounded down and the maximum up, so a range read from them always holds the file's values.

A column whose statistics are missing or cannot be said exactly (decimals, binaries, booleans,
`timestamp_ntz`, a NaN bound) has no bounds: a reader then scans that file, it never skips it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake.transaction import AddAction

_INDEXED = 32
_MAX_TEXT = 256
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PER_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}  # ns: divided below


def add_actions(files: Sequence[Path]) -> list[AddAction]:
    """An `add` action per file (each directly in the table's folder), with its statistics."""
    return [add_action(f) for f in files]


def add_action(path: Path) -> AddAction:
    meta = pq.read_metadata(path)
    info = os.stat(path)
    return AddAction(
        path=quote(path.name),
        size=info.st_size,
        partition_values={},
        modification_time=int(info.st_mtime * 1000),
        data_change=True,
        stats=json.dumps(file_stats(meta), separators=(",", ":")),
    )


def file_schema(path: Path) -> pa.Schema:
    """The Arrow schema a staged file was written with (the table's, in Delta's types)."""
    return pq.read_schema(path)


def file_stats(meta: pq.FileMetaData) -> dict[str, Any]:
    schema = meta.schema.to_arrow_schema()
    lows: dict[str, Any] = {}
    highs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    # top-level primitive columns only: a nested column's leaves are not one statistic
    leaf = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for position, field in enumerate(schema):
        index = leaf.get(field.name)
        if index is None:
            continue
        null_count, low, high = _column_stats(meta, index, field.type)
        if null_count is not None:
            nulls[field.name] = null_count
        if position < _INDEXED and low is not None and high is not None:
            lows[field.name], highs[field.name] = low, high
    return {"numRecords": meta.num_rows, "minValues": lows, "maxValues": highs, "nullCount": nulls}


def _column_stats(
    meta: pq.FileMetaData, index: int, kind: pa.DataType
) -> tuple[int | None, Any, Any]:
    null_count: int | None = 0
    low: Any = None
    high: Any = None
    bounded = _bounded(kind)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if not group.num_rows:
            continue
        stats = group.column(index).statistics
        if stats is None:
            return None, None, None
        if null_count is not None:
            null_count = null_count + stats.null_count if stats.has_null_count else None
        if not bounded:
            continue
        if stats.null_count == group.num_rows and stats.has_null_count:
            continue  # an all-NULL row group holds no bound
        if not stats.has_min_max:
            bounded = False
            continue
        lo, hi = stats.min_raw, stats.max_raw
        low = lo if low is None or lo < low else low
        high = hi if high is None or hi > high else high
    if not bounded or low is None:
        return null_count, None, None
    return null_count, *_as_json(kind, low, high)


def _bounded(kind: pa.DataType) -> bool:
    if pa.types.is_timestamp(kind):
        return kind.tz is not None  # `timestamp_ntz` bounds: left to readers that scan
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
    )


def _as_json(kind: pa.DataType, low: Any, high: Any) -> tuple[Any, Any]:
    """The raw (physical) bounds as Delta's statistics spell them; (None, None) if they cannot."""
    if pa.types.is_floating(kind):
        if low != low or high != high:  # NaN
            return None, None
        return float(low), float(high)
    if pa.types.is_integer(kind):
        return int(low), int(high)
    if pa.types.is_date32(kind):
        base = dt.date(1970, 1, 1)
        return (base + dt.timedelta(days=int(low))).isoformat(), (
            base + dt.timedelta(days=int(high))
        ).isoformat()
    if pa.types.is_timestamp(kind):
        return _timestamp(int(low), kind.unit, up=False), _timestamp(int(high), kind.unit, up=True)
    lo = low.decode("utf-8") if isinstance(low, bytes) else str(low)
    hi = high.decode("utf-8") if isinstance(high, bytes) else str(high)
    if len(lo) > _MAX_TEXT or len(hi) > _MAX_TEXT:
        return None, None
    return lo, hi


def _timestamp(value: int, unit: str, *, up: bool) -> str:
    """A UTC instant as Delta's statistics hold it: ISO 8601 to the millisecond."""
    micros = value * _PER_US[unit] if unit != "ns" else _div(value, 1000, up)
    millis = _div(micros, 1000, up)
    moment = _EPOCH + dt.timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _div(value: int, by: int, up: bool) -> int:
    return -(-value // by) if up else value // by

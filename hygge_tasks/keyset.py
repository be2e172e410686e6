"""PROVISIONAL stand-in for the key-set engine (replaced by the keyset branch): in memory."""
# mypy: ignore-errors

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


class KeyCollector:
    def __init__(self, keys: list[str], workdir: Path) -> None:
        self.keys = keys
        self.workdir = workdir
        self._parts: list[pa.RecordBatch] = []
        self.count = 0

    def add(self, batch: pa.RecordBatch) -> None:
        part = batch.select(self.keys)
        self._parts.append(part)
        self.count += part.num_rows

    def frame(self) -> pl.DataFrame | None:
        return pl.from_arrow(pa.Table.from_batches(self._parts)) if self._parts else None  # type: ignore[return-value]


@dataclass
class KeyDiff:
    path: Path
    count: int
    source_count: int
    previous_count: int | None
    deleted_count: int
    _deleted: pa.Table

    def deleted_batches(self) -> Iterator[pa.RecordBatch]:
        yield from self._deleted.to_batches(100_000)


def diff_keys(
    keys: list[str],
    source: Iterable[pa.RecordBatch],
    written: KeyCollector | None,
    previous: Path | None,
    workdir: Path,
) -> KeyDiff:
    batches = [b.select(keys) for b in source]
    src = pl.from_arrow(pa.Table.from_batches(batches)) if batches else None
    src = src.unique() if src is not None else None  # type: ignore[union-attr]
    prev = pl.read_parquet(previous) if previous is not None else None
    done = written.frame() if written is not None else None
    if prev is not None and src is not None:
        deleted = prev.join(src, on=keys, how="anti", nulls_equal=True)
        kept = prev.join(src, on=keys, how="semi", nulls_equal=True)
    elif prev is not None:
        deleted, kept = prev, prev.clear()
    else:
        deleted, kept = None, src
    parts = [f for f in (kept, done) if f is not None]
    new = pl.concat(parts, how="vertical_relaxed").unique() if parts else None
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "keys.parquet"
    table = (
        new.to_arrow() if new is not None else pa.table({k: pa.array([], pa.null()) for k in keys})
    )
    pq.write_table(table, path)
    dels = deleted.to_arrow() if deleted is not None else table.slice(0, 0)
    if batches:
        dels = dels.cast(pa.schema([batches[0].schema.field(k) for k in keys]))
    return KeyDiff(
        path=path,
        count=table.num_rows,
        source_count=src.height if src is not None else 0,
        previous_count=prev.height if prev is not None else None,
        deleted_count=dels.num_rows,
        _deleted=dels,
    )

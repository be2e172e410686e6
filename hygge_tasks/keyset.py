"""Key-set reconciliation: the keys a destination holds that its source no longer has.

A watermark sees inserts and updates, never deletes. An entity with `keys` can still find its
deletes: the destination's key set is kept beside its data (`hygge_tasks.keyset_store`), and
after a run's changes are loaded the source's current key columns are read (one narrow read)
and compared with it. In bounded memory: 10M keys compare in well under 500 MB (`bench/keyset.py`).

    collector = KeyCollector(["id"], workdir)        # during the data pass
    for batch in batches: writer.write(batch); collector.add(batch)
    diff = diff_keys(["id"], source_key_batches, collector, previous_path, workdir)
    for batch in diff.deleted_batches(): ...         # keys to delete, in the source's types
    ref = store_keyset(store, entity, run_id, diff.path)   # the new set, with the run

`diff_keys(keys, source, written, previous, workdir)`:

- `source`: the source's current key columns, as a stream of record batches (other columns
  are ignored);
- `written`: a `KeyCollector` of the key columns of every batch written in this run, or None;
- `previous`: the key-set file the last committed run stored, or None on the first run.

It returns a `KeyDiff`:

- `deleted` = previous - source, streamed by `deleted_batches()`, counted by `deleted_count`;
- the new key set = (previous & source) | written (source | written on the first run), one
  Parquet file at `path` with `count` keys: what the destination holds once this run's changes
  and deletes are in. A key written in this run and gone from the source by the key read is in
  both (deleted now, and again by the next run: deleting an absent key is harmless);
- `source_count` (distinct source keys), `previous_count` (None on the first run): what the
  caller's safety check reads before it deletes anything.

Keys compare by value and type over all their columns at once (ints, strings, dates,
timestamps, decimals, binary...; `keyset_buckets` says which type changes are tolerated). A
NULL inside a key compares equal to NULL, so `(1, NULL)` at the source matches `(1, NULL)` in
the set: a nullable key column is a key like any other, never a reason to delete. Duplicate keys
count once. Floating-point keys compare by value, NaN matching NaN and -0.0 matching 0.0
(better avoided all the same: `0.1 + 0.2` is not `0.3`).

Memory: one comparison at a time holds about 300 MB at 10M keys (`bench/RESULTS.md`); entities
compared at once (`concurrency`) each hold their own.

How: each side is spilled to hash buckets on disk (`keyset_buckets.BucketSpill`), then every
bucket is compared on its own in Polars (one hash of the source's keys, probed by the stored
ones). Memory holds one chunk
of rows while spilling and one bucket while comparing, never a whole side.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from hygge_tasks.keyset_buckets import (
    BucketSpill,
    Coalesced,
    conform,
    key_schema,
    stream_file,
)

#: rows per batch of `deleted_batches()` and per row group of the key-set file (at most)
OUT_ROWS = 256_000
#: the rows read at a time from the stored key set and from the written keys
_READ_ROWS = 256_000


class KeyCollector:
    """The key columns of every batch a run writes, appended to one local Arrow IPC file.

    `add` is called in the data pass, so it does no more than select the columns and append
    them (no hashing, no sorting): the comparison reads the file once, after the pass.
    `count` is the number of rows added (duplicates included).
    """

    def __init__(self, keys: list[str], workdir: Path, *, entity: str | None = None) -> None:
        self.keys = list(keys)
        self.entity = entity
        self.count = 0
        self.schema: pa.Schema | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / f"written-{uuid.uuid4().hex[:8]}.arrows"
        self._writer: ipc.RecordBatchStreamWriter | None = None

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if self.schema is None:
            self.schema = key_schema(batch.schema, self.keys, self.entity)
            self._writer = ipc.new_stream(str(self.path), self.schema)
        assert self._writer is not None
        self._writer.write_table(conform(batch, self.schema, "the written rows", self.entity))
        self.count += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """What was added, in order (closes the file for writing)."""
        self.close()
        if self.schema is not None:
            yield from stream_file(self.path)


@dataclass(frozen=True)
class KeyDiff:
    """The outcome of `diff_keys`: the deletes to make and the key set to keep (module doc)."""

    keys: list[str]
    schema: pa.Schema
    path: Path
    count: int
    source_count: int
    previous_count: int | None
    deleted_count: int
    deleted_path: Path

    def deleted_batches(self) -> Iterator[pa.RecordBatch]:
        """Keys held by the destination and gone from the source, in the source's types."""
        if self.deleted_count:
            yield from stream_file(self.deleted_path)


def diff_keys(
    keys: list[str],
    source: Iterable[pa.RecordBatch],
    written: KeyCollector | None,
    previous: Path | None,
    workdir: Path,
    *,
    schema: pa.Schema | None = None,
    expected_keys: int = 0,
    entity: str | None = None,
) -> KeyDiff:
    """Compare the source's keys with the stored set (module doc).

    `schema` gives the key types when the source yields no batch at all (else the stored set's
    types are used). The bucket count follows the largest of the stored set, the written keys,
    `expected_keys` (a source row estimate) and the source itself when it is under a million
    keys: memory holds one bucket, so a source far larger than all of them (a first run
    without a collector, no estimate) makes larger buckets.
    """
    keys = list(keys)
    previous_file = pq.ParquetFile(previous) if previous is not None else None
    previous_rows = previous_file.metadata.num_rows if previous_file is not None else 0
    written_rows = written.count if written is not None else 0
    spill_dir = workdir / f"keyset-{uuid.uuid4().hex[:8]}"
    batches = iter(source)
    first = next((b for b in batches if b.num_rows), None)
    ref = _reference_schema(keys, first, schema, previous_file, written, entity)
    sides: list[BucketSpill] = []
    try:
        expected = max(previous_rows, written_rows, expected_keys)
        src = BucketSpill(spill_dir, ref, expected=expected)
        sides.append(src)
        if first is not None:
            src.add(conform(first, ref, "the source", entity))
            for batch in batches:
                src.add(conform(batch, ref, "the source", entity))
        src.close()
        prev = None
        if previous_file is not None:
            # an empty stored set still makes this a later run: nothing is held
            prev = BucketSpill(spill_dir, ref, src.n)
            sides.append(prev)
            if previous_rows:
                for batch in previous_file.iter_batches(batch_size=_READ_ROWS):
                    prev.add(conform(batch, ref, "the stored key set", entity))
            prev.close()
        wrote = None
        if written is not None and written.count:
            wrote = BucketSpill(spill_dir, ref, src.n)
            sides.append(wrote)
            for batch in written.batches():
                wrote.add(conform(batch, ref, "the written rows", entity))
            wrote.close()
        diff = _compare(keys, ref, src, prev, wrote, workdir, entity)
    finally:
        for side in sides:
            side.discard()
        _remove_empty(spill_dir)
    return KeyDiff(
        keys=keys,
        schema=ref,
        path=diff[0],
        count=diff[1],
        source_count=diff[2],
        previous_count=previous_rows if previous_file is not None else None,
        deleted_count=diff[3],
        deleted_path=diff[4],
    )


def _compare(
    keys: list[str],
    ref: pa.Schema,
    src: BucketSpill,
    prev: BucketSpill | None,
    wrote: BucketSpill | None,
    workdir: Path,
    entity: str | None,
) -> tuple[Path, int, int, int, Path]:
    """Bucket by bucket: the deletes and the new set, each written to its file."""
    tag = uuid.uuid4().hex[:8]
    path = workdir / f"keyset-{tag}.parquet"
    deleted_path = workdir / f"deleted-{tag}.arrows"
    count = source_count = deleted_count = 0
    with (
        pq.ParquetWriter(str(path), ref, compression="zstd", use_dictionary=False) as keyset_file,
        ipc.new_stream(str(deleted_path), ref) as deleted_file,
    ):
        kept_out = Coalesced(keyset_file.write_table, OUT_ROWS)
        deleted_out = Coalesced(lambda t: deleted_file.write_table(t, OUT_ROWS), OUT_ROWS)
        for bucket in range(src.n):
            now = src.take(bucket)
            source_count += now.n_unique()
            if prev is not None:
                held = prev.take(bucket)  # written by this module: each key once
                found = _found_in(held, now, keys)
                gone, kept = held.filter(~found), held.filter(found)
                del held, found
                deleted_count += gone.height
                deleted_out.add(_typed(gone, ref, entity))
            else:
                kept = now.unique()
            del now
            if wrote is not None:
                new = wrote.take(bucket).unique()
                if new.height:
                    # probing the bucket against the few written keys beats a unique() of both
                    rest = kept.join(new, on=keys, how="anti", nulls_equal=True)
                    kept = pl.concat([rest, new])
            count += kept.height
            kept_out.add(_typed(kept, ref, entity))
        kept_out.flush()
        deleted_out.flush()
    return path, count, source_count, deleted_count, deleted_path


def _found_in(held: pl.DataFrame, now: pl.DataFrame, keys: list[str]) -> pl.Series:
    """Which of `held`'s keys are in `now`: one hash of `now` serves the deletes and the kept
    keys (a semi-join and an anti-join would build it twice); NULL fields match NULLs."""
    wanted = now.select(pl.struct(keys)).to_series().implode()
    return held.select(pl.struct(keys).is_in(wanted, nulls_equal=True)).to_series()


def _typed(frame: pl.DataFrame, ref: pa.Schema, entity: str | None) -> pa.Table:
    """A bucket's frame back in the source's Arrow types (Polars has its own layouts)."""
    return conform(frame.to_arrow(), ref, "the compared keys", entity)


def _reference_schema(
    keys: list[str],
    first: pa.RecordBatch | None,
    schema: pa.Schema | None,
    previous: pq.ParquetFile | None,
    written: KeyCollector | None,
    entity: str | None,
) -> pa.Schema:
    """The source's key types: from its first batch, else `schema`, the stored set, the
    written keys, or (nothing anywhere) untyped columns of an empty set."""
    if first is not None:
        return key_schema(first.schema, keys, entity)
    if schema is not None:
        return key_schema(schema, keys, entity)
    if previous is not None and previous.metadata.num_rows:
        return key_schema(previous.schema_arrow, keys, entity)
    if written is not None and written.schema is not None:
        return written.schema
    return pa.schema([pa.field(k, pa.null()) for k in keys])


def _remove_empty(folder: Path) -> None:
    # absent, or holding a file of an interrupted spill: the caller's workdir owns it
    with contextlib.suppress(OSError):
        folder.rmdir()

"""The disk side of key-set reconciliation: key columns, their type rules, and bucket spills.

`hygge_tasks.keyset` compares key sets far larger than memory by routing every key, from each
side, to one of `n` bucket files by a hash of its key columns: equal keys always land in the
same bucket, so each bucket is compared on its own, a few hundred thousand keys at a time.
The hash only routes keys within one comparison; it is never stored, so a Polars upgrade that
changes it cannot mismatch two runs.

Every side is cast to one reference schema (the source's key types) before it is hashed,
because the hash of a value depends on its type. A stored key set whose types differ from the
source's is cast to them only inside the same family (integer widths, string or binary layouts,
timestamp units and zones, decimal precision) and only when no value changes; anything else is
refused, since a key `1` and a key `"1"` are different keys.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from hygge_core.errors import ConfigError, LedgerError

#: rows gathered before they are split into buckets: bounds the number of spill writes
CHUNK_ROWS = 1_000_000
#: keys per bucket aimed at when choosing the bucket count (one bucket is joined in memory)
BUCKET_ROWS = 250_000
MIN_BUCKETS, MAX_BUCKETS = 16, 1024
#: any fixed seed: hashes route keys within one comparison and are never kept
_SEED = 0x6879_6767
_BUCKET = "__hygge_bucket"


def bucket_count(expected_keys: int, floor: int = MIN_BUCKETS) -> int:
    """A power of two (at least `floor`) that puts about `BUCKET_ROWS` keys into each bucket."""
    n = floor
    while n < MAX_BUCKETS and n * BUCKET_ROWS < expected_keys:
        n *= 2
    return n


def _family(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    checks = [
        ("integer", pa.types.is_integer),
        ("float", pa.types.is_floating),
        ("decimal", pa.types.is_decimal),
        ("timestamp", pa.types.is_timestamp),
        ("date", pa.types.is_date),
        ("time", pa.types.is_time),
        ("duration", pa.types.is_duration),
        ("bool", pa.types.is_boolean),
        ("null", pa.types.is_null),
    ]
    for name, check in checks:
        if check(t):
            return name
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return "binary"
    return str(t)


#: the families Polars compares as keys (`null`: a column with no value yet)
_COMPARABLE = frozenset(
    {"integer", "float", "decimal", "timestamp", "date", "time", "duration", "bool", "null"}
    | {"string", "binary"}
)


def key_schema(schema: pa.Schema, keys: list[str], entity: str | None = None) -> pa.Schema:
    """The key columns of `schema`, dictionary columns as their values; nested types refused."""
    missing = [k for k in keys if k not in schema.names]
    if missing:
        msg = (
            f"the key columns {missing} are not in the data (its columns: {schema.names}); "
            "fix the entity's `keys`"
        )
        raise ConfigError(msg, entity=entity)
    fields = []
    for key in keys:
        t = schema.field(key).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        # Polars holds decimals of up to 38 digits (it panics on wider ones)
        too_wide = pa.types.is_decimal(t) and t.precision > 38
        if _family(t) not in _COMPARABLE or pa.types.is_float16(t) or too_wide:
            msg = (
                f"key column {key!r} is {t}, which cannot be compared as a key (ints, strings, "
                "binary, decimals, dates, times, timestamps, durations and booleans can); "
                "choose other key columns or cast them in the source"
            )
            raise ConfigError(msg, entity=entity)
        fields.append(pa.field(key, t))
    schema = pa.schema(fields)
    try:
        pl.from_arrow(schema.empty_table())  # the comparison runs in Polars
    except Exception as exc:  # Polars raises several kinds for a type it lacks
        msg = (
            f"the key columns' types ({', '.join(f'{f.name}: {f.type}' for f in schema)}) "
            f"cannot be compared ({exc}); choose other key columns or cast them in the source"
        )
        raise ConfigError(msg, entity=entity) from exc
    return schema


def conform(
    data: pa.RecordBatch | pa.Table, schema: pa.Schema, what: str, entity: str | None = None
) -> pa.Table:
    """The key columns of `data` in `schema`'s types, or a LedgerError naming the change."""
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    table = table.select(schema.names)
    if table.schema.equals(schema):
        return table
    for f in schema:
        have = table.schema.field(f.name).type
        if have != f.type and _family(have) not in (_family(f.type), "null"):
            msg = (
                f"key column {f.name!r} is {f.type} at the source but {have} in {what}; keys of "
                "different types never match, so the key set cannot be compared; run this entity "
                "with --full-drop to reload it and start a new key set"
            )
            raise LedgerError(msg, entity=entity)
    try:
        return table.cast(schema, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        msg = (
            f"the keys in {what} do not fit the source's key types {schema} ({exc}); run this "
            "entity with --full-drop to reload it and start a new key set"
        )
        raise LedgerError(msg, entity=entity) from exc


class Coalesced:
    """Gathers small tables into writes of at least `rows` rows (fewer, larger batches)."""

    def __init__(self, write: Callable[[pa.Table], None], rows: int) -> None:
        self._write = write
        self._rows = rows
        self._pending: list[pa.Table] = []
        self._count = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._count += table.num_rows
        if self._count >= self._rows:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            combined = pa.concat_tables(self._pending).combine_chunks()
            self._write(combined)
            self._pending, self._count = [], 0


class BucketSpill:
    """One side's keys, routed to `n` Arrow IPC files by a hash of the key columns.

    Rows gather to `CHUNK_ROWS`, then each chunk is split once and appended to the bucket
    files, which stay open until `close`: memory holds one chunk, whatever the side's size.

    `n` may be left to the spill (give `expected` keys instead): it is fixed at the first split,
    as `bucket_count` of the larger of `expected` and the rows seen, and a side that ends
    before filling one chunk (its size then known) may get fewer than `MIN_BUCKETS`, down to
    one, so a small entity is not split into files of a few keys each.
    """

    def __init__(
        self, folder: Path, schema: pa.Schema, n: int | None = None, expected: int = 0
    ) -> None:
        self.folder = folder
        self._n = n
        self._expected = expected
        self.schema = schema
        #: the Polars form of `schema` (what bucket files hold), fixed by the empty frame
        self.frame_schema = pl.from_arrow(schema.empty_table()).to_arrow().schema
        self.rows = 0
        self._tag = uuid.uuid4().hex[:8]
        self._writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, bucket: int) -> Path:
        return self.folder / f"{self._tag}-{bucket:04d}.arrows"

    def add(self, table: pa.Table) -> None:
        """Spill conformed key columns (`schema`'s types)."""
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= CHUNK_ROWS:
            self._flush(final=False)

    @property
    def n(self) -> int:
        assert self._n is not None, "the bucket count is fixed at the first split"
        return self._n

    def _flush(self, final: bool) -> None:
        if self._n is None:
            floor = 1 if final else MIN_BUCKETS
            self._n = bucket_count(max(self._expected, self._pending_rows), floor)
        if not self._pending:
            return
        frame = pl.from_arrow(pa.concat_tables(self._pending))
        assert isinstance(frame, pl.DataFrame)
        self._pending, self._pending_rows = [], 0
        self.rows += frame.height
        route = (frame.hash_rows(seed=_SEED) % self.n).alias(_BUCKET)
        parts = frame.with_columns(route).partition_by(_BUCKET, as_dict=True, include_key=False)
        del frame
        for (bucket,), part in parts.items():
            arrow = part.to_arrow()
            if not arrow.schema.equals(self.frame_schema):
                arrow = arrow.cast(self.frame_schema)
            writer = self._writers.get(int(bucket))
            if writer is None:
                writer = ipc.new_stream(str(self.path(int(bucket))), self.frame_schema)
                self._writers[int(bucket)] = writer
            writer.write_table(arrow)

    def close(self) -> None:
        self._flush(final=True)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def take(self, bucket: int) -> pl.DataFrame:
        """One bucket's keys as a frame (empty when none landed there); its file goes."""
        path = self.path(bucket)
        if not path.exists():
            frame = pl.from_arrow(self.frame_schema.empty_table())
        else:
            with pa.OSFile(str(path)) as source:
                frame = pl.from_arrow(ipc.open_stream(source).read_all())
            path.unlink()
        assert isinstance(frame, pl.DataFrame)
        return frame

    def discard(self) -> None:
        self._pending = []
        self.close()
        for bucket in range(self.n):
            with contextlib.suppress(FileNotFoundError):
                self.path(bucket).unlink()


def stream_file(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC stream file, read one at a time."""
    with pa.OSFile(str(path)) as source:
        yield from ipc.open_stream(source)

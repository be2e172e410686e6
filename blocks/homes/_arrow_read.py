"""Parquet files whose types Polars' own reader would change, read through pyarrow instead.

Polars reads a column by the Arrow type the writer left in the footer (`ARROW:schema`), and
for a few types that changes values or fails the whole file:

- `date64` becomes a millisecond timestamp (a date must stay a date);
- `duration[s]` becomes milliseconds and wraps on overflow;
- a timestamp in a zone Polars does not know (`+05:30`) fails every column of the file;
- a decimal of more than 38 digits fails the file ("precision must be between 1 and 38").

Such files are read by pyarrow and cast, checked value by value, to types Polars holds
exactly: `date32`, `duration[ms]`, the same instants in UTC. A decimal wider than 38 digits has
no exact form in Polars, nor in Fabric: it is refused before anything is read, naming the
column, unless the entity's `columns` leave it out.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from hygge_core.errors import HomeError, first_line

if TYPE_CHECKING:
    from blocks.homes._place import FileRef

#: the widest decimal Polars (and Fabric, and Delta) hold
MAX_DIGITS = 38
_BATCH_ROWS = 65_536


class Unsupported(Exception):
    """A column type with no exact form in Polars."""


def footer_schema(meta: pq.FileMetaData) -> pa.Schema | None:
    """The Arrow schema the writer stored in the footer (what Polars reads), if any."""
    raw = (meta.metadata or {}).get(b"ARROW:schema")
    if raw is None:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(raw)))
    except (ValueError, pa.ArrowException):
        return None


@functools.cache
def polars_zone(zone: str) -> bool:
    """Whether Polars knows this time zone (IANA names, UTC and some offsets)."""
    try:
        pl.Series([], dtype=pl.Datetime("us", zone))
    except pl.exceptions.PolarsError:
        return False
    return True


def exact_type(t: pa.DataType) -> pa.DataType:
    """The type Polars holds `t`'s values in exactly; Unsupported when there is none."""
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_duration(t) and t.unit == "s":
        return pa.duration("ms")
    if pa.types.is_timestamp(t) and t.tz is not None and not polars_zone(t.tz):
        # Arrow stores the UTC instant; only the zone's name changes
        return pa.timestamp(t.unit, "UTC")
    if pa.types.is_decimal(t):
        if t.precision > MAX_DIGITS:
            raise Unsupported(str(t))
        # Polars imports 128-bit decimals only; the same digits fit
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(exact_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(
            t.key_field.with_type(exact_type(t.key_type)),
            t.item_field.with_type(exact_type(t.item_type)),
        )
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(exact_type(t.value_type)), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(exact_type(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(exact_type(t.value_type)))
    return t


def needs_arrow(meta: pq.FileMetaData) -> bool:
    """Whether Polars' reader would change or refuse a column of this file."""
    for schema in (meta.schema.to_arrow_schema(), footer_schema(meta)):
        if schema is None:
            continue
        for field in schema:
            try:
                if exact_type(field.type) != field.type:
                    return True
            except Unsupported:
                return True
    return False


def read_schema(files: list[FileRef], columns: list[str] | None, entity: str) -> pa.Schema:
    """The entity's columns in the types they are carried as; refuses what cannot be."""
    fields = []
    for field in pq.read_schema(files[0].source()):
        if columns is not None and field.name not in columns:
            continue
        try:
            fields.append(field.with_type(exact_type(field.type)))
        except Unsupported as exc:
            msg = (
                f"column {field.name!r} of {str(files[0])!r} is {exc}: more than {MAX_DIGITS} "
                "digits, which hygge cannot carry exactly (nor can Fabric); leave the column "
                "out with the entity's `columns`, or write it in the file as text or as a "
                f"decimal of at most {MAX_DIGITS} digits"
            )
            raise HomeError(msg, entity=entity) from None
    return pa.schema(fields)


def scan_arrow(files: list[FileRef], schema: pa.Schema, entity: str) -> pl.LazyFrame:
    """A lazy scan of `files` read by pyarrow, cast to `schema`, for Polars to shape."""
    polars_schema = pl.from_arrow(schema.empty_table()).schema  # type: ignore[union-attr]

    def source(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        if n_rows == 0:
            return
        names = with_columns if with_columns is not None else schema.names
        target = pa.schema([schema.field(n) for n in names])
        left = n_rows
        for path in files:
            try:
                with pq.ParquetFile(path.source()) as f:
                    for batch in f.iter_batches(
                        batch_size=batch_size or _BATCH_ROWS, columns=names
                    ):
                        frame = _frame(_cast(batch, target, path, entity))
                        if predicate is not None:
                            frame = frame.filter(predicate)
                        if left is not None:
                            frame = frame.head(left)
                            left -= frame.height
                        yield frame
                        if left == 0:
                            return
            except HomeError:
                raise
            except (Exception, pl.exceptions.PanicException) as exc:
                # Polars drops a panic raised in a Python source and ends the scan as if the
                # file were done: it must surface, or rows would go missing without an error
                msg = f"could not read {str(path)!r}: {first_line(exc)}"
                raise HomeError(msg, entity=entity) from exc

    reader: Callable[..., Iterator[pl.DataFrame]] = source
    return register_io_source(reader, schema=polars_schema, explain_name="hygge-pyarrow")


def _frame(batch: pa.RecordBatch) -> pl.DataFrame:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _cast(batch: pa.RecordBatch, schema: pa.Schema, path: FileRef, entity: str) -> pa.RecordBatch:
    """`batch` in the carried types; a value that does not fit fails, naming its column."""
    arrays = []
    for field in schema:
        column = batch.column(field.name)
        try:
            arrays.append(column if column.type == field.type else column.cast(field.type))
        except pa.ArrowException as exc:
            msg = (
                f"column {field.name!r} of {str(path)!r} ({column.type}) holds a value that "
                f"{field.type} cannot hold exactly ({first_line(exc)}); rewrite the column "
                "in the file, or leave it out with the entity's `columns`"
            )
            raise HomeError(msg, entity=entity) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=schema)

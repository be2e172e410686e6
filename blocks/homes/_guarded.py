"""Columns read with a guard: values Arrow cannot hold are refused, never changed.

A SQL Home selects each column with an expression and the Arrow type it yields. Where the
database holds values that type cannot (PostgreSQL's ±infinity, MySQL's zero dates or a TIME
past 24 hours), the column carries a guard: a boolean SQL expression, read beside the columns
and checked per batch, so the read fails naming the column and the choice before anything is
written. The driver's batch is then cast to the Home's schema (text decimals to decimals).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from blocks.homes._sql import Dialect
from hygge_core.errors import ConfigError, HomeError


@dataclass(frozen=True)
class Column:
    name: str
    expr: str  # how the final SELECT names it (with a cast where needed)
    arrow: pa.DataType  # the type the Home yields
    #: a boolean SQL expression, true for a value Arrow cannot hold exactly (read beside the
    #: column and checked per batch), and what the user can do about such a value
    guard: str | None = None
    refusal: str = ""
    #: False: the guard is not read beside the column, because the driver itself fails on
    #: such a value (connectorx on a zero date); the Home then asks which column it was
    read_guard: bool = True


def unique_names(names: list[str], entity: str) -> None:
    """Refuse a source that returns a column name twice: a Store keeps one column per name."""
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        listed = ", ".join(map(repr, dupes))
        msg = f"the source returns column(s) {listed} more than once; alias them"
        raise ConfigError(msg, entity=entity)


def select_list(dialect: Dialect, columns: list[Column]) -> list[str]:
    """Each column's expression, then one boolean per guarded column (see `Column.guard`)."""
    guards = [
        f"({c.guard}) AS {dialect.quote(f'hygge guard {i}')}"
        for i, c in enumerate(_read_guards(columns))
    ]
    return [c.expr for c in columns] + guards


def refuse_guarded(
    batch: pa.RecordBatch, columns: list[Column], entity: str, dialect: Dialect, as_text: str
) -> None:
    """Fail the read on a value Arrow cannot hold exactly, before anything is written.

    `as_text` is the database's cast to its own text, with `{q}` for the quoted column.
    """
    for i, c in enumerate(_read_guards(columns)):
        flags = batch.column(len(columns) + i)
        if not pa.types.is_boolean(flags.type):  # MySQL's booleans are integers
            flags = flags.cast(pa.bool_())
        if pc.any(flags).as_py():
            raise refusal(c, entity, dialect, as_text)


def refusal(column: Column, entity: str, dialect: Dialect, as_text: str) -> HomeError:
    """The error for a value of `column` its Arrow type cannot hold: the column, the choice."""
    quoted = dialect.quote(column.name)
    cast = as_text.format(q=quoted)
    msg = (
        f"column {column.name!r} holds {column.refusal}: it cannot be read exactly as "
        f"{column.arrow}. Read it as {dialect.name}'s text with a `query` (`SELECT ..., {cast} "
        f"AS {quoted} ...`), or leave those rows out with `where`"
    )
    return HomeError(msg, entity=entity)


def _read_guards(columns: list[Column]) -> list[Column]:
    return [c for c in columns if c.guard and c.read_guard]


def conform(batch: pa.RecordBatch, schema: pa.Schema, entity: str) -> pa.RecordBatch:
    """Cast a driver batch to the Home's schema (text decimals to decimals, drop metadata)."""
    cols = []
    for i, f in enumerate(schema):
        col = batch.column(i)
        if isinstance(col.type, pa.BaseExtensionType):
            col = col.storage  # type: ignore[attr-defined]
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                msg = (
                    f"column {f.name!r} holds a value that is not {f.type} (e.g. NaN or "
                    f"Infinity in a numeric): {exc}; select it as text or filter those rows"
                )
                raise HomeError(msg, entity=entity) from exc
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def guarded_batch(
    raw: pa.RecordBatch,
    schema: pa.Schema,
    columns: list[Column],
    entity: str,
    dialect: Dialect,
    as_text: str,
) -> pa.RecordBatch:
    """`raw` checked against its columns' guards, then in the Home's schema."""
    refuse_guarded(raw, columns, entity, dialect, as_text)
    return conform(raw, schema, entity)

"""How SQLite's stored values become exact Arrow values (`SqliteHome`'s type rules).

SQLite keeps a storage class per value (INTEGER, REAL, TEXT, BLOB) whatever a column declares.
A read selects each declared decimal twice, its REALs as doubles and its INTEGER and TEXT
values as text (`with_sentinel`), and joins them exactly (`exact_decimals`); every other
column is cast to its declared type, and a value that does not fit fails, naming it.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from blocks.homes._sql import SQLITE
from hygge_core.errors import HomeError, first_line

DECIMAL = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.I)
SENTINEL = "__hygge_sentinel__"
#: the prefix of the column that carries a decimal column's INTEGER and TEXT values as text
TEXT_PART = "__hygge_text__"


def with_sentinel(sql: str, columns: list[tuple[str, pa.DataType | None]]) -> str:
    """Put one typed, marked row ahead of the result.

    ADBC infers each column's type from the values of the first batch: a TEXT column that is
    NULL there (common after `ALTER TABLE ADD COLUMN`) becomes int64 and the read fails at the
    first text value. A leading row with a value of the declared type fixes the inference; the
    marker column lets every batch drop it again, wherever SQLite happens to place it.

    A decimal column is selected as two (`exact_decimals` joins them): its REAL values as
    doubles, and its INTEGER and TEXT values as their exact text, so no value passes through a
    double that SQLite does not hold as one.
    """
    values, projection = [], []
    for n, t in columns:
        q = quote_ident(n)
        if t is not None and pa.types.is_decimal(t):
            text = quote_ident(TEXT_PART + n)
            values += [f"0.0 AS {q}", f"'' AS {text}"]
            projection += [
                f"CASE typeof({q}) WHEN 'real' THEN {q} END",
                # a blob shows as its X'..' literal, which then fails as no number
                f"CASE typeof({q}) WHEN 'real' THEN NULL WHEN 'blob' THEN quote({q}) "
                f"ELSE CAST({q} AS TEXT) END",
            ]
        else:
            values.append(f"{typed_literal(t)} AS {q}")
            projection.append(q)
    marker = quote_ident(SENTINEL)
    return (
        f"SELECT 1 AS {marker}, {', '.join(values)} "
        f"UNION ALL SELECT 0, {', '.join(projection)} FROM ({sql})"
    )


def typed_literal(typ: pa.DataType | None) -> str:
    if typ is None:
        return "NULL"
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return "0"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "0.0"
    if pa.types.is_binary(typ):
        return "X''"
    return "''"  # text, and dates and timestamps, which SQLite keeps as text


def is_text_part(name: str) -> bool:
    return name.startswith(TEXT_PART)


def exact_decimals(batch: pa.RecordBatch, schema: pa.Schema, entity: str) -> pa.RecordBatch:
    """Join each decimal column's two parts (`with_sentinel`) into its exact decimal.

    A REAL becomes the shortest decimal that reads back as the same double: the digits SQLite
    was given whenever they were 15 or fewer (NUMERIC affinity keeps no more), and what Python
    prints for the double. INTEGER and TEXT values are parsed from their text. A value that is
    no finite number or does not fit the declared precision and scale fails the read, naming
    the column and the value: nothing is rounded.
    """
    for f in schema:
        text_index = batch.schema.get_field_index(TEXT_PART + f.name)
        if not pa.types.is_decimal(f.type) or text_index < 0:
            continue
        index = batch.schema.get_field_index(f.name)
        real, text = batch.column(index), batch.column(text_index)
        try:
            exact = reals_at_scale(real, f.type)
            if exact is None:  # some REAL needs its shortest digits: the exact, slower way
                exact = real.cast(pa.string()).cast(f.type)
            if text.null_count < len(text):
                exact = pc.coalesce(exact, text.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            joined = pc.coalesce(real.cast(pa.string()), text)
            raise decimal_error(f, real, joined, entity) from exc
        batch = batch.set_column(index, f.name, exact).remove_column(text_index)
    return batch


def reals_at_scale(real: pa.Array, typ: pa.Decimal128Type) -> pa.Array | None:
    """The REALs as decimals by arithmetic, or None if any one needs `exact_decimals`' way.

    For each double x the candidate is n = round(x * 10^s); n / 10^s is one correctly rounded
    IEEE division, so it equals x exactly when the decimal n * 10^-s reads back as x. Below
    2^50 units of the scale a double's rounding interval is narrower than a quarter unit, so
    that decimal is the only one of scale s that does, which is the shortest digits of x.
    Everything else (more digits than the scale, too large, inf) takes the exact way, which
    fails where it must.
    """
    import numpy as np

    if not 0 <= typ.scale <= 22 or real.null_count == len(real):  # 10^22: the largest exact
        return None if real.null_count < len(real) else pa.nulls(len(real), typ)
    x = real.to_numpy(zero_copy_only=False)
    valid = ~np.isnan(x)  # NULL reads as NaN; SQLite stores no NaN
    unit = 10.0**typ.scale
    with np.errstate(invalid="ignore", over="ignore"):
        n = np.rint(x * unit)
        fits = (n / unit == x) & (np.abs(n) < min(2.0**50, 10.0**typ.precision))
    if not fits[valid].all():
        return None
    units = np.where(valid, n, 0).astype(np.int64)
    words = np.empty((len(units), 2), dtype=np.int64)  # a decimal128 is two little-endian words
    words[:, 0] = units
    words[:, 1] = units >> 63
    values = pa.Array.from_buffers(typ, len(units), [None, pa.py_buffer(words)])
    return pc.if_else(real.is_valid(), values, pa.scalar(None, typ))


def decimal_error(field: pa.Field, real: pa.Array, joined: pa.Array, entity: str) -> HomeError:
    """The first value of `joined` that is no `field.type`, as an error that says the fix."""
    name = quote_ident(field.name)
    for i, value in enumerate(joined.to_pylist()):
        if value is None:
            continue
        try:
            pa.array([value]).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            is_real = real[i].is_valid
            held = f"the REAL {value}" if is_real else repr(value)
            as_what = f"CAST({name} AS REAL)" if is_real else f"CAST({name} AS TEXT)"
            msg = (
                f"column {field.name!r} holds {held}, which is not a {field.type} "
                f"({first_line(exc)}); nothing is rounded: declare the column with a DECIMAL(p,s) "
                f"that holds it, or read it through a `query` that selects {as_what}"
            )
            return HomeError(msg, entity=entity)
    return HomeError(f"column {field.name!r} is not a {field.type}", entity=entity)


def drop_sentinel(batch: pa.RecordBatch) -> pa.RecordBatch:
    index = batch.schema.get_field_index(SENTINEL)
    marker = batch.column(index)
    if pc.any(pc.equal(marker, 1)).as_py():
        batch = batch.filter(pc.equal(marker, 0))
    return batch.drop_columns([SENTINEL])


def quote_ident(name: str) -> str:
    """Quote an identifier for SQLite: any name is legal, nothing is injected.

    A table name is one identifier here (a dot is part of the name), as it always was.
    """
    return SQLITE.quote(name)


def arrow_type_for(declared: str) -> pa.DataType | None:
    """The Arrow type for a SQLite declared type, or None to keep what the driver returns."""
    d = declared.upper()
    if m := DECIMAL.search(d):
        return pa.decimal128(int(m.group(1)), int(m.group(2) or 0))
    if "BOOL" in d:
        return pa.bool_()
    if "INT" in d:
        return pa.int64()
    if "TIME ZONE" in d or "TIMESTAMPTZ" in d:
        return pa.timestamp("us", "UTC")  # the SQLite Store writes these with their offset
    if "DATETIME" in d or "TIMESTAMP" in d:
        return pa.timestamp("us")
    if "DATE" in d:
        return pa.date32()
    if any(t in d for t in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if any(t in d for t in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    if "BLOB" in d:
        return pa.binary()
    return None


def merge_schema(driver: pa.Schema, declared: dict[str, pa.DataType] | None) -> pa.Schema:
    fields = []
    for f in driver:
        typ = (declared or {}).get(f.name, f.type)
        if pa.types.is_null(typ):
            typ = pa.string()  # an all-NULL column of unknown type: text is the safe landing
        fields.append(pa.field(f.name, typ))
    return pa.schema(fields)


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema, entity: str) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    cols = []
    for f in schema:
        col = batch.column(f.name)
        try:
            if pa.types.is_boolean(f.type) and pa.types.is_integer(col.type):
                zero_or_one(col, f.name, entity)  # Arrow casts any nonzero to true
            if pa.types.is_decimal(f.type) and pa.types.is_integer(col.type):
                # SQLite keeps `1.00` as INTEGER 1; Arrow casts int64 only to wide decimals
                col = col.cast(pa.decimal128(38, f.type.scale))
            cols.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            msg = (
                f"column {f.name!r} holds a value that is not {f.type} "
                f"(read as {col.type}): {first_line(exc)}; fix the value, or read the column "
                f"as text through a `query` (CAST({quote_ident(f.name)} AS TEXT))"
            )
            raise HomeError(msg, entity=entity) from exc
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def zero_or_one(col: pa.Array, name: str, entity: str) -> None:
    """Refuse a BOOLEAN column value other than 0 or 1: it is no boolean to read exactly."""
    other = pc.invert(pc.is_in(col, pa.array([0, 1], col.type)))
    bad = pc.filter(col, pc.and_(pc.is_valid(col), other))
    if len(bad):
        msg = (
            f"column {name!r} is declared BOOLEAN but holds {bad[0].as_py()}, which is neither "
            "0 nor 1; fix the value, or read the column as an integer through a `query` "
            f"(CAST({quote_ident(name)} AS INTEGER))"
        )
        raise HomeError(msg, entity=entity)

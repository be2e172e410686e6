"""How Arrow columns become SQLite columns that `SqliteHome` reads back exactly.

The inverse of `blocks.homes._sqlite_values.arrow_type_for`: each Arrow type gets the declared
type the Home maps back to it, and each value is bound as the storage class that holds it
without change (dates and timestamps as ISO text, decimals as their digits, booleans as 0/1).

A value SQLite cannot hold exactly is refused by name before anything is committed: an
unsigned 64-bit integer above 2^63-1 (INTEGER is signed), a float NaN (SQLite stores NaN as
NULL), and the types SQLite has no storage class for (lists, structs, maps, durations).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from hygge_core.errors import StoreError

#: the most significant digits a REAL holds exactly: NUMERIC affinity turns longer digit text
#: into a rounded REAL, so wider decimals are kept as TEXT (`declared_type`)
REAL_DIGITS = 15
_I64_MAX = 2**63 - 1


def declared_type(field: pa.Field, entity: str) -> str:
    """The declared type of a SQLite column holding `field`, as `SqliteHome` reads it back."""
    t = field.type
    if pa.types.is_dictionary(t):
        return declared_type(pa.field(field.name, t.value_type), entity)
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "INTEGER"
    if pa.types.is_floating(t):
        return "REAL"
    if pa.types.is_decimal(t):
        if t.precision <= REAL_DIGITS:
            return f"DECIMAL({t.precision},{t.scale})"
        # TEXT affinity (the declared type names TEXT) keeps every digit as written; the Home
        # still finds DECIMAL(p,s) in it
        return f"TEXT DECIMAL({t.precision},{t.scale})"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "DATETIME"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return "TEXT"
    if pa.types.is_string_view(t):
        return "TEXT"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "BLOB"
    if pa.types.is_binary_view(t):
        return "BLOB"
    msg = (
        f"column {field.name!r} is {t}, which SQLite has no column type for; nothing was "
        "written. Cast it to text (JSON) or split it into columns in the entity's `query` or "
        "polish, or write this entity to a Parquet or Delta Store"
    )
    raise StoreError(msg, entity=entity)


def binding_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column is bound to SQLite as (ADBC binds these storage classes)."""
    if pa.types.is_dictionary(t):
        return binding_type(t.value_type)
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return t
    if pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return pa.large_binary()
    if pa.types.is_null(t):
        return pa.string()
    return pa.large_string() if pa.types.is_large_string(t) else pa.string()


def to_sqlite(batch: pa.RecordBatch, entity: str) -> pa.RecordBatch:
    """`batch` with every column as the storage class it is bound as, or a StoreError naming
    the first column holding a value SQLite cannot keep exactly."""
    arrays = []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_dictionary(f.type):
            col = col.dictionary_decode()
        arrays.append(_bound(f.name, col, entity))
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _bound(name: str, col: pa.Array, entity: str) -> pa.Array:
    t = col.type
    if pa.types.is_uint64(t) and len(col) and (pc.max(col).as_py() or 0) > _I64_MAX:
        big = pc.max(col).as_py()
        msg = (
            f"column {name!r} holds {big}, above SQLite's largest INTEGER (2^63-1); nothing "
            "was written. Cast it to a DECIMAL(20,0) or to text in the entity's `query` or "
            "polish, and SQLite keeps every digit"
        )
        raise StoreError(msg, entity=entity)
    if pa.types.is_floating(t) and pc.any(pc.is_nan(col)).as_py():
        msg = (
            f"column {name!r} holds NaN, which SQLite stores as NULL; nothing was written. Turn "
            f"NaN into NULL in the entity's `query` (NULLIF) or polish if NULL is meant, or "
            f"cast the column to text, which keeps 'NaN'"
        )
        raise StoreError(msg, entity=entity)
    if pa.types.is_timestamp(t):
        if t.tz:
            # one zone for every value: UTC, which the Home reads back as the same instant
            col = col.cast(pa.timestamp(t.unit, "UTC"))
        text = col.cast(pa.string())
        return pc.replace_substring_regex(text, r"Z$", "+00:00") if t.tz else text
    target = binding_type(t)
    return col if col.type == target else col.cast(target)


def ident(name: str) -> str:
    """A quoted SQLite identifier: any name is legal, nothing is injected."""
    if "\x00" in name:
        msg = f"column or table name {name!r} contains a NUL character, which SQLite refuses"
        raise StoreError(msg)
    return '"' + name.replace('"', '""') + '"'


def column_list(names: list[str]) -> str:
    return ", ".join(ident(n) for n in names)


def declared_columns(schema: pa.Schema, entity: str) -> list[tuple[str, str]]:
    """Each column's name and declared type (a StoreError for a type SQLite cannot hold)."""
    return [(f.name, declared_type(f, entity)) for f in schema]

"""The identities of the rows at a watermark boundary, as the ledger stores them.

The ledger's boundary set names the rows already loaded at exactly the watermark value
(`hygge_tasks.watermark`). An identity must name one row and only that row, and the same row
read again by a later run, on any machine, must get the same identity. The format is marked in
the ledger entry (`boundary_format`), so an entry keeps meaning what it meant when written.

Format 2 (written since hygge kept typed identities): each row's fields are encoded, in order,
in the canonical typed, length-prefixed form of `hygge_tasks.rowhash`:

    NULL     `-`                      (one NULL, whatever the column's type)
    a value  `<kind> <n>:<payload>`   `<kind>` the value's family: `int`, `float`, `decimal`,
                                      `str`, `bytes`, `bool`, `date`, `timestamp` (no zone),
                                      `timestamptz`, `time`, `duration`, `list`, `struct`,
                                      `map`; `<n>` the payload's length in bytes

The payload is `rowhash.encode_column`'s: exact and independent of width, unit and scale (an
int32 5 and an int64 5 are one value, as are `12.50` as decimal(5,2) and decimal(9,3), and a
microsecond and a nanosecond timestamp of the same instant), so a later run that reads a
column a little differently still names the same rows. A list's payload is its elements'
fields, a struct's its fields' `<n>:<name>` and value fields, a map's its entries' key and
value fields; an extension type's (uuid) is its storage's, and a type without a canonical
form (an interval) is the value's Python text, its kind the type's name.

Every field delimits itself, so no value can pass for another: NULL is not the text `\\N`
nor the empty text (`str 0:`), `("a\\x1fb", "c")` is not `("a", "b\\x1fc")`, and the integer
5 (`int 1:5`) is not the text `5` (`str 1:5`).

With `keys`, the fields are the key columns, in the spec's order; without keys, every column
in name order, each field preceded by `<n>:<column name>`. The identity is the first 128 bits
of SHA-256 of those bytes as 32 hex characters (what `rowhash.sha256_prefix` computes): the
chance that any two of a billion boundary rows share one is below 10^-20 (n^2 / 2^129).

One exception keeps the commonest ledgers readable and unchanged from format 1: with one
integer key, a non-NULL key's identity is its decimal digits (`"1245"`). An integer has one
spelling and is never 32 characters long, so it cannot meet a digest; a NULL key is a digest
like any other tuple, and the text `5` (a digest) is not the integer 5.

Format 1 (ledger entries without `boundary_format`): the key values cast to text and joined
with `\\x1f`, NULL written as `\\N` (so the text `\\N` and NULL were one identity, and so were
key tuples whose text contained `\\x1f`), or without keys the first 32 hex digits of SHA-256
of the row as sorted-key JSON. `legacy_identities` computes them exactly as before, so such an
entry still excludes what it excluded when it was written; the next commit writes format 2.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hygge_core.timestamps import NanoTimestamp
from hygge_tasks.rowhash import encode_column

__all__ = ["BOUNDARY_FORMAT", "identities", "legacy_identities"]

#: the format this hygge writes; entries without a mark are format 1
BOUNDARY_FORMAT = 2

_BIN = pa.large_binary()
_NULL_FIELD = pa.scalar(b"-", _BIN)
_EMPTY = pa.scalar(b"", _BIN)
_COLON = pa.scalar(b":", _BIN)
_LEGACY_SEP = "\x1f"


def identities(rows: pa.RecordBatch, keys: list[str]) -> list[str]:
    """The format-2 identity of each row of `rows`: by its `keys`, or by the whole row."""
    if rows.num_rows == 0:
        return []
    if keys:
        cols = [rows.column(k) for k in keys]
        only = cols[0]
        if len(cols) == 1 and pa.types.is_integer(_value_type(only.type)):
            digits = pc.cast(_decoded(only), pa.string())
            if only.null_count == 0:
                return digits.to_pylist()
            return pc.fill_null(digits, _digests(pa.array([b"-"], _BIN))[0]).to_pylist()
        return _digests(_join([_field(c) for c in cols]))
    names = sorted(rows.schema.names)
    fields = []
    for name in names:
        fields.append(pa.scalar(_sized(name.encode()), _BIN))
        fields.append(_field(rows.column(name)))
    return _digests(_join(fields))


def _digests(encodings: pa.Array) -> list[str]:
    # `rowhash.sha256_prefix`'s value; hashlib per row is ~4x faster than its NumPy SHA-256
    # here (1M two-column keys: 1.3 s against 6.0 s on 2 cores), and the ledger wants a list
    sha = hashlib.sha256
    return [sha(m).hexdigest()[:32] for m in encodings.to_pylist()]


def _join(fields: list[pa.Array | pa.Scalar]) -> pa.Array:
    return pc.binary_join_element_wise(*fields, _EMPTY)


def _sized(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data


def _field(col: pa.Array) -> pa.Array:
    """Each value's `<kind> <n>:<payload>`, or `-` for NULL (never NULL itself)."""
    col = _decoded(col)
    if isinstance(col.type, pa.BaseExtensionType):  # uuid and the like: their stored bytes
        col = col.storage
    try:
        payload = _payload(col)
    except TypeError:
        # no canonical form (intervals, ...): the value's Python text, under its type's name
        text = [None if v is None else str(v).encode() for v in col.to_pylist()]
        payload = pa.array(text, _BIN)
        kind = pa.scalar(str(col.type).encode() + b" ", _BIN)
        field = pc.binary_join_element_wise(kind, _length(payload), _COLON, payload, _EMPTY)
        return pc.fill_null(field, _NULL_FIELD)
    kind = pa.scalar(_kind(col.type).encode() + b" ", _BIN)
    field = pc.binary_join_element_wise(kind, _length(payload), _COLON, payload, _EMPTY)
    return pc.fill_null(field, _NULL_FIELD)


def _length(payload: pa.Array) -> pa.Array:
    return pc.cast(pc.cast(pc.binary_length(payload), pa.string()), _BIN)


def _payload(col: pa.Array) -> pa.Array:
    """`rowhash.encode_column`, extended to lists, structs and maps (row identities only)."""
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        col = col.cast(pa.large_list(t.value_type))
        t = col.type
    if pa.types.is_map(t):
        assert isinstance(col, pa.MapArray)
        return _per_list(col, lambda a, b: _join([_field(col.keys[a:b]), _field(col.items[a:b])]))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        assert isinstance(col, pa.ListArray | pa.LargeListArray)
        return _per_list(col, lambda a, b: _field(col.values[a:b]))
    if pa.types.is_struct(t):
        assert isinstance(col, pa.StructArray)
        parts: list[pa.Array | pa.Scalar] = []
        for i, child in enumerate(col.flatten()):
            parts.append(pa.scalar(_sized(t.field(i).name.encode()), _BIN))
            parts.append(_field(child))
        if t.num_fields == 0:
            return pc.if_else(pc.is_valid(col), _EMPTY, pa.nulls(len(col), _BIN))
        joined = _join(parts)
        return pc.if_else(pc.is_valid(col), joined, pa.nulls(len(col), _BIN))
    return encode_column(col)


def _per_list(col: Any, element_fields: Callable[[int, int], pa.Array]) -> pa.Array:
    """Each list's element fields concatenated; NULL for a NULL list.

    `element_fields(a, b)` encodes the child values `a:b`: only those this (maybe sliced)
    array's lists hold, with the offsets rebased to them.
    """
    offsets = col.offsets
    first, last = offsets[0].as_py(), offsets[-1].as_py()
    rebased = pc.subtract(offsets, pa.scalar(first, offsets.type))
    large = pa.types.is_large_list(col.type)
    lists = (pa.LargeListArray if large else pa.ListArray).from_arrays(
        rebased,
        element_fields(first, last),
        type=pa.large_list(_BIN) if large else pa.list_(_BIN),
        mask=col.is_null(),
    )
    return pc.binary_join(lists, _EMPTY)


def _decoded(col: pa.Array) -> pa.Array:
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _kind(t: pa.DataType) -> str:
    """The family a value belongs to: the part of its type that changes what it means."""
    checks = [
        (pa.types.is_integer, "int"),
        (pa.types.is_floating, "float"),
        (pa.types.is_decimal, "decimal"),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "str"),
        (pa.types.is_string_view, "str"),
        (pa.types.is_boolean, "bool"),
        (pa.types.is_date, "date"),
        (pa.types.is_time, "time"),
        (pa.types.is_duration, "duration"),
        (pa.types.is_map, "map"),
        (pa.types.is_struct, "struct"),
        (pa.types.is_null, "null"),
    ]
    if pa.types.is_timestamp(t):
        return "timestamp" if t.tz is None else "timestamptz"
    for check, kind in checks:
        if check(t):
            return kind
    if pa.types.is_nested(t):  # every list shape
        return "list"
    return "bytes"  # binary, large, view and fixed-size; other types fail in encode_column


# -- format 1 -----------------------------------------------------------------------------------


def legacy_identities(rows: pa.RecordBatch, keys: list[str]) -> list[str]:
    """The format-1 identity of each row, exactly as hygge computed it before format 2."""
    if keys:
        parts = [pc.fill_null(rows.column(k).cast(pa.string()), "\\N") for k in keys]
        if len(parts) == 1:
            return parts[0].to_pylist()
        return pc.binary_join_element_wise(*parts, _LEGACY_SEP).to_pylist()
    return [
        hashlib.sha256(
            json.dumps(row, default=str, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()[:32]
        for row in _legacy_pylist(rows)
    ]


def _legacy_pylist(rows: pa.RecordBatch) -> list[dict[str, Any]]:
    """`rows.to_pylist()`, with sub-microsecond timestamps as 9-digit text (format-1 hashes).

    Values without sub-microsecond digits hash as they always did (a datetime's `str`).
    """
    columns = {}
    for name, col in zip(rows.schema.names, rows.columns, strict=True):
        typ = col.type
        if pa.types.is_timestamp(typ) and typ.unit == "ns":
            values = [_exact(v) for v in col]
            columns[name] = [
                v.isoformat().replace("T", " ") if isinstance(v, NanoTimestamp) else v
                for v in values
            ]
        else:
            columns[name] = col.to_pylist()
    return [dict(zip(columns, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]


def _exact(scalar: pa.Scalar) -> Any:
    if scalar.is_valid:
        exact = NanoTimestamp.from_scalar(scalar)
        if exact.ns % 1000:
            return exact
    return scalar.as_py()

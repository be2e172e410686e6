"""Arrow types as a Delta table holds them: what changes on the way in, and what is refused.

Delta has one timestamp unit (microseconds) and two timestamp types: `timestamp` (an instant,
UTC) and `timestamp_ntz`. Fabric's SQL analytics endpoint silently drops `timestamp_ntz`
columns, so naive timestamps are written as UTC `timestamp` unless the Store keeps NTZ. Every
other change is exact or refused: casts are `safe` (a nanosecond that does not fit in a
microsecond, an unsigned value above the signed range, fails with the column's name).
"""

from __future__ import annotations

import pyarrow as pa

from hygge_core.arrow_types import VIEWS
from hygge_core.errors import StoreError, first_line

#: unsigned integers in the signed type that holds every value (Delta has no unsigned types)
_SIGNED = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.int64(),  # checked value by value by the safe cast
}


def delta_type(t: pa.DataType, keep_ntz: bool) -> pa.DataType | str:
    """The Arrow type a Delta table stores `t` as, or why Delta cannot store it."""
    if pa.types.is_timestamp(t):
        naive = t.tz is None
        return pa.timestamp("us", tz=None if naive and keep_ntz else "UTC")
    if t in _SIGNED:
        return _SIGNED[t]
    if t in VIEWS:
        return VIEWS[t]
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_dictionary(t):
        return delta_type(t.value_type, keep_ntz)
    if isinstance(t, pa.Decimal256Type):
        if t.precision > 38:
            return f"decimal({t.precision}, {t.scale}) is wider than Delta's decimal(38)"
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_time(t):
        return "Delta has no time-of-day type"
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return "Delta has no duration or interval type"
    return t


def delta_schema(schema: pa.Schema, keep_ntz: bool, entity: str) -> pa.Schema:
    """The schema staged for a Delta table, or a StoreError naming every column it refuses."""
    fields, refused = [], []
    for f in schema:
        target = delta_type(f.type, keep_ntz)
        if isinstance(target, str):
            refused.append(f"{f.name!r} ({f.type}): {target}")
        else:
            fields.append(f.with_type(target))
    if refused:
        msg = (
            f"column(s) a Delta table cannot hold: {'; '.join(refused)}; cast them in the "
            "entity's `query` (to text, or a timestamp) or leave them out with `columns`"
        )
        raise StoreError(msg, entity=entity)
    return pa.schema(fields, schema.metadata)


def to_delta(batch: pa.RecordBatch, schema: pa.Schema, entity: str) -> pa.RecordBatch:
    """`batch` in the staged schema `schema` (`delta_schema` of its own), exactly."""
    arrays = []
    for f, col in zip(schema, batch.columns, strict=True):
        if col.type == f.type:
            arrays.append(col)
            continue
        if pa.types.is_timestamp(col.type) and col.type.tz is None and f.type.tz is not None:
            # naive values are taken as UTC: the same numbers, now marked as instants
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
        try:
            arrays.append(col.cast(f.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            msg = (
                f"column {f.name!r} ({col.type}) does not fit Delta's {f.type} exactly: "
                f"{first_line(exc)}; cast it in the entity's `query` (nanoseconds to "
                "microseconds, for one) or leave it out with `columns`"
            )
            raise StoreError(msg, entity=entity) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=schema)

"""Schema rules every Store shares: when new files may join a published table, and how."""

from __future__ import annotations

import pyarrow as pa

from hygge_core.arrow_types import SMALL, comparable
from hygge_core.errors import StoreError, first_line

__all__ = ["SMALL", "appendable", "comparable", "conform"]


def appendable(existing: pa.Schema, schema: pa.Schema, entity: str) -> pa.Schema:
    """The schema new files must have to read as one table with `existing`, or a StoreError
    that lists the changes (added, removed and retyped columns)."""
    before_schema, after_schema = comparable(existing), comparable(schema)
    if before_schema.equals(after_schema):
        return schema
    before = {f.name: str(f.type) for f in before_schema}
    after = {f.name: str(f.type) for f in after_schema}
    changes = [f"+{n} {t}" for n, t in after.items() if n not in before]
    changes += [f"-{n} {t}" for n, t in before.items() if n not in after]
    changes += [
        f"{n}: {before[n]} -> {t}" for n, t in after.items() if n in before and before[n] != t
    ]
    if not changes:
        return before_schema  # same columns, other order or nullability: keep the table's
    msg = (
        f"the source schema no longer matches the published table ({'; '.join(changes)}); "
        "run this entity with --full-drop to rebuild the table with the new schema"
    )
    raise StoreError(msg, entity=entity)


def conform(batch: pa.RecordBatch, schema: pa.Schema, entity: str) -> pa.RecordBatch:
    """`batch` with the run's column order and types, or a StoreError saying why not."""
    try:
        return pa.RecordBatch.from_arrays(
            [batch.column(f.name).cast(f.type) for f in schema], schema=schema
        )
    except (KeyError, pa.ArrowException) as exc:
        msg = f"a batch does not match the schema of the run: {first_line(exc)}"
        raise StoreError(msg, entity=entity) from exc

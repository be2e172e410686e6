"""Arrow's view types: how the file Homes hand text over, and where it turns back.

Polars holds text as views. The file Homes export them as `string_view` / `binary_view`
without copying, and the local Parquet Store's encoder (Polars again) imports them without
copying: a plain load never converts its strings. Most of pyarrow's compute kernels (filter,
take, comparisons) have no view kernels yet, so the steps that compute on batches (the
watermark boundary, the polisher, carrying a table over) and pyarrow's Parquet writer take
them as the large types, through `unview`.
"""

from __future__ import annotations

import pyarrow as pa

#: each view type and the large type that pyarrow computes on
VIEWS = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
#: types that name the same column to every reader (Parquet stores them alike): Polars writes
#: the large flavours where pyarrow writes the small ones, and hands views over
SMALL = {
    pa.large_string(): pa.string(),
    pa.string_view(): pa.string(),
    pa.large_binary(): pa.binary(),
    pa.binary_view(): pa.binary(),
}


def has_views(schema: pa.Schema) -> bool:
    return any(f.type in VIEWS for f in schema)


def unviewed(schema: pa.Schema) -> pa.Schema:
    """`schema` with the large types in place of the view types (nullability and metadata kept)."""
    if not has_views(schema):
        return schema
    return pa.schema([f.with_type(VIEWS.get(f.type, f.type)) for f in schema], schema.metadata)


def unview(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with its view columns copied into the large types; other columns untouched."""
    if not has_views(batch.schema):
        return batch
    arrays = [col.cast(VIEWS[col.type]) if col.type in VIEWS else col for col in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, schema=unviewed(batch.schema))


def comparable(schema: pa.Schema) -> pa.Schema:
    """`schema` as readers see it: no metadata, one flavour of text and binary."""
    return pa.schema(pa.field(f.name, SMALL.get(f.type, f.type), f.nullable) for f in schema)

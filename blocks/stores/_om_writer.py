"""The Open Mirroring writer: one entity's run staged as landing-zone files.

Numbered files for an incremental run (continuing after the highest number present), or a
staged copy outside the landing zone for a replace. `__rowMarker__` is the last column where
updates or deletes can occur (4 upsert, 2 delete, 0 insert); insert-only files carry none, so
Fabric stages them directly. Every non-key column is written nullable, as Fabric's schema
merge needs of a column a later file lacks, and as a delete row (keys only) needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from azure.core.exceptions import AzureError

from blocks.base import WriteMode
from blocks.stores._blob import block_ids, store_error
from blocks.stores._om_contract import MARKER
from blocks.stores._schema import SMALL, appendable
from blocks.stores.blob_parquet import BlobFiles, StagedBlobWriter
from blocks.stores.protocol import Staged
from hygge_core.errors import StoreError
from hygge_core.manifest import run_file_name

if TYPE_CHECKING:
    from blocks.stores.open_mirroring import OpenMirroringStore

INSERT, DELETE, UPSERT = 0, 2, 4


class MirroringWriter(StagedBlobWriter):
    """Stages one entity's run for the landing zone: numbered files, row markers last where
    updates or deletes can occur, none in insert-only files."""

    where = "the landing zone"
    store: OpenMirroringStore

    def __init__(self, store: OpenMirroringStore, entity: str, run_id: str, mode: WriteMode):
        self.store = store
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self.area = store.area()
        self.state = store.state()
        # a replaced table starts empty: plain inserts; incremental loads upsert by default
        upsert = mode == "append" and store.row_marker == "upsert"
        self.marker = UPSERT if upsert else INSERT
        # insert-only files carry no marker: Fabric stages them directly ("a marker-bearing
        # file uses the row-based path even when every marker denotes an insert")
        self.marked = (
            upsert
            or store.upsert_default_row_marker
            or (mode == "append" and store.delete_column is not None)
        )
        if mode == "append":
            # continue after the highest number present (the service keeps the last it read)
            self.first = store.first_number(entity)
            name_of = lambda i: store.data_key(entity, store.file_name(run_id, i, self.first))  # noqa: E731
            self.files = BlobFiles(store, self.area, run_id, name_of, entity)
        else:
            self.first = 1
            folder = store.table_folder(entity)
            staging = lambda i: self.state.key("_staging", folder, run_id, run_file_name(run_id, i))  # noqa: E731
            self.files = BlobFiles(store, self.state, run_id, staging, entity)
        self._schema = None
        self._left_out = 0
        self._deleted = 0

    def left_out(self) -> int:
        return self._left_out

    def deletes_in_files(self) -> int:
        return self._deleted

    def delete(self, keys: pa.RecordBatch) -> None:
        """Deleted keys as `__rowMarker__` 2 rows: the key columns, every other column NULL,
        in files after the run's changes (Fabric applies a table's files in number order)."""
        wanted = list(self.store.key_columns or [])
        if sorted(keys.schema.names) != sorted(wanted):
            msg = (
                f"deletes carry the columns {keys.schema.names}, but the table's key columns "
                f"are {wanted}; set `key_columns` to the watermark's keys (as polished)"
            )
            raise StoreError(msg, entity=self.entity)
        try:
            if self._schema is None:
                existing = self.store.table_schema_now(self.entity)
                if existing is None:
                    return  # nothing was ever published: nothing to delete
                self._schema = self._nullable(_unmarked(existing))
            if MARKER not in self._schema.names:
                self._schema = self._schema.append(pa.field(MARKER, pa.int32(), nullable=False))
            if not self._deleted:
                # deletes never share a file with the run's changes (nor their schema)
                self.files.next_file(self._schema)
            n = keys.num_rows
            arrays = [
                pa.array(np.full(n, DELETE, dtype=np.int32))
                if f.name == MARKER
                else keys.column(f.name).cast(f.type)
                if f.name in wanted
                else pa.nulls(n, f.type)
                for f in self._schema
            ]
            self.files.write(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
            self._deleted += n
        except AzureError as exc:
            raise store_error(exc, f"cannot upload to {self.where}", entity=self.entity) from exc

    def close_files(self) -> Staged:
        names = self.staged_files()
        blocks = {k.rsplit("/", 1)[1]: n for k, n in self.files.blocks.items()}
        # rows per file, in file order: a repair checks a file is the batch that was sent
        extra: dict[str, Any] = {"blocks": blocks, "file_rows": list(self.files.rows.values())}
        if self.mode == "replace":
            # the staged copy becomes a set of ordinary blobs outside the landing zone
            for key in self.files.keys:
                self.state.commit(key, block_ids(self.run_id, key, blocks[key.rsplit("/", 1)[1]]))
            extra["staged"] = list(self.files.keys)
        return Staged(names, self.files.bytes, extra)

    def _prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Canonical column types, and `__rowMarker__` appended as the last column."""
        if MARKER in batch.schema.names:
            msg = f"the source has a column named {MARKER!r}, which Open Mirroring reserves"
            raise StoreError(msg, entity=self.entity)
        arrays, fields = [], []
        for f, col in zip(batch.schema, batch.columns, strict=True):
            canonical = SMALL.get(f.type)  # one flavour: no flip-flops between runs
            if canonical is not None:
                col, f = col.cast(canonical), f.with_type(canonical)
            arrays.append(col)
            fields.append(f)
        marker = pa.array(np.full(batch.num_rows, self.marker, dtype=np.int32))
        if self.store.delete_column and (self.mode == "replace" or self.marked):
            if self.store.delete_column not in batch.schema.names:
                msg = (
                    f"delete_column {self.store.delete_column!r} is not a column of the source "
                    f"(columns: {', '.join(batch.schema.names)})"
                )
                raise StoreError(msg, entity=self.entity)
            flag = pc.fill_null(batch.column(self.store.delete_column).cast(pa.bool_()), False)
            if self.mode == "replace":
                # a rebuilt table starts empty: deleted rows are simply left out
                keep = pc.invert(flag)
                arrays = [pc.filter(a, keep) for a in arrays]
                marker = pc.filter(marker, keep)
                self._left_out += batch.num_rows - len(marker)
            else:
                marker = pc.if_else(flag, pa.scalar(DELETE, pa.int32()), marker)
        if self.marked:
            arrays.append(marker)
            fields.append(pa.field(MARKER, pa.int32(), nullable=False))
        return pa.RecordBatch.from_arrays(arrays, schema=self._nullable(pa.schema(fields)))

    def _nullable(self, schema: pa.Schema) -> pa.Schema:
        """Every column but the keys and the marker nullable: Fabric's schema merge needs a
        column a later file lacks to be nullable, and a delete row has only its keys."""
        fixed = (*(self.store.key_columns or []), MARKER)
        return pa.schema([f if f.name in fixed else f.with_nullable(True) for f in schema])

    def _check_schema(self, schema: pa.Schema) -> pa.Schema:
        """A type change would stop replication: refuse it before anything is written."""
        if self.mode != "append":
            return schema
        existing = self.store.table_schema_now(self.entity)
        if existing is None:
            return schema
        try:
            # the marker is each file's own: an earlier file may have one and this run not
            table = appendable(_unmarked(existing), _unmarked(schema), self.entity)
            if MARKER in schema.names:
                table = table.append(schema.field(MARKER))
            return self._nullable(table)
        except StoreError as exc:
            msg = f"{exc.msg}; Fabric would stop replicating this table on such a change"
            raise StoreError(msg, entity=self.entity) from exc


def _unmarked(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != MARKER])

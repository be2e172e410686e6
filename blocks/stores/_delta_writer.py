"""DeltaWriter: stages one entity's run for a Delta Store's single commit.

The batches are checked once (column names a Delta table refuses, merge keys, the table's
schema), cast to Delta's types (`_delta_types`) and encoded as Parquet files by the Parquet
Store's writer; `close_files` then makes them durable where the Store keeps its records and
names the commit the run will be: its kind, its transaction number, its keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import DeltaError

from blocks.base import CopySource, WriteMode
from blocks.stores import _delta_log as log
from blocks.stores._delta_place import refused_names
from blocks.stores._delta_types import delta_schema, to_delta
from blocks.stores._local_fs import fsync_file, make_dirs, os_error
from blocks.stores._parquet_files import ArrowFile
from blocks.stores._schema import appendable, comparable
from blocks.stores.parquet import ParquetWriter
from blocks.stores.protocol import Staged, StagedWriter
from hygge_core.errors import StoreError, first_line

if TYPE_CHECKING:
    from blocks.stores.delta import DeltaStore


class DeltaWriter(ParquetWriter):
    """Stages one entity's batches, in Delta's types, for one commit."""

    store: DeltaStore

    def __init__(self, store: DeltaStore, entity: str, run_id: str, mode: WriteMode) -> None:
        super().__init__(store, entity, run_id, mode)
        self.kind: log.DeltaKind = (
            "overwrite" if mode == "replace" else "merge" if store.merge_keys else "append"
        )
        self._delta_schema: pa.Schema | None = None
        #: the run adds columns to the table (schema drift's `evolve`)
        self.adds_columns = False
        self._left_out = 0
        #: the key columns of rows the run deletes, staged beside its rows (one file)
        self._deletes: ArrowFile | None = None
        self.delete_files: list[str] = []
        #: the soft-delete column, when this run's deletes keep their rows
        self.soft: str | None = None

    def delete(self, keys: pa.RecordBatch) -> None:
        """Stage deleted keys; the run's merge deletes them in its one commit."""
        if self.kind != "merge":
            msg = "a Delta table deletes rows by key only in a merge: give the entity `keys`"
            raise StoreError(msg, entity=self.entity)
        schema = delta_schema(keys.schema, self.store.timestamp_ntz, self.entity)
        keys = to_delta(keys, schema, self.entity)
        try:
            if self._deletes is None:
                make_dirs(self.staged)
                name = f"{self.run_id}.deletes.parquet"
                self._deletes = ArrowFile(self.staged / name, keys.schema, "ZSTD", None)
                self.delete_files.append(name)
            self._deletes.write(keys)
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def soft_delete(self, keys: pa.RecordBatch, column: str) -> None:
        """Stage soft deletes (the keys and when): the run's merge sets `column` on their rows
        and keeps them."""
        self.soft = column
        self.delete(keys)

    def copy_file(self, source: CopySource) -> bool:
        return False  # a Delta table takes its own types (`_delta_types`): rows are read

    def left_out(self) -> int:
        return self._left_out

    def write(self, batch: pa.RecordBatch) -> None:
        gone = None
        if self.store.delete_column:
            batch, gone = self._split_deletes(batch, self.store.delete_column)
        if self._delta_schema is None:
            self._check_names(batch.schema.names)
            self._delta_schema = delta_schema(batch.schema, self.store.timestamp_ntz, self.entity)
            self._check_keys(self._delta_schema)
        if batch.schema != self._delta_schema:
            if batch.schema.names != self._delta_schema.names:
                batch = self._conform_to_source(batch)
            batch = to_delta(batch, self._delta_schema, self.entity)
        super().write(batch)  # first: the first write clears an earlier attempt's staging
        if gone is not None:
            self.delete(gone)

    def close_files(self) -> Staged:
        if self._deletes is not None:
            deletes, self._deletes = self._deletes, None
            deletes.close()
            for name in self.delete_files:
                fsync_file(self.staged / name)
        staged = super().close_files()
        self.store.keep_staged(self.entity, self.run_id, [*staged.files, *self.delete_files])
        uri, options = self.store.table_uri(self.entity), self.store.storage_options()
        try:
            txn = log.next_txn(uri, options)
        except DeltaError as exc:
            raise self.store.backend_error(exc, "cannot read the Delta table", self.entity) from exc
        staged.extra = {
            "delta": self.kind,
            "txn": txn,
            "keys": list(self.store.merge_keys or []) if self.kind == "merge" else [],
            "order": list(self.store.merge_order or []) if self.kind == "merge" else [],
            "add_columns": self.adds_columns,
            # a remote run's recovery checks a spooled file against these before using it
            "sizes": {
                n: (self.staged / n).stat().st_size for n in [*staged.files, *self.delete_files]
            },
            "deletes": list(self.delete_files),
            "soft": self.soft,
        }
        return staged

    def abandon_files(self) -> None:
        if self._deletes is not None:
            deletes, self._deletes = self._deletes, None
            deletes.abort()
        super().abandon_files()

    def publish_error(self, exc: BaseException) -> StoreError:
        # the protocol's: a failure after the Delta commit is not retried
        return StagedWriter.publish_error(self, exc)

    # -- helpers --------------------------------------------------------------------------------

    def _split_deletes(
        self, batch: pa.RecordBatch, column: str
    ) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
        """Rows the source marks deleted (`delete_column` true) apart: their keys, deleted in
        a merge (None: left out of a replace or an append), and the rows to write."""
        if column not in batch.schema.names:
            msg = (
                f"delete_column {column!r} is not a column of the source (columns: "
                f"{', '.join(batch.schema.names)})"
            )
            raise StoreError(msg, entity=self.entity)
        flag = pc.fill_null(batch.column(column).cast(pa.bool_()), False)
        gone = int(pc.sum(flag).as_py() or 0)
        if not gone:
            return batch, None
        keys = None
        if self.kind == "merge":
            keys = batch.filter(flag).select(list(self.store.merge_keys or []))
        self._left_out += gone  # not in the data files: reconciled as left out by design
        return batch.filter(pc.invert(flag)), keys

    def _conform_to_source(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self._delta_schema is not None
        try:
            names = self._delta_schema.names
            return pa.RecordBatch.from_arrays([batch.column(n) for n in names], names=names)
        except KeyError as exc:
            msg = f"a batch lacks column {first_line(exc)} of the run's first batch"
            raise StoreError(msg, entity=self.entity) from exc

    def _check_names(self, names: list[str]) -> None:
        refused = refused_names(names)
        if refused:
            msg = (
                f"column name(s) {', '.join(map(repr, refused))} hold characters a Delta table "
                "cannot take without column mapping (space , ; { } ( ) = tab, newline), and "
                "Fabric's SQL endpoint refuses them; nothing was written. Rename them with the "
                "entity's polish (`polish: {remove_special: true}` keeps letters, digits and "
                "`_`: 'my col' becomes 'my_col'), or with aliases in the entity's `query`"
            )
            raise StoreError(msg, entity=self.entity)

    def _check_keys(self, schema: pa.Schema) -> None:
        if self.kind != "merge":
            return
        wanted = [*(self.store.merge_keys or []), *(self.store.merge_order or [])]
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            msg = (
                f"the Delta merge needs column(s) {', '.join(map(repr, missing))}, which the "
                "rows written do not have; keep them in `columns` and the polish, or set "
                "`merge_keys` / `merge_order` for this entity"
            )
            raise StoreError(msg, entity=self.entity)

    def _check_schema(self, schema: pa.Schema) -> pa.Schema:
        """An append or merge must match the table's schema (a replace sets a new one)."""
        if self.mode != "append":
            return schema
        try:
            existing = self.store.table_schema(self.entity)
        except DeltaError as exc:
            raise self.store.backend_error(exc, "cannot read the Delta table", self.entity) from exc
        if existing is None:
            return schema
        before = {f.name: f.type for f in comparable(existing)}
        after = {f.name: f.type for f in comparable(schema)}
        if set(after) > set(before) and all(after[n] == t for n, t in before.items()):
            # only new columns: the drift guard let them through (`evolve`), and the commit
            # merges them into the table's schema; earlier rows read them as NULL
            self.adds_columns = True
            return schema
        kept = appendable(existing, schema, self.entity)
        # the table's column order, in the run's own types: Delta reads a file by the table's
        # schema, whatever its flavour of text or nullability, so no batch is cast for them
        return pa.schema([schema.field(name) for name in kept.names])

"""DeltaStore: one Delta Lake table per entity, holding the source's current state.

Layout under `path` (a local or mounted directory):

    <entity>/                              the Delta table (`_delta_log/` and its data files)
    _staging/<entity>/<run_id>/            the run's batches as Parquet, before the commit
    _manifests/<entity>/<run_id>.json      the run record of `hygge_core.manifest`
    _state/<entity>/<name>                 objects an entity keeps beside the data
    _journal/<run_id>.parquet              the run journal of `flows.journal`

The Store shares the Parquet Store's local area (manifests, state, journal, lock, `check`), so
it subclasses it; only the table differs. Its publishing protocol is
`blocks.stores.protocol`'s, mapped onto Delta's own log (`transactional`):

- stage: the writer encodes the run's batches as Parquet under `_staging/`, in Delta's types;
- prepare: the manifest names the files, the commit kind and the transaction number;
- publish: ONE Delta commit, recording the run id (`blocks.stores._delta_log`): a full_drop
  overwrites (readers see the old table or the new), an incremental entity with keys merges
  (one current row per key), one without keys appends. An append or overwrite first moves
  its files into the table's folder and commits them there, never encoding them twice; until
  the commit names them no reader sees them, and a roll back deletes them. A publish repeated
  after a crash finds its commit in the log and skips it, so no run is applied twice.

The table's location is a URI plus storage options (`table_uri`, `storage_options`), which is
all delta-rs needs to write to ADLS or OneLake as well as to a local path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError, DeltaError
from pydantic import Field

from blocks.base import WriteMode, asset_uri
from blocks.stores import _delta_log as log
from blocks.stores._delta_maintain import Upkeep, compact_after_run, maintain
from blocks.stores._delta_types import delta_schema, to_delta
from blocks.stores._local_fs import os_error, remove_staging
from blocks.stores._schema import appendable, comparable
from blocks.stores.parquet import ParquetStore, ParquetWriter
from blocks.stores.protocol import Staged
from hygge_core.errors import StoreError, TransientStoreError, first_line
from hygge_core.manifest import Manifest, fsync_dir

_CODECS = {"none": "UNCOMPRESSED", "uncompressed": "UNCOMPRESSED"}


class DeltaStore(ParquetStore):
    """Writes each entity as a Delta Lake table that holds the source's current state.

    An incremental entity with watermark `keys` is merged by those keys (an updated source
    row replaces its earlier version; the highest watermark wins within a run), one without
    keys is appended, and a full load overwrites the table in one commit. Read a table with
    `polars.read_delta("<path>/<entity>")` or any Delta reader. Naive timestamps are written
    as UTC `timestamp` (Fabric's SQL endpoint drops `timestamp_ntz` columns) unless
    `timestamp_ntz` is set.

    Example:
        ```python
        from blocks import DeltaStore
        store = DeltaStore.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Delta Store"
    _block_type_slug = "delta-store"
    _description = "A local directory of Delta Lake tables as a hygge Store."
    spec_type = "delta"
    transactional: ClassVar[bool] = True
    # schema drift's `evolve` adds columns in the run's own commit (Delta's schema merge)
    evolves_in_place: ClassVar[bool] = True
    type_change_refusal = (
        "a Delta table's column types stay as written (delta-rs merges new columns into a "
        "table's schema, it does not widen existing ones); run this entity with --full-drop "
        "to rebuild the table with the new type"
    )

    path: str = Field(description="Directory that holds one Delta table per entity.")
    # a merge rewrites each file that can hold one of its keys, and delta-rs's merge memory
    # grows with the files it rewrites (bench/RESULTS.md: 1.9 GB for one 10M-row file, 0.6 GB
    # for 1M-row ones): smaller files than the Parquet Store's keep merges bounded
    max_rows_per_file: int = Field(
        default=1_000_000,
        description="Start a new file after this many rows (merges rewrite whole files).",
    )
    merge_keys: list[str] | None = Field(
        default=None,
        description="Columns an incremental load merges by; empty takes the entity's "
        "watermark `keys` (no keys: incremental loads append).",
    )
    merge_order: list[str] | None = Field(
        default=None,
        description="Columns whose highest value (first non-NULL) wins when a run holds "
        "several versions of a key; empty takes the entity's watermark column(s).",
    )
    timestamp_ntz: bool = Field(
        default=False,
        description="Keep naive timestamps as Delta `timestamp_ntz` instead of UTC "
        "`timestamp` (Fabric's SQL endpoint does not show timestamp_ntz columns).",
    )
    spec_name: str | None = Field(
        default=None, description="Named in each table's description, for who browses it."
    )
    optimize_every: int | None = Field(
        default=None,
        ge=1,
        description="Compact the table after every N-th run's commit (opt-in; `hygge "
        "maintain --compact` does it on request, `--vacuum` deletes expired files).",
    )

    def merges_by(self, keys: list[str]) -> bool:
        return bool(keys) and (self.merge_keys or keys) == keys

    def for_entity(self, keys: list[str], watermark_columns: list[str]) -> DeltaStore:
        update: dict[str, list[str] | None] = {}
        if self.merge_keys is None and keys:
            update["merge_keys"] = list(keys)
        if self.merge_order is None and watermark_columns:
            update["merge_order"] = list(watermark_columns)
        return self.model_copy(update=update) if update else self

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> DeltaWriter:
        return DeltaWriter(self, entity, run_id, mode)

    # -- where the table is ---------------------------------------------------------------------

    def table_uri(self, entity: str) -> str:
        return str(self.table_dir(entity).resolve())

    def storage_options(self) -> dict[str, str] | None:
        """delta-rs's options for the table's storage (none for a local path)."""
        return None

    def _table(self, entity: str) -> DeltaTable | None:
        uri, options = self.table_uri(entity), self.storage_options()
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return None
        return DeltaTable(uri, storage_options=options)

    def asset_key(self, entity: str) -> str:
        return asset_uri(f"file://{self.table_uri(entity)}")

    def describe(self, entity: str) -> str:
        return f"delta {self.table_dir(entity)}/"

    def has_data(self, entity: str) -> bool:
        with self.translated("cannot read the Delta table", entity):
            return self._table(entity) is not None

    def published_rows(self, entity: str) -> int | None:
        with self.translated("cannot read the Delta table", entity):
            table = self._table(entity)
            if table is None:
                return None
            # the log's per-file row counts: no data file is read
            files = pa.table(table.get_add_actions(flatten=True))
            if not files.num_rows:
                return 0
            counts = files.column("num_records")
            if counts.null_count:
                return None  # a file written without statistics
            return int(pa.compute.sum(counts).as_py())

    def read_table(self, entity: str) -> Iterator[pa.RecordBatch]:
        with self.translated("cannot read the Delta table", entity):
            table = self._table(entity)
            if table is None:
                return
            dataset = table.to_pyarrow_dataset()
            schema = comparable(dataset.schema)
            for batch in dataset.to_batches():
                yield batch if batch.schema.equals(schema) else batch.cast(schema)

    def table_schema(self, entity: str) -> pa.Schema | None:
        table = self._table(entity)
        return None if table is None else pa.schema(table.schema().to_arrow())

    def description(self, entity: str) -> str:
        spec = f" of spec {self.spec_name!r}" if self.spec_name else ""
        return f"hygge entity {entity!r}{spec}: written by hygge, do not edit by hand"

    def maintain(self, entity: str, wait_seconds: float = 0.0, **how: Any) -> Upkeep | None:
        """Compact and/or vacuum the entity's table (`_delta_maintain.maintain`, whose options
        `how` are), holding the Store's lock so that no run commits meanwhile; None when the
        table does not exist yet."""
        with (
            self.exclusive(f"hygge maintain (pid {os.getpid()})", wait_seconds),
            self.translated("cannot maintain the Delta table", entity),
        ):
            if self._table(entity) is None:
                return None
            uri, options, writer = (
                self.table_uri(entity),
                self.storage_options(),
                self._writer_properties(),
            )
            return maintain(
                uri, options, entity, writer=writer, target_rows=self.max_rows_per_file, **how
            )

    # -- the protocol's primitives (Delta's log in place of renames) ----------------------------

    backend_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, DeltaError)

    def backend_error(self, exc: BaseException, action: str, entity: str | None) -> StoreError:
        if isinstance(exc, OSError):
            return os_error(exc, entity, self._root)
        where = self.table_dir(entity) if entity else self._root
        if isinstance(exc, CommitFailedError):
            # another writer committed first; the lock keeps hygge runs apart, so it is a
            # foreign one: a retry re-reads the log and finds whether this run's commit exists
            msg = (
                f"{action}: another writer committed to the Delta table {str(where)!r} at the "
                f"same time ({first_line(exc)}); the ledger is unchanged and a retry is safe"
            )
            return TransientStoreError(msg, entity=entity)
        msg = (
            f"{action}: the Delta table {str(where)!r} refused the commit ({first_line(exc)}); "
            "the ledger is unchanged. If the table's schema changed, run the entity with "
            "--full-drop, or set `schema: {on_drift: evolve}`"
        )
        return StoreError(msg, entity=entity)

    def run_committed(self, manifest: Manifest) -> bool:
        """Whether the table's log holds the commit of this manifest's run."""
        txn = int(manifest.extra["txn"])
        uri, options = self.table_uri(manifest.entity), self.storage_options()
        return log.committed(uri, options, manifest.run_id, txn)

    def staged_complete(self, manifest: Manifest) -> bool:
        if self.run_committed(manifest):
            return True
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        final = self.table_dir(manifest.entity)  # a file placed there before the commit
        return bool(manifest.files) and all(
            (staged / n).exists() or (final / n).exists() for n in manifest.files
        )

    def unpublished(self, manifest: Manifest) -> list[str]:
        return [] if self.run_committed(manifest) else list(manifest.files)

    def before_publish(self, manifest: Manifest) -> None:
        pass  # delta-rs creates the table folder with its first commit

    def commit_run(self, manifest: Manifest) -> None:
        entity, extra = manifest.entity, manifest.extra
        staged = self.staging_dir(entity, manifest.run_id)
        files = [staged / n for n in manifest.files]
        if log.in_place(extra["delta"], bool(extra.get("add_columns"))) and files:
            files = self._place(manifest)
        log.write_run(
            self.table_uri(entity),
            self.storage_options(),
            extra["delta"],
            files,
            add_columns=bool(extra.get("add_columns")),
            keys=list(extra.get("keys") or []),
            order=list(extra.get("order") or []),
            props=log.commit_properties(manifest.run_id, int(extra["txn"]), entity),
            writer=self._writer_properties(),
            name=entity,
            description=self.description(entity),
        )

    def publish_file(self, manifest: Manifest, name: str) -> None:
        msg = "a Delta table publishes a run in one commit (commit_run), never file by file"
        raise NotImplementedError(msg)

    def replace_table(self, manifest: Manifest) -> bool:
        msg = "a Delta table replaces itself in one overwrite commit (commit_run)"
        raise NotImplementedError(msg)

    def after_publish(self, manifest: Manifest) -> None:
        remove_staging(self.staging_dir(manifest.entity, manifest.run_id))
        if self.optimize_every:  # opt-in: the run holds the lock, a failure is only logged
            txn, entity = int(manifest.extra["txn"]), manifest.entity
            uri, options, writer = (
                self.table_uri(entity),
                self.storage_options(),
                self._writer_properties(),
            )
            compact_after_run(
                uri, options, entity, txn, self.optimize_every, writer, self.max_rows_per_file
            )

    def unpublish(self, manifest: Manifest) -> None:
        # called for a run whose commit does not exist: the files it placed in the table's
        # folder are named by no version of the log, so they go with its staging
        final = self.table_dir(manifest.entity)
        for name in manifest.files:
            (final / name).unlink(missing_ok=True)
        remove_staging(self.staging_dir(manifest.entity, manifest.run_id))

    def _place(self, manifest: Manifest) -> list[Path]:
        """Move the run's staged files into the table's folder, ready for its commit. Their
        names carry the run id, so no reader sees them until the commit names them, and a
        publish repeated after a crash finds them there."""
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        final = self.table_dir(manifest.entity)
        final.mkdir(parents=True, exist_ok=True)
        for name in manifest.files:
            if (staged / name).exists():
                os.replace(staged / name, final / name)
        fsync_dir(final)
        return [final / n for n in manifest.files]

    def abort_prepared(self, manifest: Manifest) -> None:
        if self.run_committed(manifest):
            return  # the commit happened: recovery marks it published, nothing to undo
        self.roll_back(manifest)

    def _writer_properties(self) -> WriterProperties:
        codec = _CODECS.get(self.compression.lower(), self.compression.upper())
        level = self.compression_level if codec in ("ZSTD", "GZIP", "BROTLI") else None
        return WriterProperties(compression=codec, compression_level=level)  # type: ignore[arg-type]


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

    def write(self, batch: pa.RecordBatch) -> None:
        if self._delta_schema is None:
            self._delta_schema = delta_schema(batch.schema, self.store.timestamp_ntz, self.entity)
            self._check_keys(self._delta_schema)
        if batch.schema != self._delta_schema:
            if batch.schema.names != self._delta_schema.names:
                batch = self._conform_to_source(batch)
            batch = to_delta(batch, self._delta_schema, self.entity)
        super().write(batch)

    def close_files(self) -> Staged:
        staged = super().close_files()
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
        }
        return staged

    def publish_error(self, exc: BaseException) -> StoreError:
        error = self.store.backend_error(exc, "cannot publish to the Store", self.entity)
        try:
            manifest = self.store.load_manifest(self.entity, self.run_id)
            done = manifest is not None and self.store.run_committed(manifest)
        except self.store.backend_errors:
            return error
        if not done:
            return error
        # a retry would re-read the rows this commit holds and apply them again: the entity
        # fails instead, and the next run's recovery records the commit
        msg = (
            f"the run's Delta commit is in the table, but recording it failed "
            f"({first_line(exc)}); the next run records it and moves the watermark"
        )
        return StoreError(msg, entity=self.entity)

    # -- helpers --------------------------------------------------------------------------------

    def _conform_to_source(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self._delta_schema is not None
        try:
            names = self._delta_schema.names
            return pa.RecordBatch.from_arrays([batch.column(n) for n in names], names=names)
        except KeyError as exc:
            msg = f"a batch lacks column {first_line(exc)} of the run's first batch"
            raise StoreError(msg, entity=self.entity) from exc

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

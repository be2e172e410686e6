"""DeltaStore: one Delta Lake table per entity, holding the source's current state.

One Store, three places (exactly one is given):

- `path`: a local or mounted directory, laid out as

      <entity>/                              the Delta table (`_delta_log/` and its data files)
      _staging/<entity>/<run_id>/            the run's batches as Parquet, before the commit
      _manifests/<entity>/<run_id>.json      the run record of `hygge_core.manifest`
      _state/<entity>/<name>                 objects an entity keeps beside the data
      _journal/<run_id>.parquet              the run journal of `flows.journal`

- `container` (+ `path`, a folder in it): an ADLS Gen2 or Blob container, the same layout;
- `workspace` + `item`: a Fabric Lakehouse; each table is `Tables/[<lakehouse_schema>/]<entity>`
  and appears in the Lakehouse and its SQL endpoint, the records sit in `Files/_hygge/`.

Where the records and staging live is `blocks.stores._delta_area`'s; the URI and delta-rs's
storage options are `blocks.stores._delta_place`'s. Its publishing protocol is
`blocks.stores.protocol`'s, mapped onto Delta's own log (`transactional`):

- stage: the writer encodes the run's batches as Parquet, in Delta's types;
- prepare: the manifest names the files, the commit kind and the transaction number;
- publish: ONE Delta commit, recording the run id (`blocks.stores._delta_log`): a full_drop
  overwrites (readers see the old table or the new), an incremental entity with keys merges
  (one current row per key), one without keys appends. On local disk an append or overwrite
  first moves its files into the table's folder and commits them there, never encoding them
  twice; until the commit names them no reader sees them, and a roll back deletes them. A
  publish repeated after a crash finds its commit in the log and skips it, so no run is
  applied twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from azure.core.exceptions import AzureError
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError, DeltaError
from prefect_azure import AzureBlobStorageCredentials
from pydantic import Field, model_validator

from blocks.base import WriteMode, asset_uri
from blocks.stores import _delta_log as log
from blocks.stores import _delta_place as places
from blocks.stores._blob import join, store_error
from blocks.stores._delta_area import DeltaArea
from blocks.stores._delta_maintain import Upkeep, compact_after_run, maintain
from blocks.stores._delta_writer import DeltaWriter
from blocks.stores._local_fs import os_error
from blocks.stores._merge_fields import MERGE_KEYS, MERGE_ORDER, merges_by
from blocks.stores._schema import comparable
from blocks.stores.adls import AdlsStore
from blocks.stores.blob_parquet import BlobParquetStore
from blocks.stores.onelake import OneLakeStore
from blocks.stores.parquet import ParquetStore
from hygge_core.errors import StoreError, TransientStoreError, first_line
from hygge_core.manifest import Manifest, fsync_dir

_CODECS = {"none": "UNCOMPRESSED", "uncompressed": "UNCOMPRESSED"}


class DeltaStore(DeltaArea, ParquetStore):
    """Writes each entity as a Delta Lake table that holds the source's current state.

    An incremental entity with watermark `keys` is merged by those keys (an updated source
    row replaces its earlier version; the highest watermark wins within a run), one without
    keys is appended, and a full load overwrites the table in one commit. The tables live in a
    local `path`, an ADLS Gen2 / Blob `container` (with `credentials`), or a Fabric Lakehouse
    (`workspace` and `item`: `Tables/<entity>`). Read a table with
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
    _description = (
        "Delta Lake tables (current state) in a local directory, an ADLS Gen2 / Blob container "
        "or a Fabric Lakehouse's Tables/, as a hygge Store."
    )
    spec_type = "delta"
    transactional: ClassVar[bool] = True
    # schema drift's `evolve` adds columns in the run's own commit (Delta's schema merge)
    evolves_in_place: ClassVar[bool] = True
    type_change_refusal = (
        "a Delta table's column types stay as written (delta-rs merges new columns into a "
        "table's schema, it does not widen existing ones); run this entity with --full-drop "
        "to rebuild the table with the new type"
    )

    path: str = Field(
        default="",
        description="Local directory that holds one Delta table per entity; with `container`, "
        "the folder in the container.",
    )
    # a merge rewrites each file that can hold one of its keys, and delta-rs's merge memory
    # grows with the files it rewrites (bench/RESULTS.md: 1.9 GB for one 10M-row file, 0.6 GB
    # for 1M-row ones): smaller files than the Parquet Store's keep merges bounded
    max_rows_per_file: int = Field(
        default=1_000_000,
        description="Start a new file after this many rows (merges rewrite whole files).",
    )
    merge_keys: list[str] | None = MERGE_KEYS
    merge_order: list[str] | None = MERGE_ORDER
    delete_column: str | None = Field(
        default=None,
        description="A boolean source column: rows where it is true are deleted by key in the "
        "run's merge (and left out of a full load), as Open Mirroring's `delete_column`.",
    )
    timestamp_ntz: bool = Field(
        default=False,
        description="Keep naive timestamps as Delta `timestamp_ntz` instead of UTC "
        "`timestamp` (Fabric's SQL endpoint does not show timestamp_ntz columns).",
    )
    spec_name: str | None = Field(
        default=None, description="Named in each table's description, for who browses it."
    )
    container: str | None = Field(
        default=None, description="ADLS Gen2 or Blob container (file system) of the tables."
    )
    workspace: str | None = Field(
        default=None,
        description="Fabric workspace name or id: the tables go to a Lakehouse's `Tables/`.",
    )
    item: str | None = Field(
        default=None, description="The Lakehouse in `workspace`, e.g. 'Sales.Lakehouse' or its id."
    )
    lakehouse_schema: str | None = Field(
        default=None,
        description="Schema of a schema-enabled Lakehouse (`Tables/<schema>/<entity>`); empty "
        "for `Tables/<entity>`.",
    )
    credentials: AzureBlobStorageCredentials | None = Field(
        default=None,
        description="prefect-azure credentials for `container` or `workspace`: a connection "
        "string, or an account URL with a service principal or DefaultAzureCredential; empty "
        "for a Lakehouse: DefaultAzureCredential (Entra ID).",
    )
    optimize_every: int | None = Field(
        default=None,
        ge=1,
        description="Compact the table after every N-th run's commit (opt-in; `hygge "
        "maintain --compact` does it on request, `--vacuum` deletes expired files).",
    )
    lease_seconds: int = Field(
        default=60,
        ge=15,
        le=60,
        description="Lease on a remote Store's lock blob; a crashed run frees the Store this "
        "long after its last renewal.",
    )

    @model_validator(mode="after")
    def _one_place(self) -> DeltaStore:
        self.place  # noqa: B018 - raises ValueError for settings that name no single place
        return self

    @property
    def place(self) -> places.Place:
        return places.place_of(
            self.path,
            self.container,
            self.workspace,
            self.item,
            self.lakehouse_schema,
            self.credentials is not None,
        )

    def merges_by(self, keys: list[str]) -> bool:
        return merges_by(self.merge_keys, keys)

    def deletes_refusal(self, keys: list[str], soft: bool = False) -> str | None:
        if self.merges_by(keys):
            return None  # the run's merge deletes them in its one commit
        return (
            "a Delta table deletes rows by the keys it merges by: leave `merge_keys` empty (it "
            "takes the watermark's keys) or equal to them"
        )

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

    def records(self) -> BlobParquetStore | None:
        if self.place == "adls":
            assert self.container is not None
            return AdlsStore(
                container=self.container,
                path=self.path,
                credentials=self.credentials,
                lease_seconds=self.lease_seconds,
            )
        if self.place == "onelake":
            assert self.workspace is not None and self.item is not None
            folder = join("_hygge", "Tables", self.lakehouse_schema or "")
            return OneLakeStore(
                workspace=self.workspace,
                item=self.item,
                path=folder,
                credentials=self.credentials,
                lease_seconds=self.lease_seconds,
            )
        return None

    def _table_key(self, entity: str) -> str:
        """The table's folder in its container (remote places)."""
        if self.place == "onelake":
            assert self.item is not None
            return join(self.item, "Tables", self.lakehouse_schema or "", entity)
        return join(self.path, entity)

    def _container_name(self) -> str:
        name = self.workspace if self.place == "onelake" else self.container
        assert name is not None
        return name

    def table_uri(self, entity: str) -> str:
        if self.place == "local":
            return str(self.table_dir(entity).resolve())
        fabric = self.place == "onelake"
        key = self._table_key(entity)
        return places.remote_uri(self.credentials, self._container_name(), key, fabric=fabric)

    def storage_options(self) -> dict[str, str] | None:
        """delta-rs's options for the table's storage (none for a local path)."""
        if self.place == "local":
            return None
        return places.remote_options(self.credentials, fabric=self.place == "onelake")

    def _where(self, entity: str | None) -> str:
        """The table (or the Store) as a reader names it: the URI, which has no secret."""
        if self.place == "local":
            return str(self.table_dir(entity) if entity else self._root)
        return self.table_uri(entity) if entity else self.table_uri("").rstrip("/")

    def _table(self, entity: str) -> DeltaTable | None:
        uri, options = self.table_uri(entity), self.storage_options()
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return None
        return DeltaTable(uri, storage_options=options)

    def asset_key(self, entity: str) -> str:
        uri = self.table_uri(entity)
        return asset_uri(f"file://{uri}" if self.place == "local" else uri)

    def describe(self, entity: str) -> str:
        return f"delta {self._where(entity)}/"

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

    backend_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, DeltaError, AzureError)

    def backend_error(self, exc: BaseException, action: str, entity: str | None) -> StoreError:
        if isinstance(exc, AzureError):
            return store_error(exc, action, entity=entity)
        where = self._where(entity)
        if isinstance(exc, OSError):
            if self.place == "local":
                return os_error(exc, entity, self._root)
            if exc.errno is not None:  # the local spool's disk, not the remote storage
                return os_error(exc, entity, self.staging_dir(entity or "", ""))
            # delta-rs's object store error: an OSError without an errno
            return places.storage_error(exc, action, where, entity)
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
        if self.records() is None:
            staged = self.staging_dir(manifest.entity, manifest.run_id)
            final = self.table_dir(manifest.entity)  # a file placed there before the commit
            names = [*manifest.files, *manifest.extra.get("deletes", [])]
            return bool(names) and all((staged / n).exists() or (final / n).exists() for n in names)
        return self.staged_present(manifest)

    def unpublished(self, manifest: Manifest) -> list[str]:
        return [] if self.run_committed(manifest) else list(manifest.files)

    def before_publish(self, manifest: Manifest) -> None:
        pass  # delta-rs creates the table folder with its first commit

    def commit_run(self, manifest: Manifest) -> None:
        entity, extra = manifest.entity, manifest.extra
        local = self.records() is None
        files = self.staged_paths(manifest)
        self.ensure_lease()
        if local and files and log.in_place(extra["delta"], bool(extra.get("add_columns"))):
            files = self._place(manifest)
        log.write_run(
            self.table_uri(entity),
            self.storage_options(),
            extra["delta"],
            files,
            deletes=self.staged_paths(manifest, manifest.extra.get("deletes", [])),
            soft=extra.get("soft"),
            local=local,
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
        self.drop_staging(manifest.entity, manifest.run_id)
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
        # called for a run whose commit does not exist: the files it placed in a local
        # table's folder are named by no version of the log, so they go with its staging
        if self.records() is None:
            final = self.table_dir(manifest.entity)
            for name in manifest.files:
                (final / name).unlink(missing_ok=True)
        self.drop_staging(manifest.entity, manifest.run_id)

    def _place(self, manifest: Manifest) -> list[Path]:
        """Move the run's staged files into the local table's folder, ready for its commit.
        Their names carry the run id, so no reader sees them until the commit names them, and
        a publish repeated after a crash finds them there."""
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

"""Parquet tables on Azure Blob storage: the engine behind AdlsStore and OneLakeStore.

Layout under the Store's root folder (same as the local ParquetStore):

    <entity>/part-<run_id>-00000.parquet   published data (readers list <entity>/*.parquet)
    _manifests/<entity>/<run_id>.json      the run record of `hygge_core.manifest`
    _journal/<run_id>.parquet              the run journal of `flows.journal`
    _hygge.lock                            leased by the run that writes the Store

Object storage has no rename, so staging uses the Blob API's own two-step write: a file's
bytes are uploaded as blocks under its final name while it is written (invisible to every
reader), and publishing commits each file's block list (the file appears whole, in one step).
A replace commits the new files and then deletes the old ones, which the manifest lists; a
reader in between sees both. Recovery recomputes block ids from the manifest, so a run killed
mid-publish is finished by the next one (staged blocks live for a week).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from azure.core.exceptions import AzureError, ResourceNotFoundError
from prefect_azure import AzureBlobStorageCredentials
from pydantic import Field

from blocks.base import WriteMode, asset_uri
from blocks.stores._blob import (
    BlobArea,
    BlockSink,
    block_ids,
    join,
    lease_lock,
    service_client,
    store_error,
    table_url,
)
from blocks.stores._schema import appendable, conform
from blocks.stores.protocol import PublishingStore, Staged, StagedWriter
from hygge_core import faults
from hygge_core.arrow_types import unview
from hygge_core.errors import StoreError
from hygge_core.manifest import Manifest, run_file_name

_MB = 1024 * 1024
#: a row group also closes at this much Arrow data, so wide rows keep memory bounded
_ROW_GROUP_BYTES = 128 * _MB
_clients: dict[str, Any] = {}
_PROBE = b"written by hygge check, removed at once"


class BlobStoreBase(PublishingStore):
    """Settings and plumbing every Blob-API Store shares."""

    backend_errors: ClassVar[tuple[type[BaseException], ...]] = (AzureError,)

    credentials: AzureBlobStorageCredentials | None = Field(
        default=None,
        description="prefect-azure credentials: a connection string, or an account URL with a "
        "service principal or DefaultAzureCredential (managed identity).",
    )
    compression: str = Field(
        default="zstd", description="Parquet compression: zstd, snappy, gzip, lz4 or none."
    )
    compression_level: int | None = Field(
        default=None, description="Codec level (zstd 1-22); empty for the codec's default."
    )
    max_rows_per_file: int = Field(
        default=10_000_000, description="Start a new file after this many rows."
    )
    row_group_rows: int = Field(
        default=1_000_000,
        ge=1,
        description="Rows per Parquet row group (batches are gathered up to this, or 128 MB): "
        "large groups compress better and encode faster than one per source batch.",
    )
    block_size_mb: int = Field(
        default=8, ge=1, le=4000, description="Upload block size; memory per upload stream."
    )
    upload_parallelism: int = Field(
        default=4, ge=1, le=64, description="Blocks uploaded at once per entity."
    )
    lease_seconds: int = Field(
        default=60,
        ge=15,
        le=60,
        description="Lease on the Store's lock blob; a crashed run frees the Store this long "
        "after its last renewal.",
    )

    # -- what subclasses say ----------------------------------------------------------------

    def _default_url(self) -> str | None:
        return None

    def _container_name(self) -> str:
        raise NotImplementedError

    def _root(self) -> str:
        raise NotImplementedError

    # -- plumbing ----------------------------------------------------------------------------

    def area(self, root: str | None = None) -> BlobArea:
        """The container and folder this Store writes (clients are shared per credentials)."""
        key = hashlib.sha256(
            repr(
                (
                    self.credentials.model_dump_json() if self.credentials else None,
                    _secret(self.credentials),
                    self._default_url(),
                )
            ).encode()
        ).hexdigest()
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = service_client(self.credentials, self._default_url())
        container = client.get_container_client(self._container_name())
        return BlobArea(container, self._root() if root is None else root)

    def state_area(self) -> BlobArea:
        """Where the Store's own records live (journal; lock and manifests in subclasses)."""
        return self.area()

    def check(self) -> None:
        area = self.state_area()
        # beside the manifest and journal folders: no reader lists this level
        key = area.key(f".hygge-check-{uuid.uuid4().hex}")
        action = f"cannot write and remove a probe in {area.url()}"
        try:
            area.put(key, _PROBE, overwrite=False)
            try:
                listed = [b.name for b in area.container.list_blobs(name_starts_with=key)]
                if area.get_bytes(key) != _PROBE or listed != [key]:
                    msg = f"{action}: the probe did not read back as written; try again"
                    raise StoreError(msg)
            finally:
                area.delete(key)
        except AzureError as exc:
            raise store_error(exc, action) from exc

    def table_folder(self, entity: str) -> str:
        """The entity's folder relative to the Store's root."""
        return entity

    def asset_key(self, entity: str) -> str:
        area = self.area()
        return asset_uri(table_url(area.container.url, join(area.root, self.table_folder(entity))))

    def lock_id(self) -> str:
        return f"blob:{self.area().url()}"

    def backend_error(self, exc: BaseException, action: str, entity: str | None) -> StoreError:
        return store_error(exc, action, entity=entity)

    def state_key(self, entity: str, *name: str) -> str:
        return self.state_area().key("_state", self.table_folder(entity), *name)

    def put_state(self, entity: str, name: str, data: bytes) -> None:
        self.state_area().put(self.state_key(entity, name), data)

    def get_state(self, entity: str, name: str) -> bytes | None:
        return self.state_area().get_bytes(self.state_key(entity, name))

    def put_state_file(self, entity: str, name: str, path: Path) -> None:
        self.state_area().put_file(self.state_key(entity, name), path, self.upload_parallelism)

    def get_state_file(self, entity: str, name: str, dest: Path) -> bool:
        key = self.state_key(entity, name)
        return self.state_area().get_file(key, dest, self.upload_parallelism)

    def state_names(self, entity: str) -> list[str]:
        names = self.state_area().names("_state", self.table_folder(entity))
        return [n for n in names if "/" not in n]

    def delete_state(self, entity: str, name: str) -> None:
        self.state_area().delete(self.state_key(entity, name))

    def write_journal(self, run_id: str, records: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(records, buf)
        area = self.state_area()
        area.put(area.key("_journal", f"{run_id}.parquet"), buf.getvalue())

    def read_journal(self) -> pa.Table | None:
        area = self.state_area()
        tables = [
            pq.read_table(pa.BufferReader(data))
            for name in area.names("_journal")
            if (data := area.get_bytes(area.key("_journal", name)))
        ]
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    def exclusive(
        self, owner: str, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[None]:
        return lease_lock(self.area(), owner, wait_seconds, self.lease_seconds, on_wait)


class BlobParquetStore(BlobStoreBase):
    """Parquet tables under a folder of a Blob container, published atomically file by file."""

    def deletes_refusal(self, keys: list[str], soft: bool = False) -> str | None:
        return (
            f"the {self.spec_type} Store keeps a log of loads and does not write tombstones "
            "yet (the local Parquet Store does); use a Delta Store (`type: delta`) for a "
            "table that drops deleted rows"
        )

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> BlobParquetWriter:
        return BlobParquetWriter(self, entity, run_id, mode)

    def describe(self, entity: str) -> str:
        return f"{self.spec_type} {self.area().url()}/{entity}/"

    def has_data(self, entity: str) -> bool:
        try:
            return any(n.endswith(".parquet") for n in self.area().names(entity))
        except AzureError as exc:
            raise store_error(exc, "cannot list the Store", entity=entity) from exc

    # -- the protocol's primitives -------------------------------------------------------------

    def manifest_key(self, entity: str, run_id: str) -> str:
        return self.area().key("_manifests", entity, f"{run_id}.json")

    def manifest_ids(self, entity: str) -> list[str]:
        names = self.area().names("_manifests", entity)
        return [n.removesuffix(".json") for n in names if "/" not in n and n.endswith(".json")]

    def load_manifest(self, entity: str, run_id: str) -> Manifest | None:
        raw = self.area().get_bytes(self.manifest_key(entity, run_id))
        return None if raw is None else Manifest.from_json(raw.decode())

    def save_manifest(self, manifest: Manifest) -> None:
        self.area().put(
            self.manifest_key(manifest.entity, manifest.run_id), manifest.to_json().encode()
        )

    def delete_manifest(self, entity: str, run_id: str) -> None:
        self.area().delete(self.manifest_key(entity, run_id))

    def staged_complete(self, manifest: Manifest) -> bool:
        area = self.area()
        blocks: dict[str, int] = manifest.extra.get("blocks", {})
        for name in manifest.files:
            key = area.key(manifest.entity, name)
            wanted = set(block_ids(manifest.run_id, name, blocks.get(name, 0)))
            if not area.exists(key) and not wanted <= area.staged_ids(key):
                return False
        return True

    def publish_file(self, manifest: Manifest, name: str) -> None:
        # committing the same list again is harmless: the blocks are then the committed ones
        area = self.area()
        count = manifest.extra.get("blocks", {}).get(name, 0)
        area.commit(area.key(manifest.entity, name), block_ids(manifest.run_id, name, count))

    def replace_table(self, manifest: Manifest) -> bool:
        """Commit the new files, then delete the old ones: a reader in between sees both."""
        self.publish_files(manifest)
        area = self.area()
        for i, old in enumerate(manifest.extra.get("replaces", [])):
            if i == 0:
                faults.point("publish.between_swap_renames")
            area.delete(area.key(manifest.entity, old))
        return True

    def unpublish(self, manifest: Manifest) -> None:
        # staged blocks are invisible and expire on their own
        area = self.area()
        for name in manifest.files:
            area.delete(area.key(manifest.entity, name))

    def abort_prepared(self, manifest: Manifest) -> None:
        area = self.area()
        with contextlib.suppress(AzureError):
            if manifest.mode == "replace" and all(
                area.exists(area.key(manifest.entity, n)) for n in manifest.files
            ):
                # the new table is in and old files may be gone: finish (drop the old files)
                # rather than leave readers a doubled table; else recovery finishes it
                self.publish(manifest)
                return
            self.roll_back(manifest)

    # -- reading back ------------------------------------------------------------------------

    def read_table(self, entity: str) -> Iterator[pa.RecordBatch]:
        area = self.area()
        for name in area.names(entity):
            if name.endswith(".parquet") and "/" not in name:
                yield from _iter_blob(area, area.key(entity, name))

    def published_schema(self, entity: str) -> pa.Schema | None:
        """The schema of the newest published file, read from its footer alone."""
        area = self.area()
        names = [n for n in area.names(entity) if n.endswith(".parquet") and "/" not in n]
        return footer_schema(area, area.key(entity, names[-1])) if names else None


class BlobFiles:
    """Writes a stream of batches as Parquet files made of staged blocks, rolling by rows.

    `name_of(i)` gives the blob name of the i-th file. Nothing is visible until the caller
    commits the block lists (`blocks` says how many each file has).
    """

    def __init__(
        self,
        store: BlobStoreBase,
        area: BlobArea,
        run_id: str,
        name_of: Callable[[int], str],
        entity: str,
    ) -> None:
        self.store = store
        self.area = area
        self.run_id = run_id
        self.name_of = name_of
        self.entity = entity
        self.keys: list[str] = []
        self.blocks: dict[str, int] = {}
        #: rows per file, from each finished file's own footer (the writer's metadata)
        self.rows: dict[str, int] = {}
        self.bytes = 0
        self.schema: pa.Schema | None = None
        self._pool = ThreadPoolExecutor(store.upload_parallelism, thread_name_prefix="hygge-up")
        self._sink: BlockSink | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self.schema = batch.schema
        if self._writer is None:
            self._roll()
        if batch.num_rows:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            self._pending_bytes += batch.nbytes
            if (
                self._pending_rows >= self.store.row_group_rows
                or self._pending_bytes >= _ROW_GROUP_BYTES
                or self._rows_in_file + self._pending_rows >= self.store.max_rows_per_file
            ):
                self._flush()

    def _flush(self) -> None:
        """Write the gathered batches as row groups, starting a new file at the row limit."""
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
        limit = self.store.max_rows_per_file
        while table.num_rows:
            if self._rows_in_file >= limit:
                self._roll()
            assert self._writer is not None
            part = table.slice(0, limit - self._rows_in_file)
            self._writer.write_table(part, row_group_size=self.store.row_group_rows)
            self._rows_in_file += part.num_rows
            table = table.slice(part.num_rows)

    def next_file(self, schema: pa.Schema | None = None) -> None:
        """Write what is gathered; the next rows go to a new file, of `schema` if given."""
        self._flush()
        if schema is not None:
            self.schema = schema
        if self._writer is not None:
            self._roll()

    def close(self) -> None:
        """Finish the current file and wait for all its blocks to be staged."""
        self._flush()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            self.rows[self.keys[-1]] = writer.writer.metadata.num_rows
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close()
            self.blocks[sink.name] = sink.blocks
            self.bytes += sink.size
        self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        if self._sink is not None:
            self._sink.abandon()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.rows[self.keys[-1]] = self._writer.writer.metadata.num_rows
        if self._sink is not None:
            self._sink.close()
            self.blocks[self._sink.name] = self._sink.blocks
            self.bytes += self._sink.size
        key = self.name_of(len(self.keys))
        self.keys.append(key)
        self._sink = BlockSink(
            self.area,
            key,
            self.run_id,
            self._pool,
            block_size=self.store.block_size_mb * _MB,
            parallel=self.store.upload_parallelism,
        )
        assert self.schema is not None
        self._writer = pq.ParquetWriter(
            self._sink,
            self.schema,
            compression=self.store.compression,
            compression_level=self.store.compression_level,
        )
        self._rows_in_file = 0


class StagedBlobWriter(StagedWriter):
    """What every Blob-API writer does per batch: check the schema once, conform, stage."""

    files: BlobFiles
    _schema: pa.Schema | None
    #: where uploads go, for error messages
    where = "the Store"

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            batch = self._prepare(batch)
            if self._schema is None:
                self._schema = self._check_schema(batch.schema)
            if batch.schema != self._schema:
                batch = conform(batch, self._schema, self.entity)
            self.files.write(batch)
            faults.point("stage.after_batch")
        except AzureError as exc:
            raise store_error(exc, f"cannot upload to {self.where}", entity=self.entity) from exc

    def abandon_files(self) -> None:
        self.files.abandon()

    def staged_rows(self) -> dict[str, int] | None:
        if self._schema is None:
            return None  # nothing staged: commit_files says so
        try:
            self.files.close()
        except AzureError as exc:
            raise store_error(exc, f"cannot upload to {self.where}", entity=self.entity) from exc
        return {k.rsplit("/", 1)[1]: n for k, n in self.files.rows.items()}

    def publish_error(self, exc: BaseException) -> StoreError:
        return store_error(exc, f"cannot publish to {self.where}", entity=self.entity)

    def staged_files(self) -> list[str]:
        """Finish the upload; the file names of what was staged (refused when nothing was)."""
        if self._schema is None:
            msg = "nothing to publish: the run wrote no batch"
            raise StoreError(msg, entity=self.entity)
        self.files.close()
        return [k.rsplit("/", 1)[1] for k in self.files.keys]

    def _prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """What the Store adds or changes in each batch before staging: pyarrow encodes these
        files, so views become the large types every reader knows."""
        return unview(batch)

    def _check_schema(self, schema: pa.Schema) -> pa.Schema:
        raise NotImplementedError


class BlobParquetWriter(StagedBlobWriter):
    """Stages one entity's batches as blocks of Parquet files for one run."""

    store: BlobParquetStore

    def __init__(self, store: BlobParquetStore, entity: str, run_id: str, mode: WriteMode) -> None:
        self.store = store
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self.area = store.area()
        self.files = BlobFiles(
            store,
            self.area,
            run_id,
            lambda i: self.area.key(entity, run_file_name(run_id, i)),
            entity,
        )
        self._schema = None

    def close_files(self) -> Staged:
        names = self.staged_files()
        replaces: list[str] = []
        if self.mode == "replace":
            replaces = [n for n in self.area.names(self.entity) if "/" not in n and n not in names]
        blocks = {k.rsplit("/", 1)[1]: n for k, n in self.files.blocks.items()}
        return Staged(names, self.files.bytes, {"blocks": blocks, "replaces": replaces})

    def _check_schema(self, schema: pa.Schema) -> pa.Schema:
        """On append, the new files must read as one dataset with the published ones."""
        if self.mode != "append":
            return schema
        existing = self.store.published_schema(self.entity)
        if existing is None:
            return schema
        return appendable(existing, schema, self.entity)


def footer_schema(area: BlobArea, key: str) -> pa.Schema:
    """A Parquet file's schema from two ranged reads of its tail (no full download)."""
    blob = area.container.get_blob_client(key)
    size = blob.get_blob_properties().size
    tail = blob.download_blob(offset=size - 8, length=8).readall()
    length = int.from_bytes(tail[:4], "little")
    footer = blob.download_blob(offset=size - 8 - length, length=length + 8).readall()
    # a buffer with the magic bytes in front reads like the whole file, as far as metadata goes
    return pq.read_schema(pa.BufferReader(b"PAR1" + footer))


def _iter_blob(area: BlobArea, key: str) -> Iterator[pa.RecordBatch]:
    """Batches of one Parquet blob, spooled to a temporary file (memory stays bounded)."""
    with tempfile.TemporaryFile() as tmp:
        try:
            area.container.get_blob_client(key).download_blob().readinto(tmp)
        except ResourceNotFoundError:
            return
        tmp.seek(0)
        with pq.ParquetFile(tmp) as f:
            yield from f.iter_batches()


def _secret(credentials: AzureBlobStorageCredentials | None) -> str | None:
    if credentials is None:
        return None
    parts = [credentials.connection_string, credentials.client_secret]
    return "|".join(p.get_secret_value() for p in parts if p is not None)

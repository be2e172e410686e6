"""ParquetStore: a local (or mounted) directory of Parquet tables, one folder per entity.

Layout under `path`:

    <entity>/part-<run_id>-00000.parquet   published data; `scan_parquet("<entity>/*.parquet")`
    <entity>/_deletes/part-<run_id>-...    keys a run deleted (`deletes: detect`): tombstones,
                                           applied by `parquet_current.current_view`
    _staging/<entity>/<run_id>/            files being written (readers ignore `_` names)
    _manifests/<entity>/<run_id>.json      the run record of `hygge_core.manifest`
    _state/<entity>/<name>                 objects an entity keeps beside the data (`put_state`)
    _journal/<run_id>.parquet              the run journal of `flows.journal`

Appends publish each file by `rename` into the entity folder. A replace (full_drop) stages the
complete new table and exchanges it with the old folder in one `renameat2(RENAME_EXCHANGE)`
call, so readers see the old table or the new one; where the kernel or filesystem lacks it,
two renames are used and recovery finishes a swap interrupted between them.

The publishing protocol is `blocks.stores.protocol`'s; this module supplies its local
primitives (folder steps and OS errors in `_local_fs`, file encoders in `_parquet_files`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from blocks.base import CopySource, WriteMode, asset_uri
from blocks.stores._local_fs import (
    copy_atomic,
    copy_bytes,
    fsync_file,
    has_all,
    make_dirs,
    os_error,
    remove_staging,
    swap_in,
)
from blocks.stores._local_lock import exclusive
from blocks.stores._parquet_files import ArrowFile, FileWriter, PolarsFile, polars_writes
from blocks.stores._schema import appendable, comparable, conform
from blocks.stores.protocol import PublishingStore, Staged, StagedWriter
from hygge_core import faults
from hygge_core.errors import StoreError
from hygge_core.manifest import (
    Manifest,
    fsync_dir,
    run_file_name,
    write_bytes_atomic,
    write_json_atomic,
)

_PROBE = '{"written_by": "hygge check", "removed": "at once"}'


#: the folder of an entity's tombstones (the keys its runs deleted), inside its table folder
TOMBSTONES = "_deletes"


class ParquetStore(PublishingStore):
    """Writes entities as Parquet tables into a local or mounted directory.

    Each entity lands in `<path>/<entity>/`, readable as one dataset with
    `polars.scan_parquet("<path>/<entity>/*.parquet")`. Writes are staged and published
    atomically; an interrupted run is finished or undone by the next one.

    Example:
        ```python
        from blocks import ParquetStore
        store = ParquetStore.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Parquet Store"
    _block_type_slug = "parquet-store"
    _description = "A local directory of Parquet tables as a hygge Store."
    spec_type = "parquet"
    keeps_log: ClassVar[bool] = True

    path: str = Field(description="Directory that holds one folder per entity.")
    compression: str = Field(
        default="zstd", description="Parquet compression: zstd, snappy, gzip, lz4 or none."
    )
    compression_level: int | None = Field(
        default=None, description="Codec level (zstd 1-22); empty for the codec's default."
    )
    max_rows_per_file: int = Field(
        default=10_000_000,
        description="Start a new file after this many rows (appends publish file by file).",
    )

    def deletes_refusal(self, keys: list[str], soft: bool = False) -> str | None:
        return None  # tombstones in `<entity>/_deletes/`; `parquet_current.current_view`

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> ParquetWriter:
        return ParquetWriter(self, entity, run_id, mode)

    def check(self) -> None:
        # where manifests live (recovery lists `_manifests/<entity>/`, never this level)
        probe = self._root / "_manifests" / f".hygge-check-{uuid.uuid4().hex}.json"
        created = [d for d in [probe.parent, *probe.parent.parents] if not d.exists()]
        try:
            write_json_atomic(probe, _PROBE)
            if probe.read_text(encoding="utf-8") != _PROBE:
                msg = f"a probe written to {str(probe.parent)!r} read back changed; check the disk"
                raise StoreError(msg)
        except OSError as exc:
            raise os_error(exc, None, probe.parent, during_run=False) from exc
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
            for folder in created:  # deepest first: only what the probe created, only if empty
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def asset_key(self, entity: str) -> str:
        folder = self.table_dir(entity).resolve().as_posix()
        return asset_uri(f"file://{folder if folder.startswith('/') else '/' + folder}")

    def lock_id(self) -> str:
        return f"parquet:{self._root.resolve()}"

    def exclusive(
        self, owner: str, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[None]:
        return exclusive(self._root, owner, wait_seconds, on_wait)

    def has_data(self, entity: str) -> bool:
        return self.table_dir(entity).is_dir()

    def published_rows(self, entity: str) -> int | None:
        folder = self.table_dir(entity)
        if not folder.is_dir():
            return None
        # the footers only: no data page is read
        return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))

    def write_journal(self, run_id: str, records: pa.Table) -> None:
        folder = self._root / "_journal"
        folder.mkdir(parents=True, exist_ok=True)
        # a dot name that does not end in .parquet: no reader's glob picks up a half-written file
        tmp = folder / f".{run_id}.parquet.tmp"
        pq.write_table(records, tmp)
        os.replace(tmp, folder / f"{run_id}.parquet")
        fsync_dir(folder)

    def read_table(self, entity: str) -> Iterator[pa.RecordBatch]:
        for path in sorted(self.table_dir(entity).glob("*.parquet")):
            with pq.ParquetFile(path) as f:
                # one flavour of text and binary, whichever encoder wrote the file
                schema = comparable(f.schema_arrow)
                for batch in f.iter_batches():
                    yield batch if batch.schema.equals(schema) else batch.cast(schema)

    def read_journal(self) -> pa.Table | None:
        files = sorted((self._root / "_journal").glob("*.parquet"))
        if not files:
            return None
        # permissive: files written by older versions may lack newer columns
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")

    def describe(self, entity: str) -> str:
        return f"parquet {self.table_dir(entity)}/"

    # -- layout -------------------------------------------------------------------------------

    @property
    def _root(self) -> Path:
        return Path(self.path)

    def table_dir(self, entity: str) -> Path:
        return self._root / entity

    def staging_dir(self, entity: str, run_id: str) -> Path:
        return self._root / "_staging" / entity / run_id

    def _manifests(self, entity: str) -> Path:
        return self._root / "_manifests" / entity

    def manifest_path(self, entity: str, run_id: str) -> Path:
        return self._manifests(entity) / f"{run_id}.json"

    # -- the protocol's primitives -------------------------------------------------------------

    backend_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def backend_error(self, exc: BaseException, action: str, entity: str | None) -> StoreError:
        assert isinstance(exc, OSError)
        return os_error(exc, entity, self._root)

    def manifest_ids(self, entity: str) -> list[str]:
        folder = self._manifests(entity)
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def load_manifest(self, entity: str, run_id: str) -> Manifest | None:
        path = self.manifest_path(entity, run_id)
        try:
            return Manifest.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def save_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.manifest_path(manifest.entity, manifest.run_id), manifest.to_json())

    def delete_manifest(self, entity: str, run_id: str) -> None:
        self.manifest_path(entity, run_id).unlink(missing_ok=True)

    def _state(self, entity: str) -> Path:
        return self._root / "_state" / entity

    def put_state(self, entity: str, name: str, data: bytes) -> None:
        write_bytes_atomic(self._state(entity) / name, data)

    def get_state(self, entity: str, name: str) -> bytes | None:
        try:
            return (self._state(entity) / name).read_bytes()
        except FileNotFoundError:
            return None

    def put_state_file(self, entity: str, name: str, path: Path) -> None:
        copy_atomic(path, self._state(entity) / name)

    def get_state_file(self, entity: str, name: str, dest: Path) -> bool:
        source = self._state(entity) / name
        if not source.is_file():
            return False
        try:
            copy_atomic(source, dest, durable=False)  # a local work file: no fsync needed
        except FileNotFoundError:
            if source.exists():
                raise
            return False  # deleted since the check
        return True

    def state_names(self, entity: str) -> list[str]:
        folder = self._state(entity)
        return (
            sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
            if folder.is_dir()
            else []
        )

    def delete_state(self, entity: str, name: str) -> None:
        (self._state(entity) / name).unlink(missing_ok=True)

    def staged_complete(self, manifest: Manifest) -> bool:
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        final = self.table_dir(manifest.entity)
        if manifest.mode == "replace":
            # all staged, or all in the table folder because the swap already happened
            return has_all(staged, manifest.files) or has_all(final, manifest.files)
        return all((staged / n).exists() or (final / n).exists() for n in manifest.files)

    def unpublished(self, manifest: Manifest) -> list[str]:
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        return [n for n in manifest.files if (staged / n).exists()]

    def before_publish(self, manifest: Manifest) -> None:
        if manifest.mode == "append":
            self.table_dir(manifest.entity).mkdir(parents=True, exist_ok=True)

    def publish_file(self, manifest: Manifest, name: str) -> None:
        final = self.table_dir(manifest.entity) / name
        final.parent.mkdir(exist_ok=True)  # `_deletes/` for a run's tombstones
        os.replace(self.staging_dir(manifest.entity, manifest.run_id) / name, final)
        fsync_dir(final.parent)

    def replace_table(self, manifest: Manifest) -> bool:
        final = self.table_dir(manifest.entity)
        if not has_all(final, manifest.files):
            swap_in(self.staging_dir(manifest.entity, manifest.run_id), final)
        return True

    def after_publish(self, manifest: Manifest) -> None:
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        shutil.rmtree(staged.with_name(staged.name + ".old"), ignore_errors=True)
        remove_staging(staged)

    def unpublish(self, manifest: Manifest) -> None:
        final = self.table_dir(manifest.entity)
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        if manifest.mode == "append":
            for name in manifest.files:
                (final / name).unlink(missing_ok=True)
        else:
            old = staged.with_name(staged.name + ".old")
            if old.is_dir() and not final.exists():
                # a fallback swap stopped between its two renames: put the old table back
                os.rename(old, final)
                fsync_dir(final.parent)
        remove_staging(staged)

    def clean_staging(self, entity: str, live: set[str]) -> None:
        staging = self._root / "_staging" / entity
        if staging.is_dir():
            for leftover in staging.iterdir():
                if leftover.name not in live:
                    shutil.rmtree(leftover, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()  # only when empty
                staging.parent.rmdir()

    def abort_prepared(self, manifest: Manifest) -> None:
        if manifest.mode == "replace" and has_all(self.table_dir(manifest.entity), manifest.files):
            return  # the swap happened: recovery marks it published, nothing to undo
        self.roll_back(manifest)


class ParquetWriter(StagedWriter):
    """Stages one entity's batches as Parquet files for one run."""

    store: ParquetStore

    def __init__(self, store: ParquetStore, entity: str, run_id: str, mode: WriteMode) -> None:
        self.store = store
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self.staged = store.staging_dir(entity, run_id)
        self.files: list[str] = []
        self._writer: FileWriter | None = None
        self._rows_in_file = 0
        self._schema: pa.Schema | None = None
        self._deleted = 0
        self._tombstones: ArrowFile | None = None

    def deletes_in_files(self) -> int:
        return self._deleted

    def delete(self, keys: pa.RecordBatch) -> None:
        """Tombstones: the deleted keys in `<entity>/_deletes/`, published with the run's files
        (readers of `<entity>/*.parquet` never see them; `current_view` applies them)."""
        try:
            if self._tombstones is None:
                self._close()  # the data files are complete: tombstones come after them
                name = f"{TOMBSTONES}/{run_file_name(self.run_id, 0)}"
                make_dirs(self.staged / TOMBSTONES)
                codec, level = self.store.compression, self.store.compression_level
                self._tombstones = ArrowFile(self.staged / name, keys.schema, codec, level)
                self.files.append(name)
            self._tombstones.write(keys)
            self._deleted += keys.num_rows
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def copy_file(self, source: CopySource) -> bool:
        """The source file copied into staging as it is (a reflink where the filesystem has
        one), then checked by its own footer: the rows and schema the source's footer gave."""
        try:
            if self._schema is None:
                self._schema = self._check_schema(source.schema)
                shutil.rmtree(self.staged, ignore_errors=True)  # debris of an earlier attempt
                make_dirs(self.staged)
            name = run_file_name(self.run_id, len(self.files))
            copy_bytes(Path(source.path), self.staged / name)
            meta = pq.read_metadata(self.staged / name)
            if meta.num_rows != source.rows or not meta.schema.to_arrow_schema().equals(
                source.schema
            ):
                msg = (
                    f"the copy of {source.path!r} does not match it ({meta.num_rows:,} rows, "
                    f"the source's footer says {source.rows:,}); nothing was published. Run "
                    "the entity again; if it repeats, set `reencode: always`"
                )
                raise StoreError(msg, entity=self.entity)
            self.files.append(name)
            return True
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def soft_delete(self, keys: pa.RecordBatch, column: str) -> None:
        """Tombstones that carry when (`column`): `current_view(..., soft_column=column)` keeps
        the rows and shows it."""
        self.delete(keys)

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            if self._schema is None:
                self._schema = self._check_schema(batch.schema)
                shutil.rmtree(self.staged, ignore_errors=True)  # debris of an earlier attempt
                make_dirs(self.staged)
            if batch.schema != self._schema:
                batch = self._conform(batch)
            if self._writer is None or self._rows_in_file >= self.store.max_rows_per_file:
                self._roll()
            assert self._writer is not None
            if batch.num_rows:
                self._writer.write(batch)
                self._rows_in_file += batch.num_rows
            faults.point("stage.after_batch")
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def close_files(self) -> Staged:
        self._close()
        size = 0
        for name in self.files:
            fsync_file(self.staged / name)
            size += (self.staged / name).stat().st_size
        fsync_dir(self.staged)
        return Staged(list(self.files), size)

    def publish_error(self, exc: BaseException) -> StoreError:
        assert isinstance(exc, OSError)
        return os_error(exc, self.entity, self.store.table_dir(self.entity))

    def staged_rows(self) -> dict[str, int] | None:
        try:
            self._close()
            return {n: pq.read_metadata(self.staged / n).num_rows for n in self.files}
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def abandon_files(self) -> None:
        self._close(quiet=True)

    def discard_staging(self) -> None:
        remove_staging(self.staged)

    # -- helpers --------------------------------------------------------------------------------

    def _roll(self) -> None:
        self._close()
        name = run_file_name(self.run_id, len(self.files))
        assert self._schema is not None
        path = self.staged / name
        codec, level = self.store.compression, self.store.compression_level
        if polars_writes(self._schema, codec, level):
            self._writer = PolarsFile(path, self._schema, codec, level)
        else:
            self._writer = ArrowFile(path, self._schema, codec, level)
        self.files.append(name)
        self._rows_in_file = 0

    def _close(self, quiet: bool = False) -> None:
        if self._tombstones is not None:
            tombstones, self._tombstones = self._tombstones, None
            tombstones.abort() if quiet else tombstones.close()
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        if quiet:
            writer.abort()
        else:
            writer.close()

    def _check_schema(self, schema: pa.Schema) -> pa.Schema:
        """On append, the new files must read as one dataset with the published ones."""
        if self.mode != "append":
            return schema
        published = sorted(self.store.table_dir(self.entity).glob("*.parquet"))
        if not published:
            return schema
        # files written by Polars hold large_string where pyarrow's hold string: `appendable`
        # compares the logical types, which every reader sees as the same column
        return appendable(pq.read_schema(published[-1]), schema, self.entity)

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self._schema is not None
        return conform(batch, self._schema, self.entity)

"""ParquetStore: a local (or mounted) directory of Parquet tables, one folder per entity.

Layout under `path`:

    <entity>/part-<run_id>-00000.parquet   published data; `scan_parquet("<entity>/*.parquet")`
    _staging/<entity>/<run_id>/            files being written (readers ignore `_` names)
    _manifests/<entity>/<run_id>.json      the run record of `hygge_core.manifest`
    _journal/<run_id>.parquet              the run journal of `flows.journal`

Appends publish each file by `rename` into the entity folder. A replace (full_drop) stages the
complete new table and exchanges it with the old folder in one `renameat2(RENAME_EXCHANGE)`
call, so readers see the old table or the new one; where the kernel or filesystem lacks it,
two renames are used and recovery finishes a swap interrupted between them.

Files are encoded by Polars' streaming Parquet sink (columns in parallel), fed batch by batch
through a bounded queue; types Polars would write differently go through pyarrow's writer.
Polars writes text as `large_string` where pyarrow writes `string`: both read as the same table,
and appends compare schemas by logical type (`comparable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from blocks.base import EntityWriter, StoreBlock, WriteMode, asset_uri, utc_now
from blocks.stores._local_lock import exclusive
from blocks.stores._schema import SMALL, appendable, comparable, conform
from hygge_core import faults
from hygge_core.arrow_types import VIEWS, unview, unviewed
from hygge_core.errors import StoreError, TransientStoreError, first_line, is_transient
from hygge_core.manifest import Manifest, fsync_dir, run_file_name, write_json_atomic

_KEEP_COMMITTED = 10
_PROBE = '{"written_by": "hygge check", "removed": "at once"}'


class ParquetStore(StoreBlock):
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

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> ParquetWriter:
        return ParquetWriter(self, entity, run_id, mode)

    def recover(self, entity: str) -> list[Manifest]:
        pending: list[Manifest] = []
        folder = self._manifests(entity)
        names = sorted(folder.glob("*.json")) if folder.is_dir() else []
        committed = []
        for path in names:
            manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
            if manifest.state == "prepared":
                recovered = self._finish_or_undo(manifest)
                if recovered is None:
                    continue  # rolled back: nothing of that run remains
                manifest = recovered
            if manifest.state == "published":
                pending.append(manifest)
            else:
                committed.append(path)
        live = {m.run_id for m in pending}
        staging = self._root / "_staging" / entity
        if staging.is_dir():
            for leftover in staging.iterdir():
                if leftover.name not in live:
                    shutil.rmtree(leftover, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()  # only when empty
                staging.parent.rmdir()
        for path in committed[:-_KEEP_COMMITTED]:
            path.unlink(missing_ok=True)
        return pending

    def mark_committed(self, entity: str, run_id: str) -> None:
        path = self._manifests(entity) / f"{run_id}.json"
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
        manifest.state = "committed"
        write_json_atomic(path, manifest.to_json())

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
            raise _os_error(exc, None, probe.parent, during_run=False) from exc
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

    def exclusive(self, owner: str, wait_seconds: float = 0.0) -> AbstractContextManager[None]:
        return exclusive(self._root, owner, wait_seconds)

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

    # -- publish and recovery -----------------------------------------------------------------

    def publish(self, manifest: Manifest) -> None:
        """Move a prepared run's staged files to their final place; safe to repeat."""
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        final = self.table_dir(manifest.entity)
        if manifest.mode == "replace":
            if not _has_all(final, manifest.files):
                _swap_in(staged, final)
        else:
            final.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(manifest.files):
                if (staged / name).exists():
                    if i:
                        faults.point("publish.between_files")
                    os.replace(staged / name, final / name)
            fsync_dir(final)
        faults.point("publish.before_mark")
        manifest.state = "published"
        write_json_atomic(self.manifest_path(manifest.entity, manifest.run_id), manifest.to_json())
        shutil.rmtree(staged.with_name(staged.name + ".old"), ignore_errors=True)
        _remove_staging(staged)

    def roll_back(self, manifest: Manifest) -> None:
        """Undo a run that never fully published: nothing of it stays visible."""
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
        _remove_staging(staged)
        self.manifest_path(manifest.entity, manifest.run_id).unlink(missing_ok=True)

    def _finish_or_undo(self, manifest: Manifest) -> Manifest | None:
        staged = self.staging_dir(manifest.entity, manifest.run_id)
        final = self.table_dir(manifest.entity)
        present = [(staged / n).exists() or (final / n).exists() for n in manifest.files]
        swapped = manifest.mode == "replace" and _has_all(final, manifest.files)
        if swapped or (
            all(present) and (manifest.mode == "append" or _has_all(staged, manifest.files))
        ):
            self.publish(manifest)
            return manifest
        self.roll_back(manifest)
        return None


class ParquetWriter(EntityWriter):
    """Stages one entity's batches as Parquet files for one run."""

    def __init__(self, store: ParquetStore, entity: str, run_id: str, mode: WriteMode) -> None:
        self.store = store
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self.staged = store.staging_dir(entity, run_id)
        self.files: list[str] = []
        self.bytes = 0
        self._writer: _FileWriter | None = None
        self._rows_in_file = 0
        self._schema: pa.Schema | None = None
        self._prepared = False

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            if self._schema is None:
                self._schema = self._check_schema(batch.schema)
                shutil.rmtree(self.staged, ignore_errors=True)  # debris of an earlier attempt
                _make_dirs(self.staged)
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
            raise _os_error(exc, self.entity, self.staged) from exc

    def commit_files(self, ledger_entry: dict[str, Any] | None, rows: int) -> Manifest:
        try:
            self._close()
            for name in self.files:
                _fsync(self.staged / name)
                self.bytes += (self.staged / name).stat().st_size
            fsync_dir(self.staged)
            manifest = Manifest(
                entity=self.entity,
                run_id=self.run_id,
                mode=self.mode,
                files=list(self.files),
                rows=rows,
                bytes=self.bytes,
                ledger_entry=ledger_entry,
                created_at=utc_now().isoformat(),
            )
            path = self.store.manifest_path(self.entity, self.run_id)
            write_json_atomic(path, manifest.to_json())
            self._prepared = True
            faults.point("publish.after_prepare")
            self.store.publish(manifest)
            return manifest
        except OSError as exc:
            raise _os_error(exc, self.entity, self.store.table_dir(self.entity)) from exc

    def staged_rows(self) -> dict[str, int] | None:
        try:
            self._close()
            return {n: pq.read_metadata(self.staged / n).num_rows for n in self.files}
        except OSError as exc:
            raise _os_error(exc, self.entity, self.staged) from exc

    def abort(self) -> None:
        self._close(quiet=True)
        path = self.store.manifest_path(self.entity, self.run_id)
        if self._prepared and path.exists():
            manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
            if manifest.state == "prepared":
                if manifest.mode == "replace" and _has_all(
                    self.store.table_dir(self.entity), manifest.files
                ):
                    return  # the swap happened: recovery marks it published, nothing to undo
                self.store.roll_back(manifest)
            return
        _remove_staging(self.staged)

    # -- helpers --------------------------------------------------------------------------------

    def _roll(self) -> None:
        self._close()
        name = run_file_name(self.run_id, len(self.files))
        assert self._schema is not None
        path = self.staged / name
        codec, level = self.store.compression, self.store.compression_level
        if _polars_writes(self._schema, codec, level):
            self._writer = _PolarsFile(path, self._schema, codec, level)
        else:
            self._writer = _ArrowFile(path, self._schema, codec, level)
        self.files.append(name)
        self._rows_in_file = 0

    def _close(self, quiet: bool = False) -> None:
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


# -- encoding one file ------------------------------------------------------------------------


class _FileWriter(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _ArrowFile:
    """One Parquet file encoded by pyarrow (one column at a time): for what Polars cannot write."""

    def __init__(self, path: Path, schema: pa.Schema, codec: str, level: int | None) -> None:
        # large types, not views: what every reader (and older pyarrow) knows
        schema = unviewed(schema)
        self._writer = pq.ParquetWriter(path, schema, compression=codec, compression_level=level)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(unview(batch))

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


_END = object()
#: batches handed over but not yet encoded; Polars buffers at most about one row group more
_QUEUED_BATCHES = 2


class _PolarsFile:
    """One Parquet file encoded by Polars' streaming sink, which encodes columns in parallel.

    The sink pulls batches through an Arrow C stream on its own thread; `write` hands each
    batch over through a small bounded queue, so memory stays bounded. The file is created
    here, as pyarrow's writer does, and the sink writes to that open file, so a cleaned-up
    staging folder is never created again behind recovery's back. An error of the sink
    surfaces at the next `write` or at `close`; the file is complete only after `close`.
    """

    def __init__(self, path: Path, schema: pa.Schema, codec: str, level: int | None) -> None:
        self._file = path.open("wb")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED_BATCHES)
        self._error: BaseException | None = None
        self._aborted = False
        reader = pa.RecordBatchReader.from_batches(schema, self._batches())
        # nullability is kept (NOT NULL columns stay `required`); text and binary are written
        # as large types, which `comparable` treats as equal to pyarrow's
        written = pa.schema(
            pa.field(f.name, _POLARS_OUT.get(f.type, f.type), f.nullable, f.metadata)
            for f in schema
        )
        self._thread = threading.Thread(
            target=self._sink,
            args=(pl.scan_arrow_c_stream(reader), written, codec, level),
            name=f"hygge-parquet-{path.name}",
            daemon=True,
        )
        self._thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (item := self._queue.get()) is not _END:
            if self._aborted:
                msg = "the write was aborted"
                raise RuntimeError(msg)
            yield item

    def _sink(self, lf: pl.LazyFrame, schema: pa.Schema, codec: str, level: int | None) -> None:
        try:
            lf.sink_parquet(
                self._file,
                compression=_POLARS_CODECS[codec.lower()],
                compression_level=level,
                arrow_schema=schema,
                engine="streaming",
            )
        except BaseException as exc:
            self._error = exc

    def _put(self, item: Any) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise()
                    raise OSError(errno.EIO, "the Parquet encoder stopped early") from None

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            if isinstance(exc, OSError):
                raise exc
            msg = f"cannot write Parquet: {first_line(exc)}"
            raise OSError(errno.EIO, msg) from exc

    def write(self, batch: pa.RecordBatch) -> None:
        self._put(batch)

    def close(self) -> None:
        if self._thread.is_alive():
            self._put(_END)
            self._thread.join()
        self._raise()
        self._file.close()

    def abort(self) -> None:
        self._aborted = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_END)
        while self._thread.is_alive():
            # unblock a sink waiting on the queue; it stops at the next batch it takes
            with contextlib.suppress(queue.Full):
                self._queue.put(_END, timeout=0.2)
            self._thread.join(timeout=0.2)
        self._error = None
        with contextlib.suppress(OSError):
            self._file.close()


_POLARS_CODECS: dict[str, Literal["lz4", "uncompressed", "snappy", "gzip", "brotli", "zstd"]] = {
    "zstd": "zstd",
    "snappy": "snappy",
    "gzip": "gzip",
    "lz4": "lz4",
    "brotli": "brotli",
    "none": "uncompressed",
    "uncompressed": "uncompressed",
}
_LEVELLED = {"zstd", "gzip", "brotli"}
#: what Polars writes each text and binary flavour as: the large types (views included)
_POLARS_OUT = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary(), **VIEWS}


def _polars_type(t: pa.DataType) -> bool:
    """Types Polars writes exactly as pyarrow would (same Parquet type, same Arrow type back)."""
    if pa.types.is_timestamp(t):
        # Polars has no second unit and keeps only named zones; UTC and naive are what Homes give
        return t.unit != "s" and t.tz in (None, "UTC")
    if pa.types.is_decimal(t):
        return isinstance(t, pa.Decimal128Type)
    return (
        pa.types.is_integer(t)
        or t in (pa.float32(), pa.float64(), pa.bool_(), pa.date32())
        or t in _POLARS_OUT
        or t in SMALL
    )


def _polars_writes(schema: pa.Schema, codec: str, level: int | None) -> bool:
    """Whether this file goes through Polars' parallel encoder (else pyarrow's)."""
    codec = codec.lower()
    if codec not in _POLARS_CODECS or (level is not None and codec not in _LEVELLED):
        return False
    names = schema.names
    unique = bool(names) and len(set(names)) == len(names)
    return unique and all(_polars_type(f.type) for f in schema)


def _make_dirs(folder: Path, attempts: int = 5) -> None:
    """`mkdir -p` that tolerates another entity's `_remove_staging` removing an empty parent
    (`_staging/`) between the creation of that parent and of its child."""
    for attempt in range(attempts):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def _remove_staging(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # only when no other run stages this entity
        staged.parent.parent.rmdir()


def _has_all(folder: Path, names: list[str]) -> bool:
    return bool(names) and all((folder / n).exists() for n in names)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(staged: Path, final: Path) -> None:
    """Put the staged folder in place of the final one, in one step where the OS allows."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(staged, final)
    elif _exchange(staged, final):
        pass  # `staged` now holds the old table; publish() removes it
    else:
        old = staged.with_name(staged.name + ".old")
        os.rename(final, old)
        faults.point("publish.between_swap_renames")
        os.rename(staged, final)
    fsync_dir(final.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where unsupported."""
    if os.environ.get("HYGGE_NO_RENAME_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    res = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_OS_REASONS = {
    errno.ENOSPC: ("the disk is full", "free space there or point the Store's `path` elsewhere"),
    errno.EDQUOT: ("the disk quota is exhausted", "raise the quota or free space there"),
    errno.EACCES: ("permission denied", "give the user running hygge write access there"),
    errno.EPERM: (
        "permission denied",
        "give the user running hygge write access there (and clear any immutable flag)",
    ),
    errno.EROFS: (
        "the filesystem is read-only",
        "remount it read-write or point the Store's `path` elsewhere",
    ),
    errno.ENOTDIR: ("a part of that path is not a directory", "point the Store's `path` at one"),
}


def _os_error(
    exc: OSError, entity: str | None, where: Path, *, during_run: bool = True
) -> StoreError:
    reason, advice = _OS_REASONS.get(exc.errno or 0, (exc.strerror or str(exc), ""))
    path = Path(exc.filename) if exc.filename else where
    if exc.errno == errno.ENOTDIR:
        blocker = _file_in_the_way(path)
        if blocker is not None:
            reason = f"{str(blocker)!r} is a file, not a directory"
    if exc.filename2:
        # a rename while publishing: the folder it goes into is what a reader can act on
        action = f"cannot move a staged file into {str(Path(exc.filename2).parent)!r}"
    else:
        action = f"cannot write {str(path)!r}"
    after = f"; {advice}" if advice else ""
    unchanged = "; the published table and the ledger are unchanged" if during_run else ""
    msg = f"{action}: {reason}{unchanged}{after}"
    # a dropped network mount is worth a retry; a full disk or a permission is not
    kind = TransientStoreError if is_transient(exc) else StoreError
    return kind(msg, entity=entity)


def _file_in_the_way(path: Path) -> Path | None:
    """The existing non-directory that stops `path` (or one of its parents) being created."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None

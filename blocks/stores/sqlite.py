"""SqliteStore: one table per entity in a SQLite database file, holding the source's current
state (an incremental entity with keys is upserted by them, deletes are applied).

Beside the database `<path>` the Store keeps its records in `<path>-hygge/` (as SQLite keeps
`<path>-wal` and `<path>-journal`): the Parquet Store's manifests, state, journal and lock
(`ParquetStore`), and each run's staged rows as Arrow IPC files:

    <path>                                     the database: one table per entity, `_hygge_runs`
    <path>-hygge/_staging/<entity>/<run_id>/   rows.arrow, deletes.arrow, soft.arrow
    <path>-hygge/_manifests/<entity>/<run_id>.json, _state/, _journal/, _hygge.lock

SQLite is transactional, so the Store is too (`blocks.stores.protocol`): stage encodes the
run's batches into the storage classes SQLite holds them in (`_sqlite_types`, where a value it
cannot keep exactly fails the entity before anything is committed); prepare writes the
manifest; publish is ONE transaction that applies the whole run and records its id in
`_hygge_runs` (`_sqlite_commit`). A publish repeated after a crash finds that record and
skips the commit, so no run is applied twice; a run killed before it is rolled forward from
its staged files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from adbc_driver_manager import dbapi
from pydantic import Field

from blocks.base import WriteMode, asset_uri
from blocks.stores import _sqlite_commit as sql
from blocks.stores._local_fs import fsync_file, make_dirs, os_error, remove_staging
from blocks.stores._merge_fields import MERGE_KEYS, MERGE_ORDER, merges_by
from blocks.stores._schema import conform
from blocks.stores._sqlite_types import declared_columns, ident, to_sqlite
from blocks.stores.parquet import ParquetStore
from blocks.stores.protocol import Staged, StagedWriter
from hygge_core import faults
from hygge_core.errors import StoreError, TransientStoreError, first_line
from hygge_core.manifest import Manifest, fsync_dir

ROWS, DELETES, SOFT = "rows.arrow", "deletes.arrow", "soft.arrow"


class SqliteStore(ParquetStore):
    """Writes each entity as a table of a SQLite database that holds the source's current state.

    A full load replaces the table in one transaction (readers see the old table or the new
    one); an incremental entity with watermark `keys` is upserted by them (`INSERT ... ON
    CONFLICT DO UPDATE`, on a unique index the Store creates), one without keys is appended.
    Column types are declared so that a `SqliteHome` reads every value back exactly. The
    Store's records sit in `<path>-hygge/` beside the database.

    Example:
        ```python
        from blocks import SqliteStore
        store = SqliteStore.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "SQLite Store"
    _block_type_slug = "sqlite-store"
    _description = "Tables (current state) in a SQLite database file, as a hygge Store."
    spec_type = "sqlite"
    transactional: ClassVar[bool] = True
    # schema drift's `evolve` adds columns in the run's own transaction (ALTER TABLE)
    evolves_in_place: ClassVar[bool] = True
    type_change_refusal = (
        "a SQLite Store keeps the column types it declared (SQLite cannot alter a column's "
        "type); run this entity with --full-drop to rebuild the table with the new type"
    )

    path: str = Field(description="The SQLite database file (created on the first run).")
    state_path: str | None = Field(
        default=None,
        description="Folder for the Store's manifests, staging and lock; empty for "
        "`<path>-hygge` beside the database.",
    )
    merge_keys: list[str] | None = MERGE_KEYS
    merge_order: list[str] | None = MERGE_ORDER

    @property
    def _root(self) -> Path:
        return Path(self.state_path or f"{self.path}-hygge")

    @property
    def db(self) -> Path:
        return Path(self.path)

    def merges_by(self, keys: list[str]) -> bool:
        return merges_by(self.merge_keys, keys)

    def deletes_refusal(self, keys: list[str], soft: bool = False) -> str | None:
        if self.merges_by(keys):
            return None  # deleted (or marked) by key in the run's transaction
        return (
            "a SQLite Store deletes rows by the keys it upserts by: leave `merge_keys` empty "
            "(it takes the watermark's keys) or equal to them"
        )

    def for_entity(self, keys: list[str], watermark_columns: list[str]) -> SqliteStore:
        defaults = {"merge_keys": keys, "merge_order": watermark_columns}
        update = {k: list(v) for k, v in defaults.items() if getattr(self, k) is None and v}
        return self.model_copy(update=update) if update else self

    # the Store takes the Parquet Store's records (manifests, state, lock), not its writer
    def open_writer(  # type: ignore[override]
        self, entity: str, run_id: str, mode: WriteMode
    ) -> SqliteWriter:
        return SqliteWriter(self, entity, run_id, mode)

    # -- the database -------------------------------------------------------------------------

    def describe(self, entity: str) -> str:
        return f"sqlite {self.path} table {entity}"

    def asset_key(self, entity: str) -> str:
        return asset_uri(f"sqlite://{self.db.resolve().as_posix()}/{entity}")

    def lock_id(self) -> str:
        return f"sqlite:{self.db.resolve()}"

    def _query(self, sql_text: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with sql.cursor(self.db) as cur:
            return sql.run(cur, sql_text, params)

    def has_data(self, entity: str) -> bool:
        if not self.db.is_file():
            return False
        with self.translated("cannot read the SQLite database", entity):
            found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            return bool(self._query(found, [entity]))

    def published_rows(self, entity: str) -> int | None:
        if not self.has_data(entity):
            return None
        with self.translated("cannot read the SQLite database", entity):
            return int(self._query(f"SELECT count(*) FROM {ident(entity)}")[0][0])

    def read_table(self, entity: str) -> Iterator[pa.RecordBatch]:
        msg = "a SQLite Store adds columns in place and never rewrites a table to evolve it"
        raise StoreError(msg, entity=entity)

    def check(self) -> None:
        super().check()  # the records' folder, beside the database
        if not self.db.exists():
            return  # created by the first run, in a folder the probe just wrote to
        try:
            with sql.transaction(self.db) as cur:
                # a write (rolled back): a read-only file or a held lock shows here
                sql.run(cur, f"CREATE TABLE {ident('_hygge_check')} (x)")
                raise _Probe
        except _Probe:
            pass
        except self.backend_errors as exc:
            raise self.backend_error(exc, "cannot write the SQLite database", None) from exc

    # -- the protocol's primitives (one transaction in place of renames) ------------------------

    backend_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, dbapi.Error)

    def backend_error(self, exc: BaseException, action: str, entity: str | None) -> StoreError:
        if isinstance(exc, OSError):
            return os_error(exc, entity, self._root)
        text = first_line(exc)
        where = f"SQLite database {self.path!r}"
        if "locked" in text or "busy" in text:
            msg = (
                f"{action}: {where} is locked by another connection ({text}) for longer than "
                f"{sql.BUSY_TIMEOUT_MS // 1000} s; the ledger is unchanged and the entity is "
                "retried (`retries`); close whatever holds a write transaction open on it"
            )
            return TransientStoreError(msg, entity=entity)
        if any(t in text for t in ("readonly", "read-only", "unable to open", "failed to open")):
            if self.db.is_dir():
                text = "the path is a folder, not a database file"
            msg = (
                f"{action}: {where} cannot be written ({text}); the ledger is unchanged. Give "
                "the user running hygge write access to the file and to its folder (SQLite "
                "writes its journal beside it), or point `path` at a writable place"
            )
            return StoreError(msg, entity=entity)
        if "UNIQUE constraint" in text:
            msg = (
                f"{action}: the table in {where} holds more than one row for some key, so it "
                f"cannot be upserted by its keys ({text}); the ledger is unchanged. Run this "
                "entity once with --full-drop to rebuild it with one row per key"
            )
            return StoreError(msg, entity=entity)
        msg = f"{action}: {where} refused the run's transaction ({text}); the ledger is unchanged"
        return StoreError(msg, entity=entity)

    def run_committed(self, manifest: Manifest) -> bool:
        return sql.committed(self.db, manifest.entity, manifest.run_id)

    def staged_complete(self, manifest: Manifest) -> bool:
        if self.run_committed(manifest):
            return True
        folder = self.staging_dir(manifest.entity, manifest.run_id)
        names = [*manifest.files, *manifest.extra.get("extra_files", [])]
        return bool(names) and all((folder / n).is_file() for n in names)

    def unpublished(self, manifest: Manifest) -> list[str]:
        return [] if self.run_committed(manifest) else list(manifest.files)

    def before_publish(self, manifest: Manifest) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)

    def commit_run(self, manifest: Manifest) -> None:
        extra = manifest.extra
        folder = self.staging_dir(manifest.entity, manifest.run_id)
        kept = set(extra.get("extra_files", []))
        plan = sql.RunCommit(
            entity=manifest.entity,
            run_id=manifest.run_id,
            kind=extra["kind"],
            columns=[(n, d) for n, d in extra["columns"]],
            rows=folder / ROWS,
            keys=list(extra.get("keys") or []),
            order=list(extra.get("order") or []),
            deletes=folder / DELETES if DELETES in kept else None,
            soft=folder / SOFT if SOFT in kept else None,
            soft_column=extra.get("soft_column"),
            row_count=manifest.rows,
        )
        sql.commit(self.db, plan)

    def after_publish(self, manifest: Manifest) -> None:
        remove_staging(self.staging_dir(manifest.entity, manifest.run_id))

    def unpublish(self, manifest: Manifest) -> None:
        # called only for a run whose transaction never committed: nothing of it is visible
        remove_staging(self.staging_dir(manifest.entity, manifest.run_id))

    def abort_prepared(self, manifest: Manifest) -> None:
        if self.run_committed(manifest):
            return  # the commit happened: recovery marks it published, nothing to undo
        self.roll_back(manifest)


class _Probe(Exception):
    """Ends `check`'s probe transaction (rolled back)."""


class _Spool:
    """One staged Arrow IPC file, opened on its first batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self.path), batch.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            fsync_file(self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        self._writer = None


class SqliteWriter(StagedWriter):
    """Stages one entity's batches, in SQLite's storage classes, for one transaction."""

    store: SqliteStore

    def __init__(self, store: SqliteStore, entity: str, run_id: str, mode: WriteMode) -> None:
        self.store = store
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self.kind = "replace" if mode == "replace" else "merge" if store.merge_keys else "append"
        self.staged = store.staging_dir(entity, run_id)
        self._schema: pa.Schema | None = None
        self._columns: list[tuple[str, str]] = []
        self._spools = {n: _Spool(self.staged / n) for n in (ROWS, DELETES, SOFT)}
        self._soft_column: str | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._start(batch.schema)
        elif batch.schema != self._schema:
            assert self._schema is not None
            batch = conform(batch, self._schema, self.entity)
        self._spool(ROWS, batch)
        faults.point("stage.after_batch")

    def delete(self, keys: pa.RecordBatch) -> None:
        self._needs_keys("delete")
        self._spool(DELETES, keys)

    def soft_delete(self, keys: pa.RecordBatch, column: str) -> None:
        self._needs_keys("mark deleted")
        self._soft_column = column
        self._spool(SOFT, keys)

    def staged_rows(self) -> dict[str, int] | None:
        self._close_all()
        with pa.memory_map(str(self.staged / ROWS)) as f:
            reader = pa.ipc.open_file(f)
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return {ROWS: rows}

    def close_files(self) -> Staged:
        if self._schema is None:
            msg = "the run wrote no batch, so there is no table to publish"
            raise StoreError(msg, entity=self.entity)
        self._close_all()
        extra_files = [n for n in (DELETES, SOFT) if (self.staged / n).is_file()]
        fsync_dir(self.staged)
        size = sum((self.staged / n).stat().st_size for n in [ROWS, *extra_files])
        return Staged(
            [ROWS],
            size,
            {
                "kind": self.kind,
                "columns": [list(c) for c in self._columns],
                "keys": list(self.store.merge_keys or []) if self.store.merge_keys else [],
                "order": list(self.store.merge_order or []) if self.store.merge_keys else [],
                "extra_files": extra_files,
                "soft_column": self._soft_column,
            },
        )

    def abandon_files(self) -> None:
        for spool in self._spools.values():
            spool.abort()

    def discard_staging(self) -> None:
        remove_staging(self.staged)

    # -- helpers --------------------------------------------------------------------------------

    def _start(self, schema: pa.Schema) -> None:
        self._columns = declared_columns(schema, self.entity)
        wanted = [*(self.store.merge_keys or []), *(self.store.merge_order or [])]
        missing = [c for c in wanted if c not in schema.names] if self.kind != "append" else []
        if missing:
            msg = (
                f"the SQLite upsert needs column(s) {', '.join(map(repr, missing))}, which the "
                "rows written do not have; keep them in `columns` and the polish, or set "
                "`merge_keys` / `merge_order` for this entity"
            )
            raise StoreError(msg, entity=self.entity)
        self._schema = schema
        try:
            remove_staging(self.staged)  # debris of an earlier attempt
            make_dirs(self.staged)
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def _spool(self, name: str, batch: pa.RecordBatch) -> None:
        bound = to_sqlite(batch, self.entity)
        try:
            if name != ROWS and not self.staged.is_dir():
                make_dirs(self.staged)
            self._spools[name].write(bound)
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

    def _needs_keys(self, what: str) -> None:
        if not self.store.merge_keys:
            msg = f"a SQLite Store can {what} rows only by key: give the entity `keys`"
            raise StoreError(msg, entity=self.entity)

    def _close_all(self) -> None:
        try:
            for spool in self._spools.values():
                spool.close()
        except OSError as exc:
            raise os_error(exc, self.entity, self.staged) from exc

"""The two interfaces everything else is built on: a Home reads, a Store stages and publishes.

A Home never knows a Store and a Store never knows a Home; the entity task
(`hygge_tasks.move`) knows both through these classes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
from prefect.blocks.core import Block
from prefect.types.names import MAX_ASSET_KEY_LENGTH, RESTRICTED_ASSET_CHARACTERS
from pydantic import ConfigDict, Field, HttpUrl

from hygge_core.errors import ConfigError, StoreError
from hygge_core.manifest import Manifest

WriteMode = Literal["append", "replace"]
LOGO = HttpUrl(
    "https://raw.githubusercontent.com/PrefectHQ/prefect/main/docs/images/logos/"
    "prefect-logo-mark-solid-white-500.png"
)


@dataclass(frozen=True)
class Since:
    """A lower bound for an incremental read: `column >= value OR column IS NULL`.

    Homes push it down where they can and may return more rows than it admits (never fewer):
    the engine applies the exact, boundary-aware filter itself (`hygge_tasks.watermark`).
    NULL rows are included so the engine can count and report them.
    """

    column: str
    value: Any
    #: when given, the watermark is `COALESCE(columns...)` and `column` only its label
    columns: tuple[str, ...] = ()

    @property
    def sources(self) -> tuple[str, ...]:
        """The source columns the watermark is taken from, first non-NULL wins."""
        return self.columns or (self.column,)


@dataclass(frozen=True)
class DestinationVerdict:
    """What the destination's own service says of a table (Fabric's mirroring monitor)."""

    #: ok, warning, failed, processing, stopped or unknown
    state: str
    #: one line for the summary: the status, the service's error, the rows it processed
    text: str
    #: when the service last processed the table (None: it does not say)
    updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class ReadRequest:
    """What the engine asks a Home for: one entity's rows, in batches."""

    entity: str
    table: str | None = None
    query: str | None = None
    path: str | None = None
    columns: list[str] | None = None
    where: str | None = None
    batch_size: int = 100_000
    since: Since | None = None
    #: read exactly these files (absolute paths) instead of resolving `path` (file Homes;
    #: `incremental: files` reads only the files no run has loaded yet)
    files: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CopySource:
    """A source file a Store may publish byte for byte, with what its footer says."""

    path: str
    rows: int
    schema: pa.Schema


@dataclass(frozen=True)
class SourceFile:
    """A file a file Home would read, as `incremental: files` remembers it."""

    path: str
    size: int
    #: modification time, nanoseconds since the epoch
    mtime_ns: int
    #: the object store's ETag, which changes with the content (None: a local file)
    etag: str | None = None

    @classmethod
    def of(cls, path: os.PathLike[str] | str) -> SourceFile:
        st = os.stat(path)
        return cls(str(os.path.abspath(path)), st.st_size, st.st_mtime_ns)


#: the column a change read (`HomeBlock.read_changes`) names each row's operation in:
#: `I` insert, `U` update (both the row's current values), `D` delete (the keys only)
CHANGE_OPERATION = "__hygge_change_op"


@dataclass
class ChangeRead:
    """A read of a source's own change tracking: every row, or the changes since a version.

    `batches` carry `CHANGE_OPERATION` first when `full` is False. `version` is the source's
    version the read saw, set once the first batch is out (it is read in the same snapshot).
    """

    full: bool
    #: why the read is full or what it reads, for the run's log and journal
    reason: str
    batches: Iterator[pa.RecordBatch]
    version: int | None = None


#: a validation error never echoes what it was given: that may hold a password or a DSN
HIDE_INPUT = ConfigDict(hide_input_in_errors=True)


class HomeBlock(Block, ABC):
    """Where data lives. Subclasses read one entity as a stream of Arrow record batches."""

    model_config = HIDE_INPUT

    _logo_url = LOGO
    #: the `type:` a spec uses for an inline Home of this class
    spec_type: ClassVar[str]

    concurrency_limit: str | None = Field(
        default=None,
        description="Name of a Prefect global concurrency limit; each entity reading from this "
        "Home holds one slot while it moves, across all flow runs and workers.",
    )
    #: the settings that say where the data is (never a secret; see `location`)
    location_fields: ClassVar[tuple[str, ...]] = ()

    def location(self) -> str:
        """Where this Home reads from, stable across runs and free of secrets.

        The ledger keeps it with each watermark, so a watermark is never applied to another
        source. Only where the data is counts: tuning settings (timeouts, batch or partition
        sizes) may change freely.
        """
        parts = [self.spec_type]
        for name in self.location_fields:
            value = getattr(self, name)
            if name == "path" and isinstance(value, str):
                value = os.path.normpath(value)  # `./shop.sqlite` is `shop.sqlite`
            parts.append(f"{name}={value}")
        return " ".join(parts)

    @abstractmethod
    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        """Yield the entity's rows as record batches of about `request.batch_size` rows.

        Every batch of one read carries the same schema. Memory stays bounded by the batch
        size, not the table size. Raises `HomeError` (or `TransientHomeError`) naming the
        entity and the cause. A generator may return a short note for the run's report (what
        it left out of the rows and why, e.g. blank CSV lines), or None.
        """

    @abstractmethod
    def describe(self, request: ReadRequest) -> str:
        """A short human description of the source, for dry runs and logs (no secrets)."""

    def list_files(self, request: ReadRequest) -> list[SourceFile] | None:
        """The files the entity would read, for `incremental: files` (None: not a file Home)."""
        return None

    def copy_sources(self, request: ReadRequest) -> list[CopySource] | None:
        """The entity's files, when a Store may take them as they are (no column, filter or
        bound, one schema, types read without change); None: the rows must be read."""
        return None

    @abstractmethod
    def check(self, request: ReadRequest) -> None:
        """Prove the entity can be read, reading none of its rows (`hygge check`).

        Connects as a read does and confirms that the table, query or path exists and can be
        read: a zero-row query, or the files' listing and schemas. Raises the `HomeError` a
        read would raise, naming the cause and the fix.
        """

    def read_changes(
        self, request: ReadRequest, keys: list[str], version: int | None
    ) -> ChangeRead:
        """The table's rows (`version` None, or too old), or its changes since `version`
        (`changes: change_tracking`). Only Homes whose `reads_changes` is True have one."""
        msg = f"the {self.spec_type} Home has no change tracking to read"
        raise ConfigError(msg, entity=request.entity)

    #: whether `read_changes` reads the source's change tracking (`changes:`)
    reads_changes: ClassVar[bool] = False

    def estimate_rows(self, request: ReadRequest) -> int | None:
        """A cheap row count for progress reporting, or None when it would cost a scan."""
        return None


class EntityWriter(ABC):
    """Stages one entity's batches for one run, then publishes them in one step."""

    @abstractmethod
    def write(self, batch: pa.RecordBatch) -> None:
        """Stage a batch; nothing is visible to readers yet."""

    @abstractmethod
    def commit_files(self, ledger_entry: dict[str, Any] | None, rows: int) -> Manifest:
        """Prepare the manifest (with the ledger entry it covers), then publish.

        Returns the manifest in state `published`. After this returns, the data is visible;
        the parent flow saves the ledger and then calls `StoreBlock.mark_committed`.
        """

    @abstractmethod
    def abort(self) -> None:
        """Remove everything this attempt staged; published data is left untouched."""

    def staged_rows(self) -> dict[str, int] | None:
        """Rows per staged file, as the files themselves say (None: this writer cannot tell).

        Called once every batch is written and before `commit_files`: the engine reconciles
        it with the rows it wrote, and publishes nothing on a mismatch.
        """
        return None

    def left_out(self) -> int:
        """Rows written to this writer that it leaves out by design (Open Mirroring's rebuilt
        table drops rows its `delete_column` marks): part of the reconciliation."""
        return 0

    def delete(self, keys: pa.RecordBatch) -> None:
        """Stage the deletion of the rows with these keys (a batch of the key columns only),
        published in the same step as the run's rows. Only Stores whose `deletes_refusal` is
        None take deletes; the spec check refuses the others before a run starts."""
        msg = "this Store cannot delete rows"
        raise StoreError(msg)

    def copy_file(self, source: CopySource) -> bool:
        """Stage a source file as it is, checked by its footer (rows, schema) once copied.

        False: this Store re-encodes what it stores (its own types, codec or layout), and the
        engine reads the rows instead. Called before any `write`, for every file or none.
        """
        return False

    def soft_delete(self, keys: pa.RecordBatch, column: str) -> None:
        """Stage soft deletes: the rows with these keys stay, with `column` (a UTC timestamp,
        the batch's last column after the keys) set to when the source lost them. Only Stores
        whose `deletes_refusal(keys, soft=True)` is None take them."""
        msg = "this Store cannot mark rows deleted"
        raise StoreError(msg)

    def deletes_in_files(self) -> int:
        """Deleted keys this writer staged as rows of the data files `staged_rows` counts
        (Open Mirroring's `__rowMarker__` 2 rows); 0 when deletes travel apart from them."""
        return 0


class StoreBlock(Block, ABC):
    """Where data rests. Subclasses stage and publish as `docs/crash-safety.md` describes."""

    model_config = HIDE_INPUT

    _logo_url = LOGO
    spec_type: ClassVar[str]
    #: why this Store cannot change a published column's type (None: it can, by rewriting the
    #: table); schema drift's `evolve` refuses type changes with this explanation
    type_change_refusal: ClassVar[str | None] = None
    #: whether an incremental run may add columns to the published table as it writes (Delta's
    #: schema merge); otherwise schema drift's `evolve` rewrites the table once (carry-over)
    evolves_in_place: ClassVar[bool] = False
    #: whether the Store keeps a log of loads (every loaded version of a row, deletes as
    #: tombstones; its current state is read by key), not the source's current state
    keeps_log: ClassVar[bool] = False

    @abstractmethod
    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> EntityWriter:
        """Start staging one entity for one run. `replace` swaps the whole table on publish."""

    @abstractmethod
    def recover(self, entity: str) -> list[Manifest]:
        """Finish or undo interrupted runs of `entity`.

        Rolls `prepared` runs forward when all their staged files are present (else back),
        removes staging debris, and returns the manifests that are `published` but not yet
        `committed`, oldest first, so the caller can carry their watermarks into the ledger.
        """

    @abstractmethod
    def mark_committed(self, entity: str, run_id: str) -> None:
        """Record that the ledger now covers the run's data."""

    @abstractmethod
    def has_data(self, entity: str) -> bool:
        """Whether the entity has a published table (possibly with zero rows)."""

    def published_rows(self, entity: str) -> int | None:
        """Rows of the entity's published table; None when unknown without a scan.

        The empty-replace guard (`hygge_tasks.move`) treats unknown as non-empty whenever
        `has_data` says a table exists.
        """
        return None

    def merges_by(self, keys: list[str]) -> bool:
        """Whether an incremental load upserts rows by these key columns (one current row per
        key) rather than appending them: rows read again then replace, never double."""
        return False

    def verdict_seconds(self) -> float:
        """How long a run waits for the destination's verdict on its tables (0: it has none)."""
        return 0.0

    def destination_verdict(self, entity: str) -> DestinationVerdict | None:
        """The destination service's current verdict on the entity's table, read once (None:
        it reports nothing on it). Only Stores whose `verdict_seconds` is above 0 have one."""
        return None

    def repair(self, entity: str, name: str | None = None, wait_seconds: float = 0.0) -> str | None:
        """Send again, under its own name, a published file the destination rejected (the
        one named, else the one it names); a line saying what was done. None: this Store
        publishes no files a service can reject."""
        return None

    def deletes_refusal(self, keys: list[str], soft: bool = False) -> str | None:
        """Why this Store cannot delete rows by these key columns (None: it can, through
        `EntityWriter.delete`, or `soft_delete` when `soft`); the spec check shows it to
        whoever asks for `deletes:`."""
        return (
            f"the {self.spec_type} Store keeps a log of loads and cannot delete rows; use a "
            "Delta Store (`type: delta`) or Open Mirroring for a table that drops deleted rows"
        )

    def for_entity(self, keys: list[str], watermark_columns: list[str]) -> StoreBlock:
        """This Store for an entity whose rows its watermark `keys` identify and whose
        `watermark_columns` order their versions: a Store that merges by key takes them as
        its defaults (the Delta Store); others ignore them (the default: `self`)."""
        return self

    @abstractmethod
    def describe(self, entity: str) -> str:
        """Where the entity lands, for dry runs and logs (no secrets)."""

    @abstractmethod
    def check(self) -> None:
        """Prove the Store can be written, moving no data (`hygge check`).

        Writes, reads back and deletes a small probe where the Store keeps its manifests and
        journal, and leaves nothing behind. Raises `StoreError` naming the cause and the fix
        (unwritable folder, missing container, refused credentials).
        """

    @abstractmethod
    def asset_key(self, entity: str) -> str:
        """The Prefect asset key of the entity's table: a URI of where it lands (`asset_uri`)."""

    @abstractmethod
    def lock_id(self) -> str:
        """Names the area `exclusive` locks: stores with equal ids share one lock."""

    @abstractmethod
    def exclusive(
        self, owner: str, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[None]:
        """Hold this Store for one flow run; raise `StoreError` if another run holds it.

        While it waits (up to `wait_seconds`) it tells `on_wait`, once, who holds the Store.

        Recovery removes staging it does not own and a replace swaps whole tables, so two runs
        writing one Store at once must take turns.
        """

    def finish(self, entity: str, run_id: str) -> Manifest:
        """Publish a run that `commit_files` left `waiting` (its destination needed time).

        The flow calls it once the manifest's `ready_at` has passed, outside the entity's
        concurrency slot; it returns the manifest in state `published`.
        """
        msg = f"{type(self).__name__} never defers publishing"
        raise NotImplementedError(msg)

    def write_journal(self, run_id: str, records: pa.Table) -> None:
        """Keep this flow run's journal records (`flows.journal`) beside the data.

        One file or object per flow run, replaced in one step each time the run adds a record;
        other runs' records are never touched.
        """
        msg = f"{type(self).__name__} keeps no run journal"
        raise NotImplementedError(msg)

    def read_journal(self) -> pa.Table | None:
        """Every journal record this Store keeps, or None when there are none."""
        return None

    def read_table(self, entity: str) -> Iterator[pa.RecordBatch]:
        """The entity's published rows, in batches (schema evolution rewrites a table)."""
        msg = f"{type(self).__name__} cannot read back a published table to evolve its schema"
        raise StoreError(msg, entity=entity)


def asset_uri(uri: str) -> str:
    """`uri` made a valid Prefect asset key.

    Prefect refuses keys holding spaces, `%`, `#`, `?`, quotes, brackets and a few more
    characters (`prefect.types.names`): each becomes `_`. A key longer than Prefect's 512
    characters keeps its start and ends in a hash of the whole, so it stays unique.
    """
    key = "".join("_" if c in RESTRICTED_ASSET_CHARACTERS else c for c in uri)
    if len(key) > MAX_ASSET_KEY_LENGTH:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        key = f"{key[: MAX_ASSET_KEY_LENGTH - 17]}-{digest}"
    return key


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

"""OpenMirroringStore: a Microsoft Fabric mirrored database's landing zone (Open Mirroring).

The contract (Microsoft Learn, "Open mirroring landing zone requirements and formats"):

    <item>/Files/LandingZone/_partnerEvents.json               who writes here (once)
    <item>/Files/LandingZone/[<schema>.schema/]<table>/_metadata.json   {"keyColumns": [...]}
    <item>/Files/LandingZone/[<schema>.schema/]<table>/00000000000000000001.parquet ...

Data files carry 20-digit, continuous, increasing numbers (the service remembers the last one
it processed and keeps that file, so the next number follows the highest one present), and
`__rowMarker__` as the last column: 0 insert, 2 delete, 4 upsert. A file picked up before its
upload finished breaks ingestion, so every file is published by committing staged blocks.
With `file_detection: last_update_time` (LastUpdateTimeFileDetection) the names are unique
instead, and LastModified orders them (`_om_files`).

hygge's own records (manifests, journal, the lease lock and full_drop staging) live outside
the landing zone, under `state_path`, where the service never looks.

A full_drop stages the complete new table under `state_path` first; only then deletes the
table folder (retrying while the service holds it), waits until Fabric's monitor
(`Files/Monitoring/tables.json`) no longer lists the table (or, without a readable monitor,
`drop_wait_seconds`), and publishes the staged files with fresh numbering. The wait happens
outside the entity task, so it holds none of the flow's concurrency slots. After a run,
`verify_seconds` waits for Fabric's verdict on each table (`flows.verdicts`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal

import pyarrow as pa
from azure.core.exceptions import AzureError, ResourceExistsError
from pydantic import Field, field_validator

from blocks.base import DestinationVerdict, WriteMode
from blocks.stores._blob import (
    ONELAKE_URL,
    BlobArea,
    block_ids,
    join,
    lease_lock,
    store_error,
)
from blocks.stores._om_files import STRATEGY, Detection, LandingFiles
from blocks.stores._om_monitor import (
    MONITOR,
    REPLICATOR,
    TableStatus,
    find,
    parse_replicator,
    parse_tables,
)
from blocks.stores._om_repair import FileRepair
from blocks.stores._om_restart import TableRestart
from blocks.stores._om_writer import MirroringWriter
from blocks.stores.blob_parquet import (
    BlobStoreBase,
)
from hygge_core.errors import ConfigError, StoreError
from hygge_core.manifest import Manifest


class OpenMirroringStore(FileRepair, TableRestart, LandingFiles, BlobStoreBase):
    """Writes entities into a Fabric mirrored database's landing zone (Open Mirroring).

    Example:
        ```python
        from blocks import OpenMirroringStore
        store = OpenMirroringStore.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Open Mirroring Store"
    _block_type_slug = "open-mirroring-store"
    _description = "A Microsoft Fabric mirrored database's landing zone, as a hygge Store."
    spec_type = "open_mirroring"
    type_change_refusal = (
        "Fabric Open Mirroring stops replicating a table whose column type changes; run this "
        "entity with --full-drop to recreate the table with the new type"
    )

    workspace: str = Field(description="Fabric workspace name or id (the Blob container).")
    item: str = Field(description="Mirrored database item, e.g. 'Sales.MountedRelationalDatabase'.")
    landing_zone: str = Field(
        default="Files/LandingZone", description="The landing zone folder inside the item."
    )
    state_path: str = Field(
        default="Files/_hygge",
        description="Folder inside the item for hygge's manifests, journal, lock and staging.",
    )
    endpoint: str = Field(
        default=ONELAKE_URL, description="OneLake Blob endpoint (used without a credentials URL)."
    )
    key_columns: list[str] | None = Field(
        default=None,
        description="The table's key columns (`_metadata.json` keyColumns); usually set per "
        "entity. Fabric never lets them change once a table exists.",
    )
    table_schema: str | None = Field(
        default=None, description="Schema folder (`<schema>.schema/`); usually set per entity."
    )
    row_marker: Literal["upsert", "insert"] = Field(
        default="upsert",
        description="Row marker of incremental loads: upsert (4) or insert (0). Replaced tables "
        "are always inserts.",
    )
    delete_column: str | None = Field(
        default=None,
        description="A boolean source column: rows where it is true are sent as deletes (2).",
    )
    starting_sequence: int = Field(
        default=1,
        ge=1,
        description="The number of the first file hygge writes into a table folder that holds "
        "none (a table another tool fed up to N-1); later files continue after the highest "
        "number present.",
    )
    file_detection: Detection = Field(
        default="sequential",
        description="How Fabric finds the table's files: `sequential` (20-digit numbers, "
        "SequentialFileName) or `last_update_time` (unique names in LastModified order, "
        "LastUpdateTimeFileDetection) where other producers write to the same landing zone.",
    )
    upsert_default_row_marker: bool = Field(
        default=False, description="Write isUpsertDefaultRowMarker into _metadata.json."
    )
    drop_wait_seconds: float = Field(
        default=120,
        ge=0,
        description="How long a full_drop waits for Fabric to drop the table when Fabric's "
        "monitor (Files/Monitoring/tables.json) cannot be read; with the monitor, the drop "
        "waits until the table has left it.",
    )
    drop_timeout_seconds: float = Field(
        default=900,
        ge=0,
        description="How long a full_drop waits, at most, for the table to leave Fabric's "
        "monitor before it stops (the new table stays staged; the next run resumes).",
    )
    verify_seconds: float = Field(
        default=10,
        ge=0,
        description="After publishing, wait up to this long for Fabric's verdict on each table "
        "(Files/Monitoring/tables.json) and report it; a table Fabric failed fails the entity. "
        "0 skips the check.",
    )
    partner_name: str = Field(default="hygge", description="partnerName in _partnerEvents.json.")
    source_type: str = Field(default="hygge", description="sourceInfo.sourceType.")
    source_version: str | None = Field(default=None, description="sourceInfo.sourceVersion.")

    @field_validator("compression")
    @classmethod
    def _fabric_codec(cls, v: str) -> str:
        if v.lower() not in ("zstd", "snappy", "gzip", "none", "uncompressed"):
            msg = "Open Mirroring reads Parquet compressed with zstd, snappy or gzip, or none"
            raise ValueError(msg)
        return v

    # -- areas -------------------------------------------------------------------------------

    def _default_url(self) -> str | None:
        return self.endpoint

    def _container_name(self) -> str:
        return self.workspace

    def _root(self) -> str:
        return join(self.item, self.landing_zone)

    def state(self) -> BlobArea:
        return self.area(join(self.item, self.state_path))

    def state_area(self) -> BlobArea:
        return self.state()

    def table_folder(self, entity: str) -> str:
        """The table's folder relative to the landing zone."""
        return f"{self.table_schema}.schema/{entity}" if self.table_schema else entity

    def lock_id(self) -> str:
        return f"blob:{self.state().url()}"

    def exclusive(
        self, owner: str, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[None]:
        return lease_lock(self.state(), owner, wait_seconds, self.lease_seconds, on_wait)

    def describe(self, entity: str) -> str:
        return f"open mirroring {self.area().url()}/{self.table_folder(entity)}/"

    def has_data(self, entity: str) -> bool:
        try:
            names = self.area().names(self.table_folder(entity))
            return "_metadata.json" in names or bool(self.data_files(entity))
        except AzureError as exc:
            raise store_error(exc, "cannot list the landing zone", entity=entity) from exc

    # -- Fabric's verdict ---------------------------------------------------------------------

    def monitor(self) -> list[TableStatus] | None:
        """Fabric's monitor of the mirrored database's tables (None: absent or unreadable)."""
        area = self.area(self.item)
        try:
            return parse_tables(area.get_bytes(area.key(MONITOR)))
        except AzureError:
            return None

    def replicator(self) -> TableStatus | None:
        """The mirrored database's own status (`Files/Monitoring/replicator.json`)."""
        area = self.area(self.item)
        try:
            return parse_replicator(area.get_bytes(area.key(REPLICATOR)))
        except AzureError:
            return None

    def verdict_seconds(self) -> float:
        return self.verify_seconds

    def destination_verdict(self, entity: str) -> DestinationVerdict | None:
        tables = self.monitor()
        if tables is None:
            return None
        database = self.replicator()
        if database is not None and database.verdict in ("failed", "stopped"):
            # a stopped or failed replicator processes no table: say so, not "processing"
            return DestinationVerdict(
                database.verdict,
                f"mirrored database {database.describe()}",
                _instant(database.updated_at),
            )
        status = find(tables, entity, self.table_schema)
        if status is None:
            return DestinationVerdict("processing", "not yet in Fabric's monitor")
        return DestinationVerdict(status.verdict, status.describe(), _instant(status.updated_at))

    # -- the landing zone's rules ------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"keyColumns": list(self.key_columns or [])}
        if self.upsert_default_row_marker:
            meta["isUpsertDefaultRowMarker"] = True
        if self.file_detection != "sequential":
            meta["fileDetectionStrategy"] = STRATEGY[self.file_detection]
        return meta

    def merges_by(self, keys: list[str]) -> bool:
        # Fabric upserts by the table's key columns when the files carry upsert markers
        return bool(keys) and self.row_marker == "upsert" and list(self.key_columns or []) == keys

    def deletes_refusal(self, keys: list[str], soft: bool = False) -> str | None:
        if soft:
            return (
                "Fabric replaces a whole row on an upsert, so a soft delete would blank the "
                "row's other columns; use `deletes: detect` (rows are deleted), or keep a "
                "deleted flag at the source and send it as `delete_column`"
            )
        if self.key_columns:
            return None  # deletes go as `__rowMarker__` 2 rows of the key columns
        return "Open Mirroring deletes by the table's key columns: set `key_columns: [...]`"

    def check_keys(self, entity: str, mode: WriteMode = "append") -> None:
        """Key columns are required, and can never change for an existing table.

        A replace drops the table, so it may bring new key columns.
        """
        if not self.key_columns:
            msg = (
                "Open Mirroring needs the table's key columns: set `key_columns: [...]` on the "
                "entity (they go into _metadata.json and cannot change later)"
            )
            raise ConfigError(msg, entity=entity)
        if mode == "replace":
            return
        area = self.area()
        current = area.get_json(area.key(self.table_folder(entity), "_metadata.json"))
        if current is not None and current.get("keyColumns") != list(self.key_columns):
            msg = (
                f"the landing zone's table has keyColumns {current.get('keyColumns')} but the "
                f"spec says {list(self.key_columns)}; Fabric cannot change key columns of an "
                "existing table: restore `key_columns`, or run --full-drop to recreate the table"
            )
            raise StoreError(msg, entity=entity)
        strategy = (current or {}).get("fileDetectionStrategy", STRATEGY["sequential"])
        if current is not None and strategy != STRATEGY[self.file_detection]:
            msg = (
                f"the landing zone's table is read with {strategy}, but the spec says "
                f"`file_detection: {self.file_detection}`; a table keeps how Fabric finds its "
                "files: restore `file_detection`, or run --full-drop to recreate the table"
            )
            raise StoreError(msg, entity=entity)

    def ensure_metadata(self, entity: str) -> None:
        area = self.area()
        key = area.key(self.table_folder(entity), "_metadata.json")
        if area.get_json(key) != self.metadata():
            area.put(key, json.dumps(self.metadata()).encode())

    def ensure_partner_events(self) -> None:
        """`_partnerEvents.json` at the landing zone's top, written once."""
        area = self.area()
        info: dict[str, Any] = {"sourceType": self.source_type}
        if self.source_version:
            info["sourceVersion"] = self.source_version
        body = {"partnerName": self.partner_name, "sourceInfo": info}
        with contextlib.suppress(ResourceExistsError):
            area.put(area.key("_partnerEvents.json"), json.dumps(body).encode(), overwrite=False)

    # -- writing -----------------------------------------------------------------------------

    def open_writer(self, entity: str, run_id: str, mode: WriteMode) -> MirroringWriter:
        try:
            self.check_keys(entity, mode)
            self.ensure_partner_events()
            return MirroringWriter(self, entity, run_id, mode)
        except AzureError as exc:
            raise store_error(exc, "cannot open the landing zone", entity=entity) from exc

    # -- the protocol's primitives -------------------------------------------------------------

    def manifest_key(self, entity: str, run_id: str) -> str:
        # by table folder, not entity name: two specs may mirror `customers` into two schemas
        return self.state().key("_manifests", self.table_folder(entity), f"{run_id}.json")

    def manifest_ids(self, entity: str) -> list[str]:
        names = self.state().names("_manifests", self.table_folder(entity))
        # a name with `/` is another table's folder nested below this one
        return [n.removesuffix(".json") for n in names if "/" not in n and n.endswith(".json")]

    def save_manifest(self, manifest: Manifest) -> None:
        self.state().put(
            self.manifest_key(manifest.entity, manifest.run_id), manifest.to_json().encode()
        )

    def load_manifest(self, entity: str, run_id: str) -> Manifest | None:
        raw = self.state().get_bytes(self.manifest_key(entity, run_id))
        return None if raw is None else Manifest.from_json(raw.decode())

    def delete_manifest(self, entity: str, run_id: str) -> None:
        self.state().delete(self.manifest_key(entity, run_id))

    def staged_complete(self, manifest: Manifest) -> bool:
        if manifest.mode == "replace":
            return False  # nothing was dropped yet: the old table stands; forget the staged copy
        area = self.area()
        sent = self.sent(manifest)  # committed (and possibly consumed by Fabric since)
        for name in manifest.files:
            if name in sent:
                continue
            wanted = set(block_ids(manifest.run_id, name, manifest.extra["blocks"][name]))
            if not wanted <= area.staged_ids(self.data_key(manifest.entity, name)):
                return False
        return True

    def unpublished(self, manifest: Manifest) -> list[str]:
        """A file that was committed (Fabric may since have consumed and removed it) is never
        written again."""
        sent = self.sent(manifest)
        return [n for n in manifest.files if n not in sent]

    def before_publish(self, manifest: Manifest) -> None:
        if manifest.mode == "append":
            self.ensure_metadata(manifest.entity)
            if self.unpublished(manifest):
                self.await_rebuilt(manifest.entity)
                self.after_newest(manifest.entity)

    def publish_file(self, manifest: Manifest, name: str) -> None:
        blocks = block_ids(manifest.run_id, name, manifest.extra["blocks"][name])
        self.area().commit(self.data_key(manifest.entity, name), blocks)
        self.record_sent(manifest, name)

    def replace_table(self, manifest: Manifest) -> bool:
        self.drop_table(manifest)
        return False  # Fabric needs time to drop the table: `finish` publishes the new one

    def after_publish(self, manifest: Manifest) -> None:
        state = self.state()
        for key in manifest.extra.get("staged", []):
            state.delete(key)

    def unpublish(self, manifest: Manifest) -> None:
        area, state = self.area(), self.state()
        if manifest.mode == "append":
            for name in manifest.files:
                area.delete(area.key(self.table_folder(manifest.entity), name))
        for key in manifest.extra.get("staged", []):
            state.delete(key)

    def clean_staging(self, entity: str, live: set[str]) -> None:
        if not live:
            # leftovers of runs that never prepared
            self.state().delete_folder("_staging", self.table_folder(entity))

    def abort_prepared(self, manifest: Manifest) -> None:
        try:
            if manifest.mode != "append" or not self.sent(manifest):
                self.roll_back(manifest)  # nothing of it is visible: undo, retry cleanly
                return
        except AzureError:
            return
        # some files are visible to Fabric (it may have read them): never take them back, and
        # never let a retry reuse their numbers. Finish publishing now if the service lets us,
        # else the next run's recovery does; either way that run commits the watermark.
        with contextlib.suppress(AzureError, StoreError):
            self.publish(manifest)
        msg = (
            "publishing stopped after some of this run's files became visible to Fabric; they "
            "are kept (never rewritten or renumbered) and the next run finishes and commits "
            "them, so this entity is not retried now"
        )
        raise StoreError(msg, entity=manifest.entity)

    # -- reading back ------------------------------------------------------------------------

    def read_table(self, entity: str) -> Iterator[pa.RecordBatch]:
        msg = (
            "a landing zone holds changes, not a table (Fabric may have consumed earlier files), "
            "so it cannot be read back to rewrite it; run --full-drop to reload the entity"
        )
        raise StoreError(msg, entity=entity)


def _instant(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

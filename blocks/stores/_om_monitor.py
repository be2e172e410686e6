"""Fabric's verdict on a mirrored database's tables, read from its monitoring files.

Fabric writes `<item>/Files/Monitoring/tables.json` (per table: status, error code and message,
processed rows, when it last processed) and `replicator.json` (the database as a whole) into
the mirrored database; `getTablesMirroringStatus` is the REST equivalent. The files' shape is
not published as a schema, so they are read leniently: a list of table entries at the top, or
under `tables`, `value` or `data`; a table named by `tableName`/`sourceTableName`/`name`, its
schema by `schemaName`/`sourceSchemaName`; the processed rows and the last update time either
on the entry or under its `metrics`. What cannot be read is "unknown", never an error: the
monitor is advice about the landing zone, which stays the record of what was sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["ok", "warning", "failed", "processing", "stopped", "unknown"]

MONITOR = "Files/Monitoring/tables.json"
REPLICATOR = "Files/Monitoring/replicator.json"

#: Fabric's status words (the UI's and the REST API's), by what they mean for a run
_VERDICTS: dict[str, Verdict] = {
    "running": "ok",
    "replicating": "ok",
    "runningwithwarning": "warning",
    "runningwithwarnings": "warning",
    "warning": "warning",
    "error": "failed",
    "failed": "failed",
    "notsupported": "failed",
    "notstarted": "processing",
    "initializing": "processing",
    "initialized": "processing",
    "snapshotting": "processing",
    "reseeding": "processing",
    "processing": "processing",
    "stopping": "stopped",
    "stopped": "stopped",
}


@dataclass(frozen=True)
class TableStatus:
    """One table as Fabric's monitor reports it."""

    table: str
    schema: str | None
    status: str
    error_code: str | None = None
    error_message: str | None = None
    processed_rows: int | None = None
    updated_at: str | None = None

    @property
    def verdict(self) -> Verdict:
        return _VERDICTS.get(self.status.replace(" ", "").replace("_", "").lower(), "unknown")

    def describe(self) -> str:
        """One line: the status, Fabric's error if any, the rows it processed."""
        text = self.status
        if self.error_code or self.error_message:
            text += f": {self.error_code or 'error'}"
            if self.error_message:
                text += f" {self.error_message}"
        if self.processed_rows is not None:
            text += f" ({self.processed_rows:,} rows processed)"
        return text


def parse_tables(raw: bytes | None) -> list[TableStatus] | None:
    """The monitor's table entries; None when there is no monitor or it cannot be read."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    entries = doc if isinstance(doc, list) else _first(doc, "tables", "value", "data")
    if not isinstance(entries, list):
        return None
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = _first(entry, "tableName", "sourceTableName", "name", "table")
        if not isinstance(name, str):
            continue
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
        rows = _first(entry, "processedRows", "rowsReplicated")
        if rows is None:
            rows = _first(metrics, "processedRows", "rowsReplicated")
        updated = _first(entry, "lastUpdateTime", "lastSyncDateTime", "lastUpdated")
        if updated is None:
            updated = _first(metrics, "lastSyncDateTime", "lastUpdateTime")
        out.append(
            TableStatus(
                table=name,
                schema=_text(_first(entry, "schemaName", "sourceSchemaName", "schema")),
                status=_text(entry.get("status")) or "unknown",
                error_code=_text(_first(entry, "errorCode", "error_code")),
                error_message=_text(_first(entry, "errorMessage", "error_message")),
                processed_rows=int(rows) if isinstance(rows, (int, float)) else None,
                updated_at=_text(updated),
            )
        )
    return out


def parse_replicator(raw: bytes | None) -> TableStatus | None:
    """The mirrored database's own status (`replicator.json`); None when absent or unreadable.
    Read as leniently as the tables: a status (`status` or `state`), an error code and message,
    at the top or under `replicator`."""
    try:
        doc = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("replicator"), dict):
        doc = doc["replicator"]
    status = _text(_first(doc, "status", "state", "replicatorStatus"))
    if status is None:
        return None
    return TableStatus(
        table="(mirrored database)",
        schema=None,
        status=status,
        error_code=_text(_first(doc, "errorCode", "error_code")),
        error_message=_text(_first(doc, "errorMessage", "error_message")),
        updated_at=_text(_first(doc, "lastUpdateTime", "lastUpdated")),
    )


def find(tables: list[TableStatus], table: str, schema: str | None) -> TableStatus | None:
    """The entry of one landing-zone table (names compare as Fabric does: case-insensitive)."""
    for status in tables:
        same_schema = (status.schema or "dbo").lower() == (schema or "dbo").lower()
        if status.table.lower() == table.lower() and (same_schema or status.schema is None):
            return status
    return None


def _first(mapping: Any, *names: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    for name in names:
        if mapping.get(name) is not None:
            return mapping[name]
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)

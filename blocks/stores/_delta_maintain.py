"""Opt-in upkeep of a Delta table: compaction of small files and `vacuum` of expired ones.

Frequent incremental runs leave many small files. `compact` rewrites them into fewer, larger
ones (of about the Store's `max_rows_per_file` rows) in one OPTIMIZE commit (`dataChange:
false`): the rows and every earlier version stay as they were, and a reader of any version
keeps its files, since nothing is deleted. `vacuum` deletes the files that versions older than
the retention still name (delta-rs's "lite" mode: only files a commit removed, never a file no
commit names, such as a run's files placed in the table's folder for a commit still to come).
After it, time travel to those versions fails.

The retention is never shorter than delta-rs's default of 7 days (`DEFAULT_RETENTION_HOURS`,
the table's `delta.deletedFileRetentionDuration`) unless the caller says so explicitly with
`allow_short_retention`: a reader that started on an older version, or a run recorded in the
ledger but not yet in a reader's cache, could otherwise lose files under its feet.

The Store calls both while holding its lock (`exclusive`), so no hygge run commits meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import DeltaError

from hygge_core.errors import ConfigError

#: delta-rs's default retention of removed files, and the shortest hygge uses unasked
DEFAULT_RETENTION_HOURS = 7 * 24

logger = logging.getLogger(__name__)


@dataclass
class Upkeep:
    """What maintaining one table did (or, in a dry run, would do)."""

    entity: str
    files_before: int
    files_after: int
    rows: int
    compacted: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    retention_hours: int | None = None
    dry_run: bool = False

    def describe(self) -> str:
        head = f"{self.entity}: {self.files_after} files, {self.rows:,} rows"
        if self.compacted:
            head = (
                f"{self.entity}: compacted {self.compacted.get('numFilesRemoved', 0)} files into "
                f"{self.compacted.get('numFilesAdded', 0)} ({self.files_before} -> "
                f"{self.files_after} files, {self.rows:,} rows, unchanged)"
            )
        lines = [head]
        if self.retention_hours is not None:
            verb = "would remove" if self.dry_run else "removed"
            lines.append(
                f"  vacuum {verb} {len(self.removed)} expired files "
                f"(retention {self.retention_hours} h)"
            )
            if self.dry_run:
                lines.extend(f"    {name}" for name in self.removed)
        return "\n".join(lines)


def check_retention(hours: int | None, allow_short: bool, entity: str | None = None) -> int:
    """The retention to use, or a ConfigError when it is short and not explicitly allowed."""
    hours = DEFAULT_RETENTION_HOURS if hours is None else hours
    if hours < 0:
        msg = f"a vacuum retention of {hours} h is negative; give hours of 0 or more"
        raise ConfigError(msg, entity=entity)
    if hours < DEFAULT_RETENTION_HOURS and not allow_short:
        msg = (
            f"a vacuum retention of {hours} h is shorter than Delta's default of "
            f"{DEFAULT_RETENTION_HOURS} h (7 days): readers of older versions and time travel "
            "to them would lose their files; pass --allow-short-retention to do it anyway"
        )
        raise ConfigError(msg, entity=entity)
    return hours


def maintain(
    uri: str,
    options: dict[str, str] | None,
    entity: str,
    *,
    compact: bool,
    vacuum: bool,
    retention_hours: int | None = None,
    allow_short_retention: bool = False,
    dry_run: bool = False,
    writer: WriterProperties | None = None,
    target_rows: int | None = None,
) -> Upkeep:
    """Compact and/or vacuum one table; the caller holds the Store's lock."""
    hours = check_retention(retention_hours, allow_short_retention, entity) if vacuum else None
    table = DeltaTable(uri, storage_options=options)
    before = _files(table)
    upkeep = Upkeep(entity, before[0], before[0], before[1], dry_run=dry_run)
    if compact and not dry_run:
        size = _target_size(table, target_rows)
        upkeep.compacted = table.optimize.compact(target_size=size, writer_properties=writer)
        table = DeltaTable(uri, storage_options=options)
    if hours is not None:
        upkeep.retention_hours = hours
        upkeep.removed = sorted(
            table.vacuum(
                retention_hours=hours,
                dry_run=dry_run,
                # delta-rs refuses a retention below the table's unless told: hygge tells it
                # only when the caller allowed a short one
                enforce_retention_duration=not allow_short_retention,
            )
        )
    upkeep.files_after, upkeep.rows = _files(table)
    return upkeep


def _files(table: DeltaTable) -> tuple[int, int]:
    """The current version's data files and rows, from the log alone."""
    files = pa.table(table.get_add_actions(flatten=True))
    if not files.num_rows:
        return 0, 0
    return files.num_rows, int(pa.compute.sum(files.column("num_records")).as_py() or 0)


def _target_size(table: DeltaTable, rows: int | None) -> int | None:
    """Bytes of a compacted file of about `rows` rows (the Store's file size, so a compacted
    table merges within the same memory); None for delta-rs's default (100 MB)."""
    files = pa.table(table.get_add_actions(flatten=True))
    if rows is None or not files.num_rows:
        return None
    total = int(pa.compute.sum(files.column("num_records")).as_py() or 0)
    size = int(pa.compute.sum(files.column("size_bytes")).as_py() or 0)
    return max(1 << 20, size * rows // total) if total else None


def compact_after_run(
    uri: str,
    options: dict[str, str] | None,
    entity: str,
    txn: int,
    every: int,
    writer: WriterProperties | None,
    target_rows: int | None,
) -> dict[str, Any] | None:
    """After a run's commit (the run holds the Store's lock): compact when the run's
    transaction number is a multiple of `every`. The run is committed whatever happens here,
    so a failure is logged and left to the next such run, never raised."""
    if every < 1 or txn % every:
        return None
    try:
        table = DeltaTable(uri, storage_options=options)
        size = _target_size(table, target_rows)
        metrics: dict[str, Any] = table.optimize.compact(target_size=size, writer_properties=writer)
    except (DeltaError, OSError) as exc:
        logger.warning(
            "%s: compaction after run %s failed (%s); the run is committed", entity, txn, exc
        )
        return None
    return metrics

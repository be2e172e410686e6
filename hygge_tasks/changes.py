"""A source's own change tracking as a run's upserts and deletes (`changes: change_tracking`).

The Home reads (`HomeBlock.read_changes`, SQL Server's `blocks.homes._mssql_ct`): the whole
table the first time, or after the changes since the stored version were cleaned up, and
otherwise the changes since that version, one row per changed key with its operation:

- `I` and `U` rows carry the row's current values and go to the Store's write, which upserts
  by `keys` (Delta merges, Open Mirroring marks them as its upsert does, the Parquet Store's
  `current_view` keeps the latest version of a key);
- `D` rows carry only the keys and go to the Store's delete by key (`EntityWriter.delete`,
  the path `deletes: detect` uses): published in the same step as the run's rows.

The version the read saw travels in the run's ledger entry (`LedgerEntry.changes`) inside the
Store's manifest, and the parent flow commits it after the data, as it does a watermark: a
kill before the commit leaves the old version, and the rerun reads the same changes again
(upserts and deletes by key repeat harmlessly); a kill after publishing is finished by
recovery, which takes the version from the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from blocks.base import CHANGE_OPERATION, EntityWriter, HomeBlock, WriteMode
from hygge_core.errors import HomeError
from hygge_tasks.entity import EntityPlan

KIND = "change_tracking"
_OPERATIONS = pa.array(["I", "U", "D"])


def split_changes(
    batch: pa.RecordBatch, keys: list[str], entity: str
) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """A batch of changes (operation first) as the rows to upsert and the keys to delete."""
    op = batch.column(CHANGE_OPERATION)
    if not pc.all(pc.is_in(op, value_set=_OPERATIONS)).as_py() and batch.num_rows:
        odd = sorted({v for v in op.to_pylist() if v not in ("I", "U", "D")}, key=str)
        msg = f"the change read returned operation(s) {odd}, not I, U or D; report it"
        raise HomeError(msg, entity=entity)
    rows = batch.select([n for n in batch.schema.names if n != CHANGE_OPERATION])
    deleted = pc.equal(op, "D")
    return rows.filter(pc.invert(deleted)), rows.select(keys).filter(deleted)


def stored_version(changes: dict[str, Any] | None) -> int | None:
    """The version a ledger entry's `changes` holds (None: no change read committed yet)."""
    if not changes or changes.get("kind") != KIND:
        return None
    version = changes.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class ChangeFeed:
    """One run attempt of a change-tracking entity: the Home's read, split as it streams."""

    def __init__(self, plan: EntityPlan, home: HomeBlock) -> None:
        self.entity = plan.name
        self.keys = plan.watermark_keys
        self.last = plan.previous_version if plan.mode == "append" else None
        self.read = home.read_changes(plan.request, self.keys, self.last)
        self.deleted = 0
        self._pending: list[pa.RecordBatch] = []

    @property
    def mode(self) -> WriteMode:
        """A full read replaces the table; changes are applied to it."""
        return "replace" if self.read.full else "append"

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows to write; the keys to delete wait for `flush`, after the last row (a
        Store stages its deletes after its rows). They are held as Arrow key columns: a key
        of 8 bytes takes 8 bytes, 80 MB for 10M deleted rows."""
        for batch in self.read.batches:
            if self.read.full:
                yield batch
                continue
            rows, gone = split_changes(batch, self.keys, self.entity)
            if gone.num_rows:
                self._pending.append(gone)
            yield rows

    def flush(self, writer: EntityWriter, names: list[str]) -> None:
        """Stage the deletes read (key columns renamed to the Store's `names`)."""
        for keys in self._pending:
            writer.delete(keys.rename_columns(names) if names != self.keys else keys)
            self.deleted += keys.num_rows
        self._pending.clear()

    def ledger(self) -> dict[str, Any]:
        """The version the data reaches, for the run's ledger entry."""
        return {"kind": KIND, "version": self.read.version}

    def note(self, rows: int) -> str:
        """What the run read, for its log, summary and journal."""
        if self.read.full:
            return f"{self.read.reason} ({rows:,} rows) at version {self.read.version}"
        return (
            f"{self.read.reason}: {rows:,} upserted, {self.deleted:,} deleted, now at version "
            f"{self.read.version}"
        )

"""Deletes by key-set reconciliation: rows gone from the source leave the destination too.

A watermark sees inserts and updates, never deletes. With `deletes: detect` an incremental
run, once its changes are staged, reads the source's key columns (one narrow read of the
whole source, streamed) and compares them with the keys the destination holds, which the
Store keeps in its state area and the ledger points at (`keyset`, written by the last
committed run). Keys gone from the source are staged as deletes through the Store's writer,
so they are published in the same step as the run's changes, and committed with them:

- the run deletes the keys held or written that the source no longer has, and records those
  it still has as the destination's new key set (`hygge_tasks.keyset`), the run's state
  object: a row written by this run and deleted at the source since goes too. A kill anywhere
  before the ledger moves leaves the ledger pointing at the old set, so the rerun compares
  again and deletes the same keys;
- a full load (first run, --full-drop) reads no keys and deletes nothing: it replaces the
  table and records the keys it wrote, from which the next run compares;
- the first incremental run after `deletes:` is switched on has no key set to compare with:
  it records the source's keys and says so; rows deleted before it are not found (a
  --full-drop rebuilds the table exactly).

A broken query or a source table emptied by mistake must never empty the destination: when
the source returns no keys, or fewer than `min_fraction` of the keys the destination holds,
nothing is deleted or published and the entity fails, naming both counts.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from blocks.base import EntityWriter, HomeBlock, ReadRequest, StoreBlock, WriteMode
from hygge_core import faults
from hygge_core.arrow_types import unview
from hygge_core.errors import HomeError
from hygge_tasks.keyset import KeyCollector, diff_keys
from hygge_tasks.keyset_store import fetch_keyset, store_keyset

#: rows per batch of the key read: key columns are narrow
_KEY_BATCH = 500_000
#: the soft-delete column's type
_SOFT_TYPE = pa.timestamp("us", "UTC")


class DeletesSpec(BaseModel):
    """How rows deleted at the source reach the destination (key-set reconciliation)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    mode: Literal["detect", "soft"] = Field(
        default="detect",
        description="`detect`: after each incremental run's changes, read the source's keys "
        "and delete at the destination the keys the source no longer has; `soft`: keep "
        "those rows and set `column` to when the source lost them.",
    )
    column: str = Field(
        default="_deleted_at",
        min_length=1,
        description="With `mode: soft`: the UTC timestamp column every row carries, NULL "
        "while the source has the row, set when it no longer does.",
    )
    min_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Delete nothing, and fail the entity, when the source returns fewer keys "
        "than this fraction of the keys the destination holds: a broken query or an emptied "
        "source table must never empty the destination.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"mode": data} if isinstance(data, str) else data


@dataclass
class Reconciled:
    """What a run's reconciliation did: the rows it deleted and the key set it recorded."""

    deleted: int
    keyset: dict[str, Any]
    note: str | None = None


class DeleteDetector:
    """One entity's key-set reconciliation for one run attempt."""

    def __init__(
        self,
        entity: str,
        spec: DeletesSpec,
        keys: list[str],
        previous: dict[str, Any] | None,
        run_id: str,
        at: dt.datetime | None = None,
    ) -> None:
        self.entity = entity
        #: when this run found the deletes (`soft`: the value of `spec.column`)
        self.at = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        self.soft = spec.column if spec.mode == "soft" else None
        self.spec = spec
        self.keys = keys
        self.previous = previous
        self.run_id = run_id
        self._dir = tempfile.TemporaryDirectory(prefix="hygge-keys-")
        self.workdir = Path(self._dir.name)
        self.written = KeyCollector(keys, self.workdir / "written", entity=entity)

    def observe(self, batch: pa.RecordBatch) -> None:
        """Take the keys of a batch the run writes (named as the source names them)."""
        if batch.num_rows:
            self.written.add(batch)

    def mark(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A written batch with the soft-delete column, NULL (the source has these rows)."""
        if self.soft is None:
            return batch
        if self.soft in batch.schema.names:
            msg = (
                f"the rows already have a column {self.soft!r}, which `deletes: soft` adds; "
                "name another with `deletes: {mode: soft, column: ...}`"
            )
            raise HomeError(msg, entity=self.entity)
        return batch.append_column(
            pa.field(self.soft, _SOFT_TYPE), pa.nulls(batch.num_rows, _SOFT_TYPE)
        )

    def reconcile(
        self,
        home: HomeBlock,
        request: ReadRequest,
        store: StoreBlock,
        writer: EntityWriter,
        run_mode: WriteMode,
        mode: WriteMode,
        names: list[str],
    ) -> Reconciled:
        """Compare the source's keys with the destination's; stage the deletes through
        `writer` (key columns renamed to `names`, as the Store's table names them).

        `run_mode` is what the run was planned as, `mode` what the writer does (a drift
        rewrite turns an append into a replace that carries the published rows over).
        """
        held = None
        if run_mode == "append" and self.previous is not None:
            held = fetch_keyset(store, self.entity, self.previous, self.workdir)
        work = self.workdir / "diff"
        if mode == "replace":
            # the table becomes what this run wrote (and what it carried over, which is the
            # held set): nothing to delete; the next run compares with this set
            source = _batches_of(held) if held is not None else iter(())
            done = diff_keys(
                self.keys, source, self.written, None, work / "union", entity=self.entity
            )
            return Reconciled(0, store_keyset(store, self.entity, self.run_id, done.path))
        source = home.read(_key_request(request, self.keys))
        if held is None:
            # no set to compare with: start from the source's keys and what this run wrote
            first = diff_keys(
                self.keys, source, self.written, None, work / "first", entity=self.entity
            )
            note = (
                f"deletes: detect starts here: recorded the source's {first.source_count:,} "
                "keys; rows deleted before this run are not found (--full-drop rebuilds the "
                "table exactly)"
            )
            return Reconciled(0, store_keyset(store, self.entity, self.run_id, first.path), note)
        # the destination holds what it held and what this run wrote: keep those the source
        # has, delete the others (a row written here and deleted since goes too)
        union = diff_keys(
            self.keys, _batches_of(held), self.written, None, work / "union", entity=self.entity
        )
        diff = diff_keys(self.keys, source, None, union.path, work / "diff", entity=self.entity)
        self._guard(diff.source_count, union.count)
        deleted = 0
        for batch in diff.deleted_batches():
            batch = unview(batch)
            if names != self.keys:
                batch = batch.rename_columns(names)
            if self.soft is None:
                writer.delete(batch)
            else:
                when = pa.repeat(pa.scalar(self.at, _SOFT_TYPE), batch.num_rows)
                writer.soft_delete(batch.append_column(self.soft, when), self.soft)
            deleted += batch.num_rows
        if deleted:
            faults.point("deletes.after_stage")
        return Reconciled(deleted, store_keyset(store, self.entity, self.run_id, diff.path))

    def close(self) -> None:
        self._dir.cleanup()

    def _guard(self, found: int, held: int) -> None:
        floor = self.spec.min_fraction
        if found and found >= floor * held:
            return
        msg = (
            f"the source returned {found:,} keys, fewer than {floor:.0%} of the {held:,} the "
            "destination holds; to keep a broken query or an emptied table from emptying the "
            "destination, nothing was deleted or published and the watermark did not move. "
            "Check the source (its `where`, its permissions, a truncated table); if it really "
            "lost those rows, lower `deletes.min_fraction` or run the entity with --full-drop"
        )
        raise HomeError(msg, entity=self.entity)


def _batches_of(path: Path) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path) as f:
        yield from f.iter_batches(batch_size=_KEY_BATCH)


def _key_request(request: ReadRequest, keys: list[str]) -> ReadRequest:
    """The entity's whole source (its `where` too), its key columns only, no lower bound."""
    return replace(request, columns=list(keys), since=None, batch_size=_KEY_BATCH)

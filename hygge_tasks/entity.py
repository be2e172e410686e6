"""What the parent flow and the entity task exchange: the plan in, the result out (no data).

The flow decides each entity's `EntityPlan` before it starts (`flows.plan`); the task
(`hygge_tasks.move`) returns an `EntityResult`: counts, notes and the ledger entry to commit.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from blocks.base import ReadRequest, WriteMode
from hygge_core.ledger_entry import LedgerEntry
from hygge_tasks.drift import DriftPolicy
from hygge_tasks.polish import PolishSpec


@dataclass(frozen=True)
class EntityPlan:
    """Everything one entity's move needs, decided by the parent flow before it starts."""

    name: str
    request: ReadRequest
    mode: WriteMode
    #: the watermark's name in the ledger: its column, or `COALESCE(a, b)` of `watermark_columns`
    watermark_column: str | None = None
    watermark_columns: list[str] = field(default_factory=list)
    watermark_keys: list[str] = field(default_factory=list)
    #: what an incremental run does with NULL-watermark rows (`flows.spec.WatermarkSpec.nulls`)
    watermark_nulls: str = "fail"
    #: re-read this far before the last watermark (`flows.spec.WatermarkSpec.lag`)
    watermark_lag: str | int | float | None = None
    previous: dict[str, Any] | None = None
    reason: str = ""
    polish: PolishSpec | None = None
    #: the load timestamp the polisher writes: one value for every entity of a flow run
    loaded_at: dt.datetime | None = None
    #: what the run asked for (`incremental` or `full_drop`); `mode` is what it got
    run_type: str = "incremental"
    on_drift: DriftPolicy = "fail"
    #: the schema the ledger remembers from the last committed run (`hygge_tasks.drift`)
    previous_schema: dict[str, Any] | None = None
    #: the table is rebuilt from scratch: it takes the source's schema, whatever changed
    schema_reset: bool = False
    #: which source and destination the ledger entry belongs to (`flows.plan.identity`)
    identity: dict[str, str] | None = None
    #: a replace may empty a published table (else a source with no rows fails the entity)
    allow_empty: bool = False
    #: delete at the destination the keys the source no longer has (`flows.spec.DeletesSpec`)
    deletes: Any = None
    #: the ledger's reference to the key set the destination holds (`hygge_tasks.keyset_store`)
    previous_keyset: dict[str, Any] | None = None
    #: `always`: re-encode even files a Store could take as they are (`reencode:`)
    reencode: str = "auto"
    #: `incremental: files`: read only the files no run has loaded (`hygge_tasks.new_files`)
    new_files: bool = False
    changed_files: str = "fail"
    #: the ledger's record of the files loaded so far
    previous_files: dict[str, Any] | None = None
    #: `change_tracking`: read the source's changes (`hygge_tasks.changes`); the keys are
    #: `watermark_keys`
    changes: str | None = None
    #: the change-tracking version the last committed run reached
    previous_version: int | None = None


@dataclass
class EntityResult:
    """What a move reports back: counts and the ledger entry to commit. No data."""

    entity: str
    run_id: str
    mode: WriteMode
    rows: int
    bytes: int
    seconds: float
    files: list[str]
    null_watermark_rows: int = 0
    ledger_entry: LedgerEntry | None = None
    changed: bool = True
    #: the watermark after this run (unchanged when nothing new arrived), for reports
    watermark: dict[str, Any] | None = None
    #: host:pid of the process that moved it (threads share the flow's; Dask workers differ)
    ran_on: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    #: which attempt of the task produced this result (1 unless it was retried)
    attempts: int = 1
    #: what schema drift handling did, if anything (`hygge_tasks.drift`)
    schema_change: str | None = None
    #: set when the Store must wait before publishing (UTC ISO time): the flow then runs
    #: `finish_entity` after it, without holding a concurrency slot meanwhile
    ready_at: str | None = None
    #: rows read into the Store's writer, and the rows its staged files hold (reconciled
    #: before publishing; None when the writer cannot count its files)
    rows_read: int = 0
    rows_published: int | None = None
    #: rows deleted at the destination because the source no longer has them (`deletes:`)
    deleted: int = 0
    #: source files the Store took byte for byte, without decoding (`reencode: auto`)
    copied_files: int = 0
    #: what the Home reported leaving out of the rows (`HomeBlock.read`), for the summary
    home_note: str | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

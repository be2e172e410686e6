"""The parent flow's ledger writes: finishing interrupted runs, and committing finished entities.

The parent is the ledger's only writer (`blocks.ledger`). Before a run moves anything,
`recover` commits what an interrupted run published but did not commit. As entities finish,
`Commits` saves their entries in one ledger save per batch, marks their manifests committed,
journals each entity and records the assets, and keeps each entity's summary row.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from blocks import WatermarkLedger
from flows import assets, interrupts
from flows.assets import Committed
from flows.journal import Journal
from flows.plan import EntityBlocks, EntityJob
from flows.spec import FlowSpec
from flows.summary import SummaryRow
from hygge_core import faults, stop
from hygge_core.ledger_entry import LedgerEntry
from hygge_tasks.entity import EntityResult

#: entities that finish within this window share one ledger save (each save is several API
#: calls and grows with the ledger: one per entity made 200 small entities take 90 s); a save
#: that took longer widens the window to its own length, so saving never takes more than
#: about half the run
LEDGER_BATCH_SECONDS = 1.0
#: how often the flow looks whether a save running in the background has finished
SAVE_POLL_SECONDS = 0.2


def recover(
    entities: list[EntityBlocks], ledger: WatermarkLedger, spec: FlowSpec, logger: Any
) -> None:
    """Finish or undo what an interrupted run left, before anything new is planned."""
    recovered: list[Committed] = []
    for e in entities:
        for manifest in e.store.recover(e.name):
            logger.warning(
                "%s: run %s published data but did not commit its watermark; committing it now",
                e.name,
                manifest.run_id,
            )
            # the manifest keeps the entry as JSON (`hygge_core.manifest`)
            raw = manifest.ledger_entry
            entry = None if raw is None else LedgerEntry.from_json(raw, e.name)
            ledger.commit(spec.ledger_name, e.name, entry)
            e.store.mark_committed(e.name, manifest.run_id)
            recovered.append(
                Committed(
                    e.name,
                    e.store,
                    manifest.run_id,
                    manifest.mode,
                    manifest.rows,
                    manifest.bytes,
                    len(manifest.files),
                    entry.watermark if entry else None,
                )
            )
    if recovered:
        assets.record(spec.name, recovered, logger)


#: one ledger save in the background: the entities it commits, and (when done) its seconds
Batch = list[tuple[EntityJob, EntityResult, dict[str, Any] | None]]


class Commits:
    """Each entity's outcome as it comes back: committed in batches, journalled, summarised.

    The ledger is saved on a thread of its own, one save at a time, while the flow goes on
    handing entities to workers (a save of a large ledger takes a second or more); what a save
    commits is marked, journalled and summarised by the flow once the save has returned.
    `started` is when each entity was handed to a worker (the scheduler's), for the journal.
    """

    def __init__(
        self,
        spec: FlowSpec,
        ledger: WatermarkLedger,
        journal: Journal,
        started: dict[str, dt.datetime],
        logger: Any,
    ) -> None:
        self.spec = spec
        self.ledger = ledger
        self.journal = journal
        self.started = started
        self.logger = logger
        self.rows: dict[str, SummaryRow] = {}
        #: published, not yet in the ledger
        self.pending: Batch = []
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="hygge-ledger")
        self._saving: tuple[Future[float], Batch] | None = None
        self._next_save = 0.0  # time.monotonic()

    def before(self, entity: str) -> dict[str, Any] | None:
        """The entity's watermark in the ledger before this run commits it."""
        entry = self.ledger.entry(entity)
        return entry.watermark if entry else None

    def published(self, job: EntityJob, result: EntityResult, before: Any) -> None:
        """Published: the ledger follows with the next `flush` (a crash before it is finished
        by the next run's recovery)."""
        self.pending.append((job, result, before))
        interrupts.mark(job.plan.name, "published")

    def done(self, job: EntityJob, result: EntityResult, before: Any) -> None:
        """Report an entity that finished (committed, or with nothing new to commit)."""
        self.rows[job.plan.name] = SummaryRow.ok(result)
        interrupts.mark(job.plan.name, "committed")
        self.journal.ok(job.plan, job.store, result, before, self.started[job.plan.name])

    def failed(self, job: EntityJob, exc: Exception, before: Any) -> None:
        if stop.requested() and stop.is_interrupt(exc):
            # not a failure: the interrupted run's one line names it (`flows.interrupts`)
            signal = stop.signal_name(stop.requested())
            self.logger.info(
                "%s: stopped by %s; nothing of it was published", job.plan.name, signal
            )
        else:
            self.logger.error("%s: failed: %s", job.plan.name, exc)
            interrupts.mark(job.plan.name, "failed")
        self.rows[job.plan.name] = SummaryRow.failed(job.plan.name, job.plan.mode, exc)
        self.journal.failed(job.plan, job.store, exc, before, self.started[job.plan.name])

    def due(self) -> float | None:
        """Seconds until `flush` has something to do, or None when nothing is waiting."""
        if self._saving is not None:
            return SAVE_POLL_SECONDS
        if self.pending or self.journal.unwritten():
            return max(self._next_save - time.monotonic(), 0.0)
        return None

    def flush(self, final: bool = False) -> None:
        """Take a finished save's outcome; once the window allows, start the next save of the
        published entities and write the journal. `final`: all of it, and wait."""
        if final:
            self.journal.flush()  # what is known now, before waiting on the server
        collected = self._collect(wait=final)
        ready = final or time.monotonic() >= self._next_save
        if self.pending and self._saving is None and ready:
            batch, self.pending = self.pending, []
            entries = {j.plan.name: r.ledger_entry for j, r, _ in batch}
            # the flow's context (its Prefect settings and client) goes with the save
            run = contextvars.copy_context().run
            self._saving = (self._saver.submit(run, self._save, entries), batch)
            if final:
                collected = self._collect(wait=True)
        if collected or ready:
            if not collected and self.journal.unwritten():
                self._next_save = time.monotonic() + LEDGER_BATCH_SECONDS
            self.journal.flush()

    def close(self) -> None:
        """At the end, even after an error: write the journal, release the saver thread (a
        save still running finishes on its own)."""
        self.journal.flush()
        self._saver.shutdown(wait=False)

    def _save(self, entries: dict[str, Any]) -> float:
        started = time.monotonic()
        faults.point("flow.before_ledger")
        self.ledger.commit_many(self.spec.ledger_name, entries)
        return time.monotonic() - started

    def _collect(self, wait: bool) -> bool:
        """Mark, journal and summarise what the running save committed, once it returned."""
        if self._saving is None or not (wait or self._saving[0].done()):
            return False
        future, batch = self._saving
        self._saving = None
        try:
            seconds = future.result()
        except Exception as exc:
            self._next_save = time.monotonic() + LEDGER_BATCH_SECONDS
            for job, _, before in batch:
                self.failed(job, exc, before)
            return True
        self._next_save = time.monotonic() + max(LEDGER_BATCH_SECONDS, seconds)
        faults.point("flow.before_mark_committed")
        committed: list[Committed] = []
        for job, result, before in batch:
            try:
                job.store.mark_committed(job.plan.name, result.run_id)
            except Exception as exc:
                self.failed(job, exc, before)
                continue
            self.done(job, result, before)
            committed.append(
                Committed(
                    job.plan.name,
                    job.store,
                    result.run_id,
                    result.mode,
                    result.rows,
                    result.bytes,
                    len(result.files),
                    result.watermark,
                )
            )
        assets.record(self.spec.name, committed, self.logger)
        return True

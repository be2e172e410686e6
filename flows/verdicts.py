"""The destination's own verdict after a run: Fabric's mirroring monitor, per table.

A landing zone accepts any file; whether Fabric then replicated it is only known from its
monitor. Once every entity has committed, the flow asks each Store that has a verdict
(`StoreBlock.verdict_seconds` above 0) about its entities, and polls until each verdict is
settled (not processing, and newer than the run for a table the run changed) or the longest
`verify_seconds` is up. A table Fabric failed fails its entity with Fabric's message; the
watermark stays where the commit put it, since the data did reach the landing zone. A table
still processing is reported as such, never as a failure.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from blocks.base import DestinationVerdict
from flows.journal import Journal
from flows.plan import EntityJob
from flows.summary import SummaryRow

_POLL_SECONDS = 2.0


def await_verdicts(
    jobs: list[EntityJob],
    rows: dict[str, SummaryRow],
    since: dt.datetime,
    journal: Journal,
    logger: Any,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Put each committed entity's destination verdict into its summary row and record."""
    pending = {
        j.plan.name: j
        for j in jobs
        if rows[j.plan.name].status == "ok" and j.store.verdict_seconds() > 0
    }
    if not pending:
        return
    waits = [j.store.verdict_seconds() for j in pending.values()]
    deadline = time.monotonic() + max(waits)
    last: dict[str, DestinationVerdict | None] = {}
    while pending:
        for name, job in list(pending.items()):
            try:
                verdict = job.store.destination_verdict(name)
            except Exception as exc:  # advice about the destination: never fails the run
                verdict = DestinationVerdict("unknown", f"cannot read the monitor: {exc}")
            last[name] = verdict
            if verdict is None or _settled(verdict, rows[name].changed, since):
                del pending[name]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        sleep(min(_POLL_SECONDS, left))
    for name, verdict in last.items():
        job = next(j for j in jobs if j.plan.name == name)
        _apply(job, rows[name], verdict, name in pending, journal, logger)


def _settled(verdict: DestinationVerdict, changed: bool, since: dt.datetime) -> bool:
    if verdict.state == "processing":
        return False
    # a table the run changed: the verdict must be on this run's files, not an earlier state
    return not changed or verdict.updated_at is None or verdict.updated_at >= since


def _apply(
    job: EntityJob,
    row: SummaryRow,
    verdict: DestinationVerdict | None,
    waiting: bool,
    journal: Journal,
    logger: Any,
) -> None:
    seconds = job.store.verdict_seconds()
    if verdict is None:
        row.fabric = "unknown (no monitor to read)"
    elif waiting:
        row.fabric = f"processing (not settled within {seconds:g}s): {verdict.text}"
    else:
        row.fabric = verdict.text
    failed = verdict is not None and verdict.state == "failed" and not waiting
    if failed:
        row.status = "FAILED"
        row.detail = (
            f"Fabric did not replicate the table: {row.fabric}. The files reached the landing "
            "zone and the watermark moved with them; fix the cause Fabric names, then `hygge "
            "status --repair` sends the rejected file again under its own name (or --full-drop "
            "rebuilds the table)"
        )
        logger.error("%s: %s", row.entity, row.detail)
    elif verdict is not None and verdict.state in ("warning", "stopped"):
        logger.warning("%s: Fabric reports %s", row.entity, row.fabric)
    journal.verdict(job.store, row.entity, row.fabric, failed)

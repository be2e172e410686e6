"""What a run would do (`--dry-run`) and what runs did (`history`), without moving data."""

from __future__ import annotations

from typing import Any

from blocks import WatermarkLedger
from flows.journal import render_history
from flows.plan import blocks_of, build_jobs, resolve_blocks
from flows.spec import RunType, load_any


def dry_run(
    spec: str | dict[str, Any],
    entities: list[str] | None,
    run_type: RunType | None,
    concurrency: int | None,
) -> str:
    """Each entity's source, destination, mode (and why) and current watermark."""
    plan = load_any(spec)
    home, store = resolve_blocks(plan)
    ledger = WatermarkLedger.load_or_new(plan.ledger_name)
    jobs = build_jobs(plan, home, store, ledger, entities, run_type)
    lines = [
        f"spec {plan.name!r}: {len(jobs)} entities, {concurrency or plan.concurrency} at once, "
        f"ledger block {plan.ledger_name!r}",
        "",
    ]
    for job in jobs:
        entry = ledger.entry(job.plan.name)
        current = "none"
        if entry is not None and entry.watermark:
            current = f"{entry.watermark_column} = {entry.watermark_value}"
        lines.append(f"{job.plan.name}")
        lines.append(f"  from  {job.home.describe(job.plan.request)}")
        lines.append(f"  to    {job.store.describe(job.plan.name)}")
        lines.append(f"  mode  {job.plan.mode} ({job.plan.reason})")
        lines.append(f"  watermark now: {current}")
    return "\n".join(lines)


def history(spec: str | dict[str, Any], entities: list[str] | None, limit: int) -> str:
    """The recent run journal of a spec, read from its Store(s); needs no Prefect server."""
    plan = load_any(spec)
    home, store = resolve_blocks(plan)
    areas = {e.store.lock_id(): e.store for e in blocks_of(plan, home, store, entities)}
    tables = [t for s in areas.values() if (t := s.read_journal()) is not None]
    return render_history(tables, plan.name, entities, limit)

"""The hygge parent flow and its command line (`python -m flows.run`).

The flow loads the spec, resolves the blocks, locks the Stores it writes, reads the ledger,
recovers interrupted runs, plans each entity once, and moves them (`flows.schedule`: at most
`concurrency` at once); as each entity finishes it commits its ledger entry (`flows.commit`):
the parent is the ledger's only writer. The end-of-run report is `flows.summary`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m flows.run`: the command line imports only what the command needs
    from flows.cli import legacy_main

    sys.exit(legacy_main())

import datetime as dt
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from blocks import HomeBlock, SqliteHome, StoreBlock, WatermarkLedger
from blocks.base import utc_now
from flows import interrupts
from flows.commit import recover
from flows.example import EXAMPLE_SPEC, EXAMPLE_SPECS, ensure_example_data
from flows.journal import Journal
from flows.plan import blocks_of, plan_jobs, resolve_blocks
from flows.schedule import move_all
from flows.spec import RunType, TaskRunnerSpec, load_any
from flows.summary import publish_summary, render
from flows.verdicts import await_verdicts
from hygge_core import stop
from hygge_core.errors import FlowError, InterruptError

#: log the summary table at the end of the flow; the command line turns it off and prints the
#: table itself, so a terminal shows it once
ECHO_SUMMARY = True


@flow(name="hygge", log_prints=False)
def hygge(
    spec: str | dict[str, Any] = str(EXAMPLE_SPEC),
    entities: list[str] | None = None,
    run_type: RunType | None = None,
    concurrency: int | None = None,
    dask_address: str | None = None,
) -> list[dict[str, Any]]:
    """Move the entities of a flow spec from its Home to its Store.

    Args:
        spec: Path of a YAML flow spec, or the spec itself as a mapping.
        entities: Only these entities (default: all).
        run_type: Override the spec's run type: `incremental` or `full_drop`.
        concurrency: Override how many entities move at once.
        dask_address: Run the entity tasks on this existing Dask cluster (tcp://host:8786).
    """
    # Ctrl-C and SIGTERM from the command line stop the run between batches
    with interrupts.handling():
        return _hygge(spec, entities, run_type, concurrency, dask_address)


def _hygge(
    spec: str | dict[str, Any],
    entities: list[str] | None,
    run_type: RunType | None,
    concurrency: int | None,
    dask_address: str | None,
) -> list[dict[str, Any]]:
    logger = get_run_logger()
    plan = load_any(spec)
    if dask_address:
        plan.task_runner = TaskRunnerSpec(type="dask", address=dask_address)
    home, store = resolve_blocks(plan)
    _ensure_example(spec, home, logger)
    run_id = _run_id()
    # the entities' Stores (entities may override the Store's settings); nothing is planned yet
    selected = blocks_of(plan, home, store, entities)
    with _exclusive([e.store for e in selected], run_id, plan.lock_wait_seconds, logger.warning):
        # read the ledger only once the Stores are ours: a run before us may just have saved it
        ledger = WatermarkLedger.load_or_new(plan.ledger_name)
        recover(selected, ledger, plan, logger)
        # planned once, after recovery: a recovered commit moves the watermark the plan reads
        jobs = plan_jobs(plan, selected, ledger, run_type, loaded_at=utc_now())
        journal = Journal(plan.name, run_id, logger)
        workers = concurrency or plan.concurrency
        started = utc_now()
        rows = move_all(jobs, plan, ledger, run_id, workers, logger, journal)
    signum = stop.requested()
    if signum:
        # what each entity kept is said once, by the command line (`flows.interrupts`)
        msg = f"stopped by {stop.signal_name(signum)}: {interrupts.line()}"
        raise InterruptError(msg)
    # the destination's own verdict (Fabric's monitor), once the Stores are free again
    await_verdicts(jobs, rows, started, journal, logger)
    journal.publish_artifact()

    ordered = [rows[j.plan.name] for j in jobs]
    publish_summary(ordered)
    failed = [r for r in ordered if r.status != "ok"]
    summary = [r.as_dict() for r in ordered]
    if ECHO_SUMMARY:
        logger.info("summary\n%s", render(ordered))
    if failed:
        names = ", ".join(f"{r.entity} ({r.detail})" for r in failed)
        msg = f"{len(failed)} of {len(ordered)} entities failed: {names}"
        error = FlowError(msg)
        error.summary = summary
        raise error
    return summary


def _ensure_example(spec: str | dict[str, Any], home: HomeBlock, logger: Any) -> None:
    """Create the sample database a bundled example spec reads, if it does not exist yet."""
    if not isinstance(spec, str) or not isinstance(home, SqliteHome):
        return
    # a deployment's first run too, which the command line never sees
    if Path(spec).resolve() not in EXAMPLE_SPECS or Path(home.path).exists():
        return

    logger.info("%s does not exist yet: creating the example database", home.path)
    ensure_example_data(Path(home.path))


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        suffix = str(flow_run.id or "")[:8]
    except Exception:
        suffix = ""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{suffix or uuid.uuid4().hex[:8]}"


def _exclusive(
    stores: list[StoreBlock], run_id: str, wait_seconds: float, on_wait: Callable[[str], None]
) -> ExitStack:
    """Lock every distinct Store area this run writes, in a fixed order (no deadlock)."""
    stack = ExitStack()
    unique = {s.lock_id(): s for s in stores}
    try:
        for key in sorted(unique):
            stack.enter_context(unique[key].exclusive(run_id, wait_seconds, on_wait))
    except BaseException:
        stack.close()
        raise
    return stack


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.run`: the command line of the first release (see `flows.cli`)."""
    from flows.cli import legacy_main

    return legacy_main(argv)

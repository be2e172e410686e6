"""The hygge parent flow and its command line (`python -m flows.run`).

The flow loads the spec, resolves the blocks, reads the ledger, recovers interrupted runs,
maps `move_entity` over the entities (at most `concurrency` at once) and, as each entity
finishes, commits its ledger entry: the parent is the ledger's only writer.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m flows.run`: the command line imports only what the command needs
    from flows.cli import legacy_main

    sys.exit(legacy_main())

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import HomeBlock, SqliteHome, StoreBlock, WatermarkLedger
from blocks.base import utc_now
from flows import assets
from flows.assets import Committed
from flows.example import EXAMPLE_SPEC, EXAMPLE_SPECS, ensure_example_data
from flows.journal import Journal
from flows.plan import EntityJob, build_jobs, resolve_blocks
from flows.spec import FlowSpec, RunType, TaskRunnerSpec, load_any
from flows.summary import SummaryRow, render
from hygge_core import faults
from hygge_core.errors import ConfigError, FlowError
from hygge_tasks.move import EntityResult, finish_entity, move_entity

#: entities that finish within this window share one ledger save (each save is several API
#: calls and grows with the ledger: one per entity made 200 small entities take 90 s)
LEDGER_BATCH_SECONDS = 1.0
#: log the summary table at the end of the flow; the command line turns it off and prints the
#: table itself, so a terminal shows it once
ECHO_SUMMARY = True


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


def _recover(jobs: list[EntityJob], ledger: WatermarkLedger, plan: FlowSpec, logger: Any) -> None:
    """Finish or undo what an interrupted run left, before anything new starts."""
    ledger_name = plan.ledger_name
    recovered: list[Committed] = []
    for job in jobs:
        for manifest in job.store.recover(job.plan.name):
            logger.warning(
                "%s: run %s published data but did not commit its watermark; committing it now",
                job.plan.name,
                manifest.run_id,
            )
            ledger.commit(ledger_name, job.plan.name, manifest.ledger_entry)
            job.store.mark_committed(job.plan.name, manifest.run_id)
            entry = manifest.ledger_entry or {}
            recovered.append(
                Committed(
                    job.plan.name,
                    job.store,
                    manifest.run_id,
                    manifest.mode,
                    manifest.rows,
                    manifest.bytes,
                    len(manifest.files),
                    entry.get("watermark"),
                )
            )
    if recovered:
        assets.record(plan.name, recovered, logger)


def _exclusive(stores: list[StoreBlock], run_id: str, wait_seconds: float) -> ExitStack:
    """Lock every distinct Store area this run writes, in a fixed order (no deadlock)."""
    stack = ExitStack()
    unique = {s.lock_id(): s for s in stores}
    try:
        for key in sorted(unique):
            stack.enter_context(unique[key].exclusive(run_id, wait_seconds))
    except BaseException:
        stack.close()
        raise
    return stack


def _move_all(
    jobs: list[EntityJob],
    plan: FlowSpec,
    ledger: WatermarkLedger,
    run_id: str,
    workers: int,
    logger: Any,
    journal: Journal,
) -> dict[str, SummaryRow]:
    """Map the entity task over the jobs; commit and journal each entity as it finishes."""
    logger.info("run %s: %d entities, %d at once", run_id, len(jobs), workers)
    for job in jobs:
        logger.info("%s: %s (%s)", job.plan.name, job.plan.mode, job.plan.reason)
    rows: dict[str, SummaryRow] = {}
    with _task_runner(plan.task_runner, workers) as runner:
        scheduler = _Scheduler(
            runner,
            move_entity.with_options(
                retries=plan.retries, retry_delay_seconds=plan.retry_delay_seconds
            ),
            finish_entity.with_options(
                retries=plan.retries, retry_delay_seconds=plan.retry_delay_seconds
            ),
            jobs,
            run_id,
            workers,
        )
        done: list[tuple[EntityJob, EntityResult, Any]] = []  # published, not yet in the ledger

        def commit() -> None:
            """Save the finished entities' watermarks in one ledger save, then mark them."""
            batch, done[:] = list(done), []
            if not batch:
                return
            try:
                faults.point("flow.before_ledger")
                ledger.commit_many(
                    plan.ledger_name, {j.plan.name: r.ledger_entry for j, r, _ in batch}
                )
            except Exception as exc:
                for job, _, before in batch:
                    _failed(job, exc, before)
                return
            faults.point("flow.before_mark_committed")
            committed: list[Committed] = []
            for job, result, before in batch:
                try:
                    job.store.mark_committed(job.plan.name, result.run_id)
                except Exception as exc:
                    _failed(job, exc, before)
                    continue
                rows[job.plan.name] = SummaryRow.ok(result)
                journal.ok(job.plan, job.store, result, before, scheduler.started[job.plan.name])
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
            assets.record(plan.name, committed, logger)

        def _failed(job: EntityJob, exc: Exception, before: Any) -> None:
            logger.error("%s: failed: %s", job.plan.name, exc)
            rows[job.plan.name] = SummaryRow.failed(job.plan.name, job.plan.mode, exc)
            journal.failed(job.plan, job.store, exc, before, scheduler.started[job.plan.name])

        for future, job, moved in scheduler:
            if future is None:
                commit()  # the batching window closed
                continue
            name = job.plan.name
            before = (ledger.value.get(name) or {}).get("watermark")
            try:
                if moved is None:
                    result: EntityResult = future.result()
                    if result.ready_at:
                        logger.info(
                            "%s: staged %s rows and emptied the destination; publishing after "
                            "%s (the wait holds no concurrency slot)",
                            name,
                            f"{result.rows:,}",
                            result.ready_at,
                        )
                        scheduler.defer(job, result)
                        continue
                else:
                    future.result()  # the deferred publish
                    result = moved  # type: ignore[assignment]
                if result.changed:
                    # published: the ledger follows within LEDGER_BATCH_SECONDS (a crash
                    # before that is finished by the next run's recovery)
                    done.append((job, result, before))
                    scheduler.wake(LEDGER_BATCH_SECONDS)
                    continue
                rows[name] = SummaryRow.ok(result)
            except Exception as exc:
                _failed(job, exc, before)
            else:
                journal.ok(job.plan, job.store, result, before, scheduler.started[name])
        commit()
    return rows


def _task_runner(spec: TaskRunnerSpec, workers: int) -> Any:
    """Threads in this process (default), or a Dask cluster for scale-out."""
    if spec.type == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        msg = "`task_runner: {type: dask}` needs prefect-dask: pip install 'hygge[dask]'"
        raise ConfigError(msg) from exc
    if spec.address:
        return DaskTaskRunner(address=spec.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})


class _Scheduler:
    """Submits at most `workers` tasks at once and yields each as it finishes.

    The bound holds whatever the runner: a Dask cluster may have more slots than the spec
    allows connections to its Home. An entity whose Store must wait before publishing is
    `defer`red: it holds no slot while it waits, and its publish task is submitted when the
    time comes (before new entities, so started work finishes first).
    """

    def __init__(
        self,
        runner: Any,
        mover: Any,
        finisher: Any,
        jobs: list[EntityJob],
        run_id: str,
        workers: int,
    ) -> None:
        self.runner = runner
        self.mover = mover
        self.finisher = finisher
        self.waiting = list(jobs)
        self.run_id = run_id
        self.workers = workers
        self.running: dict[Any, tuple[EntityJob, EntityResult | None]] = {}
        self.deferred: list[tuple[float, int, EntityJob, EntityResult]] = []
        self.started: dict[str, dt.datetime] = {}  # for the journal
        self.wake_at: float | None = None

    def defer(self, job: EntityJob, result: EntityResult) -> None:
        assert result.ready_at is not None
        left = (dt.datetime.fromisoformat(result.ready_at) - utc_now()).total_seconds()
        item = (time.monotonic() + max(left, 0.0), len(self.deferred), job, result)
        self.deferred = sorted([*self.deferred, item], key=lambda d: (d[0], d[1]))

    def wake(self, seconds: float) -> None:
        """Yield `(None, None, None)` once, `seconds` from now (unless already asked sooner)."""
        if self.wake_at is None:
            self.wake_at = time.monotonic() + seconds

    def _woken(self) -> bool:
        if self.wake_at is not None and time.monotonic() >= self.wake_at:
            self.wake_at = None
            return True
        return False

    def __iter__(self) -> Iterator[tuple[Any, Any, EntityResult | None]]:
        while self.waiting or self.running or self.deferred:
            now = time.monotonic()
            while self.deferred and self.deferred[0][0] <= now and self._free():
                _, _, job, moved = self.deferred.pop(0)
                params = {"entity": job.plan.name, "store": job.store, "run_id": moved.run_id}
                self.running[self.runner.submit(self.finisher, params)] = (job, moved)
            while self.waiting and self._free():
                new = self.waiting.pop(0)
                params = {
                    "plan": new.plan,
                    "home": new.home,
                    "store": new.store,
                    "run_id": self.run_id,
                }
                self.running[self.runner.submit(self.mover, params)] = (new, None)
                self.started[new.plan.name] = utc_now()
            # wake for a due publish only when a slot could take it, and for a wake() call;
            # else block until a task finishes
            due = [self.deferred[0][0]] if self.deferred and self._free() else []
            due += [self.wake_at] if self.wake_at is not None else []
            timeout = max(min(due) - now, 0.0) if due else None
            if not self.running:
                time.sleep(timeout or 0.0)
                if self._woken():
                    yield None, None, None
                continue
            try:
                done = next(iter(as_completed(list(self.running), timeout=timeout)))
            except TimeoutError:
                if self._woken():
                    yield None, None, None
                continue  # or a deferred publish is due
            finished, moved_before = self.running.pop(done)
            yield done, finished, moved_before

    def _free(self) -> bool:
        return len(self.running) < self.workers


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
    logger = get_run_logger()
    plan = load_any(spec)
    if dask_address:
        plan.task_runner = TaskRunnerSpec(type="dask", address=dask_address)
    home, store = resolve_blocks(plan)
    _ensure_example(spec, home, logger)
    run_id = _run_id()
    # the Stores this run writes (entities may override the Store's settings)
    stores = [j.store for j in build_jobs(plan, home, store, WatermarkLedger(), entities, run_type)]
    with _exclusive(stores, run_id, plan.lock_wait_seconds):
        # read the ledger only once the Stores are ours: a run before us may just have saved it
        ledger = WatermarkLedger.load_or_new(plan.ledger_name)
        jobs = build_jobs(plan, home, store, ledger, entities, run_type)
        _recover(jobs, ledger, plan, logger)
        # recovery may have moved watermarks: plan again from the updated ledger
        jobs = build_jobs(plan, home, store, ledger, entities, run_type, loaded_at=utc_now())
        journal = Journal(plan.name, run_id, logger)
        workers = concurrency or plan.concurrency
        rows = _move_all(jobs, plan, ledger, run_id, workers, logger, journal)
    journal.publish_artifact()

    ordered = [rows[j.plan.name] for j in jobs]
    _publish_summary(ordered)
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


def _publish_summary(rows: list[SummaryRow]) -> None:
    # the summary is also logged; an artifact hiccup must not fail the run
    with contextlib.suppress(Exception):
        create_table_artifact(
            key="hygge-summary", table=[r.as_dict() for r in rows], description="hygge run summary"
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.run`: the command line of the first release (see `flows.cli`)."""
    from flows.cli import legacy_main

    return legacy_main(argv)

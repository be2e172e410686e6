"""Submitting the entity tasks and collecting them as they finish, `concurrency` at a time.

`move_all` maps `move_entity` over a run's jobs through the spec's task runner (threads in
this process, or a Dask cluster), hands each outcome to the ledger commits (`flows.commit`)
as it comes back, and runs the `finish_entity` publish of an entity whose Store must wait
before publishing when its time comes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import WatermarkLedger
from blocks.base import utc_now
from flows import interrupts
from flows.commit import LEDGER_BATCH_SECONDS, Commits
from flows.journal import Journal
from flows.plan import EntityJob
from flows.spec import FlowSpec, TaskRunnerSpec
from flows.summary import SummaryRow
from hygge_core import stop
from hygge_core.errors import ConfigError
from hygge_tasks.entity import EntityResult
from hygge_tasks.move import finish_entity, move_entity


def move_all(
    jobs: list[EntityJob],
    spec: FlowSpec,
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
    retries, delay = spec.retries, spec.retry_delay_seconds
    interrupts.plan([job.plan.name for job in jobs])
    with task_runner(spec.task_runner, workers) as runner:
        scheduler = Scheduler(
            runner,
            move_entity.with_options(retries=retries, retry_delay_seconds=delay),
            finish_entity.with_options(retries=retries, retry_delay_seconds=delay),
            jobs,
            run_id,
            workers,
        )
        commits = Commits(spec, ledger, journal, scheduler.started, logger)
        for future, job, moved in scheduler:
            if future is None:
                commits.flush()  # the batching window closed
                continue
            name = job.plan.name
            before = commits.before(name)
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
                        interrupts.mark(name, "staged")
                        continue
                else:
                    future.result()  # the deferred publish
                    result = moved
                if result.changed:
                    # the ledger follows within LEDGER_BATCH_SECONDS
                    commits.published(job, result, before)
                    scheduler.wake(LEDGER_BATCH_SECONDS)
                    continue
            except Exception as exc:
                commits.failed(job, exc, before)
            else:
                commits.done(job, result, before)
        commits.flush()
    return commits.rows


def task_runner(spec: TaskRunnerSpec, workers: int) -> Any:
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


class Scheduler:
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
            if stop.requested():
                # interrupted: start nothing more; what runs stops at its next batch
                self.waiting.clear()
                self.deferred.clear()
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

"""Submitting the entity tasks and collecting them as they finish, `concurrency` at a time.

`move_all` maps `move_entity` over a run's jobs through the spec's task runner (threads in
this process, or a Dask cluster), or, for a long queue on threads, `move_entities` over
bundles of them; it hands each outcome to the ledger commits (`flows.commit`)
as it comes back, and runs the `finish_entity` publish of an entity whose Store must wait
before publishing when its time comes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import WatermarkLedger
from blocks.base import utc_now
from flows import interrupts
from flows.commit import Commits
from flows.journal import Journal
from flows.plan import EntityJob
from flows.spec import FlowSpec, TaskRunnerSpec
from flows.summary import SummaryRow
from hygge_core import stop
from hygge_core.errors import ConfigError
from hygge_tasks.bundle import Bundled, move_entities
from hygge_tasks.entity import EntityResult
from hygge_tasks.move import finish_entity, move_entity, worth_retrying


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
    _log_plans(jobs, logger)
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
            bundler=move_entities
            if spec.bundle_entities and spec.task_runner.type == "threads"
            else None,
            retries=retries,
            delay=delay,
            logger=logger,
        )
        commits = Commits(spec, ledger, journal, scheduler.started, logger)
        try:
            _collect(scheduler, commits, logger)
            commits.flush(final=True)
        finally:
            commits.close()  # the journal written and the saver released, whatever happened
    return commits.rows


def _collect(scheduler: Scheduler, commits: Commits, logger: Any) -> None:
    """Hand each entity's outcome to the commits as the scheduler yields it."""
    for future, job, moved in scheduler:
        if future is None:
            commits.flush()  # the batching window closed, or a save may have returned
            _wake(scheduler, commits)
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
        except Exception as exc:
            commits.failed(job, exc, before)
        else:
            if result.changed:
                # the ledger follows with the next save (`flows.commit`)
                commits.published(job, result, before)
            else:
                commits.done(job, result, before)
        _wake(scheduler, commits)


#: more entities than this: their plans are logged grouped by what each run does
PLAN_LINES = 20


def _log_plans(jobs: list[EntityJob], logger: Any) -> None:
    """One line per entity, or, for many, one per kind of plan (a thousand lines say less)."""
    if len(jobs) <= PLAN_LINES:
        for job in jobs:
            logger.info("%s: %s (%s)", job.plan.name, job.plan.mode, job.plan.reason)
        return
    groups: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        groups.setdefault((job.plan.mode, job.plan.reason), []).append(job.plan.name)
    for (mode, reason), names in groups.items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5:,} more" if len(names) > 5 else "")
        logger.info("%d entities: %s (%s): %s", len(names), mode, reason, shown)


def _wake(scheduler: Scheduler, commits: Commits) -> None:
    due = commits.due()
    if due is not None:
        scheduler.wake(due)


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


#: a bundle is at most this many entities (`hygge_tasks.bundle`)
BUNDLE_MAX = 50
#: and a quarter of each worker's share of the queue: bundles shrink as the queue drains, so
#: the last entities spread over every worker (with 4 workers, 32 waiting entities bundle)
BUNDLE_SHARE = 4
#: a bundle starts no further entity after this long; what it did not start is queued again
BUNDLE_SECONDS = 2.0


@dataclass
class Settled:
    """A bundled entity's outcome, shaped like the future of its own task run."""

    outcome: Bundled

    def result(self) -> EntityResult:
        if self.outcome.error is not None:
            raise self.outcome.error
        assert self.outcome.result is not None
        return self.outcome.result


class Scheduler:
    """Submits at most `workers` tasks at once and yields each entity as it finishes.

    The bound holds whatever the runner: a Dask cluster may have more slots than the spec
    allows connections to its Home. An entity whose Store must wait before publishing is
    `defer`red: it holds no slot while it waits, and its publish task is submitted when the
    time comes (before new entities, so started work finishes first).

    With a `bundler`, a long queue goes out in bundles (`hygge_tasks.bundle`): a bundled
    entity that failed in a way worth retrying gets its retries in a task run of its own,
    after `delay` seconds; what a bundle did not start goes back to the front of the queue.
    """

    def __init__(
        self,
        runner: Any,
        mover: Any,
        finisher: Any,
        jobs: list[EntityJob],
        run_id: str,
        workers: int,
        bundler: Any = None,
        retries: int = 0,
        delay: float = 0.0,
        logger: Any = None,
    ) -> None:
        self.runner = runner
        self.mover = mover
        self.finisher = finisher
        self.bundler = bundler
        self.retries = retries
        self.delay = delay
        self.logger = logger
        self.waiting = list(jobs)
        self.run_id = run_id
        self.workers = workers
        self.running: dict[Any, tuple[EntityJob, EntityResult | None]] = {}
        self.bundles: dict[Any, list[EntityJob]] = {}
        self.settled: list[tuple[Settled, EntityJob]] = []
        self.retrying: list[tuple[float, int, EntityJob]] = []
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
        at = time.monotonic() + seconds
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at

    def _woken(self) -> bool:
        if self.wake_at is not None and time.monotonic() >= self.wake_at:
            self.wake_at = None
            return True
        return False

    def __iter__(self) -> Iterator[tuple[Any, Any, EntityResult | None]]:
        while (
            self.waiting
            or self.running
            or self.bundles
            or self.settled
            or self.retrying
            or self.deferred
        ):
            if stop.requested():
                # interrupted: start nothing more; what runs stops at its next batch
                self.waiting.clear()
                self.deferred.clear()
                self.retrying.clear()
            now = time.monotonic()
            self._submit(now)  # a slot a bundle freed takes new work before its outcomes
            if self.settled:
                settled, job = self.settled.pop(0)
                yield settled, job, None
                continue
            # wake for a due publish or retry only when a slot could take it, and for a
            # wake() call; else block until a task finishes
            due = [self.deferred[0][0]] if self.deferred and self._free() else []
            due += [self.retrying[0][0]] if self.retrying and self._free() else []
            due += [self.wake_at] if self.wake_at is not None else []
            timeout = max(min(due) - now, 0.0) if due else None
            futures = [*self.running, *self.bundles]
            if not futures:
                time.sleep(timeout or 0.0)
                if self._woken():
                    yield None, None, None
                continue
            try:
                done = next(iter(as_completed(futures, timeout=timeout)))
            except TimeoutError:
                if self._woken():
                    yield None, None, None
                continue  # or a deferred publish or a retry is due
            if done in self.bundles:
                self._unbundle(done)
                continue
            finished, moved_before = self.running.pop(done)
            yield done, finished, moved_before

    def _submit(self, now: float) -> None:
        while self.deferred and self.deferred[0][0] <= now and self._free():
            _, _, job, moved = self.deferred.pop(0)
            params = {"entity": job.plan.name, "store": job.store, "run_id": moved.run_id}
            self.running[self.runner.submit(self.finisher, params)] = (job, moved)
        while self.retrying and self.retrying[0][0] <= now and self._free():
            _, _, job = self.retrying.pop(0)
            mover = self.mover.with_options(retries=self.retries - 1)
            self._solo(job, mover, attempts_before=1)
        while self.waiting and self._free():
            size = self._bundle_size()
            if size < 2:
                self._solo(self.waiting.pop(0), self.mover)
                continue
            take, self.waiting = self.waiting[:size], self.waiting[size:]
            params = {
                "jobs": [(j.plan, j.home, j.store) for j in take],
                "run_id": self.run_id,
                "seconds": BUNDLE_SECONDS,
                "label": f"{len(take)} entities from {take[0].plan.name}",
            }
            self.bundles[self.runner.submit(self.bundler, params)] = take
            for job in take:
                self.started[job.plan.name] = utc_now()  # each outcome says when it began

    def _solo(self, job: EntityJob, mover: Any, attempts_before: int = 0) -> None:
        params: dict[str, Any] = {
            "plan": job.plan,
            "home": job.home,
            "store": job.store,
            "run_id": self.run_id,
        }
        if attempts_before:
            params["attempts_before"] = attempts_before
        self.running[self.runner.submit(mover, params)] = (job, None)
        if not attempts_before:  # a retry keeps the start of the entity's first attempt
            self.started[job.plan.name] = utc_now()

    def _bundle_size(self) -> int:
        if self.bundler is None:
            return 1
        return min(BUNDLE_MAX, len(self.waiting) // (BUNDLE_SHARE * self.workers))

    def _unbundle(self, done: Any) -> None:
        """A bundle's outcomes, one per entity it started; the rest queued again, first."""
        jobs = self.bundles.pop(done)
        try:
            outcomes: list[Bundled] = done.result()
        except Exception as exc:
            # the bundle's task run itself failed (its state not reported, say): what it moved
            # may be published, so nothing is moved again; the next run's recovery commits
            # whatever it published, and the rest is loaded then
            for job in jobs:
                self.settled.append((Settled(Bundled(job.plan.name, utc_now(), error=exc)), job))
            return
        for job, outcome in zip(jobs, outcomes, strict=False):
            self.started[job.plan.name] = outcome.started_at
            if outcome.error is not None and self._retry(job, outcome.error):
                continue
            self.settled.append((Settled(outcome), job))
        self.waiting[:0] = jobs[len(outcomes) :]

    def _retry(self, job: EntityJob, error: Exception) -> bool:
        """Give a bundled entity's transient failure the retries left, in its own task run."""
        if self.retries < 1 or not worth_retrying(error):
            return False
        if self.logger is not None:
            self.logger.warning(
                "%s: %s; trying again in %.0f s in a task run of its own (%d retries left)",
                job.plan.name,
                error,
                self.delay,
                self.retries,
            )
        item = (time.monotonic() + self.delay, len(self.retrying), job)
        self.retrying = sorted([*self.retrying, item], key=lambda r: (r[0], r[1]))
        return True

    def _free(self) -> bool:
        return len(self.running) + len(self.bundles) < self.workers

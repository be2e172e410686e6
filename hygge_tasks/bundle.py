"""move_entities: several small entities moved one after another in one Prefect task run.

A task run costs the Prefect server a handful of state events whatever it moves; for a run of
a thousand small tables that traffic, not the data, set the pace (`bench/RESULTS.md`). The
parent flow hands a worker a bundle of entities; the task moves them in order, each with its
own attempt id, Store staging and result, and stops taking the next one once its time is up,
so that a large entity never holds the smaller ones behind it for long. What it did not start
goes back to the parent's queue.

Each entity's outcome comes back on its own: a failure is not raised (the others carry on),
and the parent decides whether it is worth another attempt, which then runs as that entity's
own `move_entity` task with the retries left (`flows.schedule`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.base import HomeBlock, StoreBlock, utc_now
from hygge_core import stop
from hygge_tasks.entity import EntityPlan, EntityResult
from hygge_tasks.move import attempt


@dataclass
class Bundled:
    """One entity's outcome in a bundle: its result, or the error that ended its attempt."""

    entity: str
    started_at: dt.datetime
    result: EntityResult | None = None
    error: Exception | None = None


@task(
    name="move_entities",
    task_run_name="move {label}",
    retries=0,  # per entity, by the parent: a retry of the bundle would move the others again
    cache_policy=NO_CACHE,
    persist_result=False,
)
def move_entities(
    jobs: list[tuple[EntityPlan, HomeBlock, StoreBlock]],
    run_id: str,
    seconds: float,
    label: str,
) -> list[Bundled]:
    """Move the entities in order until `seconds` have passed (at least one); the outcomes of
    those started, in order: the rest were not started."""
    from prefect import get_run_logger

    logger = get_run_logger()
    deadline = time.monotonic() + seconds
    out: list[Bundled] = []
    for plan, home, store in jobs:
        if out and (time.monotonic() >= deadline or stop.requested()):
            break
        done = Bundled(plan.name, utc_now())
        try:
            done.result = attempt(plan, home, store, run_id, logger, 1)
        except Exception as exc:
            done.error = exc
        out.append(done)
    return out

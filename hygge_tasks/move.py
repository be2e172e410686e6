"""move_entity: the mapped Prefect task that moves one entity from its Home to its Store.

It streams batches from the Home through the boundary filter into the Store's writer,
publishes, and returns a small `EntityResult`, never data. The ledger is not touched here:
the parent flow commits the returned entry, so a task retry can never advance a watermark.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import Any, cast

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.base import (
    CopySource,
    EntityWriter,
    HomeBlock,
    ReadRequest,
    Since,
    StoreBlock,
    WriteMode,
    utc_now,
)
from hygge_core import faults, stop
from hygge_core.arrow_types import unview
from hygge_core.errors import HomeError, StoreError, is_transient
from hygge_core.ledger_entry import LedgerEntry
from hygge_tasks.boundary_spill import restore, spill
from hygge_tasks.changes import ChangeFeed
from hygge_tasks.deletes import DeleteDetector, Reconciled
from hygge_tasks.drift import SchemaGuard, carry_over
from hygge_tasks.entity import EntityPlan, EntityResult
from hygge_tasks.limits import home_slot
from hygge_tasks.new_files import from_ledger, select, to_ledger
from hygge_tasks.polish import Polisher
from hygge_tasks.progress import EntityProgress
from hygge_tasks.watermark import BoundaryFilter, Watermark, lagged, not_behind


def move(
    plan: EntityPlan, home: HomeBlock, store: StoreBlock, run_id: str, logger: Any
) -> EntityResult:
    """Move one entity; the engine behind the task, callable without Prefect.

    Each attempt writes under its own id (`<run_id>-<4 hex>`): a retry after a failure late in
    publishing must never mistake the failed attempt's files for its own.
    """
    with stop.moving():
        return _move(plan, home, store, run_id, logger)


def _move(
    plan: EntityPlan, home: HomeBlock, store: StoreBlock, run_id: str, logger: Any
) -> EntityResult:
    start = time.perf_counter()
    run_id = f"{run_id}-{uuid.uuid4().hex[:4]}"
    faults.set_entity(plan.name)
    previous = None
    if plan.mode == "append" and plan.previous:
        previous = Watermark.from_json(restore(store, plan.name, plan.previous) or {})
    request = plan.request
    selection = None
    if plan.new_files:
        held = from_ledger(store, plan.name, plan.previous_files) if plan.mode == "append" else None
        selection = select(plan.name, home.list_files(request), held, plan.changed_files)
        if held is not None and not selection.read:
            return _nothing_new(plan, run_id, start)
        request = replace(request, files=tuple(f.path for f in selection.read))
    # with a lag the run reads again from before the watermark, and the Store merges by key
    reread = previous
    if previous is not None and plan.watermark_lag is not None:
        window_start = lagged(previous.value, plan.watermark_lag, plan.name)
        reread = Watermark(previous.column, window_start, frozenset())
    if reread is not None:
        columns = tuple(plan.watermark_columns) if len(plan.watermark_columns) > 1 else ()
        request = _with_since(request, Since(reread.column, reread.value, columns))
    boundary = (
        BoundaryFilter(
            plan.name,
            plan.watermark_columns or plan.watermark_column,
            plan.watermark_keys,
            reread,
            include_nulls=plan.watermark_nulls == "include",
        )
        if plan.watermark_column
        else None
    )
    polisher = (
        Polisher(plan.name, plan.polish, plan.loaded_at or utc_now()) if plan.polish else None
    )
    guard = SchemaGuard(
        plan.name,
        plan.on_drift,
        plan.previous_schema,
        reset=plan.schema_reset,
        protected=_protected(plan),
        type_change_refusal=store.type_change_refusal,
        logger=logger,
    )
    progress = EntityProgress(plan.name, logger, lambda: home.estimate_rows(request))
    detector = (
        DeleteDetector(
            plan.name,
            plan.deletes,
            plan.watermark_keys,
            plan.previous_keyset,
            run_id,
            plan.loaded_at,
        )
        if plan.deletes is not None and plan.watermark_keys
        else None
    )
    reconciled: Reconciled | None = None
    feed: ChangeFeed | None = None
    writer: EntityWriter | None = None
    mode: WriteMode = plan.mode
    carry = computes = False
    rows = carried = 0
    copied = 0
    notes: list[str] = []
    try:
        sources = _copy_sources(plan, home, request, detector is not None)
        if sources:
            guard.check(sources[0].schema)
            if guard.unchanged(sources[0].schema):
                writer = store.open_writer(plan.name, run_id, mode)
                if all(writer.copy_file(s) for s in sources):
                    copied = len(sources)
                    rows = sum(s.rows for s in sources)
                    progress.update(rows)
                else:
                    writer.abort()  # the Store re-encodes: the rows are read below
                    writer = None
        if plan.changes:
            feed = ChangeFeed(plan, home)
        source = feed.batches() if feed else _noted(home.read(request), notes)
        for batch in source if not copied else ():
            stop.check(plan.name)  # a signal: the writer's abort below removes the staging
            if writer is None:
                # drift is decided on the source's schema, before anything is written; an
                # append whose table must change schema rewrites the table instead
                guard.check(batch.schema)
                carry = guard.rewrite and plan.mode == "append" and not store.evolves_in_place
                mode = "replace" if carry or (feed and feed.mode == "replace") else plan.mode
                writer = store.open_writer(plan.name, run_id, mode)
                # pyarrow's compute kernels take no views; a plain load passes them through
                computes = boundary is not None or polisher is not None or carry
            batch = guard.conform(batch)
            if computes:
                batch = unview(batch)
            if boundary is not None:
                batch = boundary.admit(batch)  # on the source's names, before polishing
            if detector is not None:
                detector.observe(batch)
            if polisher is not None:
                batch = polisher.apply(batch)
            if detector is not None:
                batch = detector.mark(batch)
            if carry and batch.num_rows:
                carried = carry_over(store, plan.name, writer, batch.schema)
                carry = False
            writer.write(batch)
            rows += batch.num_rows
            progress.update(rows)
        if writer is None:
            writer = store.open_writer(plan.name, run_id, mode)
        if feed is not None:
            feed.flush(writer, _key_names(plan, polisher))  # deletes after the rows
        faults.point("move.after_read")
        note = feed.note(rows) if feed else notes[0] if notes else None
        if note:
            # a change-tracking reload the plan did not expect is worth a warning
            loud = feed is not None and feed.read.full and plan.mode == "append"
            (logger.warning if loud else logger.info)("%s: %s", plan.name, note)
        if boundary is not None and boundary.null_rows:
            _null_policy(plan, boundary.null_rows, logger)
        watermark = boundary.result() if boundary is not None else None
        if previous is not None and reread is not previous:
            watermark = not_behind(watermark, previous)
        if detector is not None:
            names = _key_names(plan, polisher)
            reconciled = detector.reconcile(
                home, plan.request, store, writer, plan.mode, mode, names
            )
            if reconciled.note:
                logger.warning("%s: %s", plan.name, reconciled.note)
        deleted = reconciled.deleted if reconciled else feed.deleted if feed else 0
        reloads = feed is not None and feed.read.full  # a full read publishes, rows or not
        if plan.mode == "append" and not reloads and rows == 0 and deleted == 0:
            writer.abort()
            return _nothing_new(
                plan,
                run_id,
                start,
                null_watermark_rows=boundary.null_rows if boundary else 0,
                schema_change=guard.note,
                home_note=note,
            )
        if mode == "replace" and rows + carried == 0 and not plan.allow_empty:
            _refuse_empty_replace(plan, store)
        published = _reconcile(plan.name, writer, rows + carried + writer.deletes_in_files())
        reached = watermark.to_json() if watermark else None
        entry = LedgerEntry(
            # a large boundary set goes beside the data; the ledger keeps its digest
            watermark=spill(store, plan.name, run_id, reached),
            run_id=run_id,
            rows=rows,
            mode=mode,
            committed_at=utc_now().isoformat(),
            schema=guard.remembered,
            identity=plan.identity,
            keyset=reconciled.keyset if reconciled else None,
            deleted=deleted if reconciled or feed else None,
            files=to_ledger(store, plan.name, run_id, selection.loaded) if selection else None,
            changes=feed.ledger() if feed else None,
        )
        stop.check(plan.name)  # an interrupted run publishes nothing more
        # the manifest keeps the entry as JSON until the flow commits it
        manifest = writer.commit_files(entry.to_json(), rows + carried)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        faults.set_entity(None)
        if detector is not None:
            detector.close()
    seconds = time.perf_counter() - start
    progress.done(rows, seconds)
    change = guard.note
    if carried:
        change = f"{change}; table rewritten ({carried:,} published rows carried over)"
    return EntityResult(
        entity=plan.name,
        run_id=run_id,
        mode=mode,
        rows=rows,
        bytes=manifest.bytes,
        seconds=seconds,
        files=manifest.files,
        null_watermark_rows=boundary.null_rows if boundary else 0,
        ledger_entry=entry,
        watermark=entry.watermark,
        schema_change=change,
        ready_at=manifest.extra.get("ready_at") if manifest.state == "waiting" else None,
        rows_read=rows + carried,
        rows_published=published,
        deleted=deleted,
        copied_files=copied,
        home_note=note,
    )


def _nothing_new(plan: EntityPlan, run_id: str, start: float, **notes: Any) -> EntityResult:
    """An incremental run that found nothing to publish: the watermark stays."""
    return EntityResult(
        entity=plan.name,
        run_id=run_id,
        mode=plan.mode,
        rows=0,
        bytes=0,
        seconds=time.perf_counter() - start,
        files=[],
        changed=False,
        watermark=plan.previous,
        **notes,
    )


def _copy_sources(
    plan: EntityPlan, home: HomeBlock, request: ReadRequest, detects_deletes: bool
) -> list[CopySource] | None:
    """The source files a Store may take as they are: nothing would change their rows (no
    polish, watermark, key tracking, column or filter; `reencode` not `always`)."""
    if (
        plan.reencode == "always"
        or plan.polish is not None
        or plan.watermark_column
        or plan.changes
    ):
        return None
    if detects_deletes:
        return None
    return home.copy_sources(request)


def _noted(batches: Iterator[pa.RecordBatch], notes: list[str]) -> Iterator[pa.RecordBatch]:
    """The Home's batches; the note its generator returns, if any, goes into `notes`."""
    # a plain iterator's `yield from` gives None; a generator's gives what it returned
    note = yield from cast(Generator[pa.RecordBatch, None, object], batches)
    if isinstance(note, str) and note:
        notes.append(note)


def _refuse_empty_replace(plan: EntityPlan, store: StoreBlock) -> None:
    """Refuse to replace a published table that has rows with an empty one (`allow_empty`)."""
    if not store.has_data(plan.name):
        return
    published = store.published_rows(plan.name)
    if published == 0:
        return
    held = "rows" if published is None else f"{published:,} rows"
    msg = (
        f"the source returned no rows, and this {plan.run_type} run would replace the published "
        f"table ({held}) with an empty one; nothing was changed. Check the source (a truncated "
        "table, a `where` that matches nothing), or set `allow_empty: true` on the entity if "
        "it is meant to be empty"
    )
    raise HomeError(msg, entity=plan.name)


def _reconcile(entity: str, writer: EntityWriter, rows: int) -> int | None:
    """The rows the staged files hold, checked against the rows written; nothing is published
    on a mismatch (the caller's abort removes the staging)."""
    staged = writer.staged_rows()
    if staged is None:
        return None
    held = sum(staged.values())
    left_out = writer.left_out()
    if held + left_out != rows:
        files = ", ".join(f"{name}: {n:,}" for name, n in staged.items()) or "no files"
        if left_out:
            files += f"; {left_out:,} left out by design"
        msg = (
            f"{rows:,} rows were read but the staged files hold {held:,} ({files}); nothing "
            "was published and the watermark did not move. Run the entity again; if it "
            "repeats, report it: the Store's writer lost or repeated rows"
        )
        error = StoreError(msg, entity=entity)
        error.hygge_rows = (rows, held)  # type: ignore[attr-defined]
        raise error
    return held


def _null_policy(plan: EntityPlan, count: int, logger: Any) -> None:
    """Fail on NULL-watermark rows an incremental run cannot place, or report skipping them."""
    if plan.watermark_nulls == "fail":
        msg = (
            f"{count:,} rows have a NULL watermark column {plan.watermark_column!r}: an "
            "incremental load cannot place them, and nothing was loaded. Give them a value, set "
            "`watermark.nulls: skip` to skip and count them on incremental runs, or run with "
            "--full-drop, which loads every row"
        )
        raise HomeError(msg, entity=plan.name)
    logger.warning(
        "%s: skipped %d rows whose watermark column %r is NULL (watermark.nulls: skip); an "
        "incremental load cannot place them: give them a value, or run with --full-drop",
        plan.name,
        count,
        plan.watermark_column,
    )


def _protected(plan: EntityPlan) -> dict[str, str]:
    """Columns a load cannot go on without, and what they are to the entity."""
    out = {k: "watermark key" for k in plan.watermark_keys}
    for h in plan.polish.hash_id if plan.polish else []:
        out.update({c: f"input to hash_id {h.name!r}" for c in h.columns})
    for column in plan.watermark_columns or [plan.watermark_column or ""]:
        if column:
            out[column] = "watermark column"
    return out


def _key_names(plan: EntityPlan, polisher: Polisher | None) -> list[str]:
    """The entity's keys as the Store's table names them (after polishing's renames)."""
    return polisher.names_of(plan.watermark_keys) if polisher else plan.watermark_keys


def _with_since(request: ReadRequest, since: Since) -> ReadRequest:
    return replace(request, since=since)


def worth_retrying(exc: BaseException) -> bool:
    """Retry dropped connections and timeouts; never bad data or bad configuration, and
    never once the run was asked to stop."""
    return not stop.requested() and is_transient(exc)


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return worth_retrying(exc)
    return False


def attempt(
    plan: EntityPlan, home: HomeBlock, store: StoreBlock, run_id: str, logger: Any, number: int
) -> EntityResult:
    """One attempt at an entity, holding its Home's slot; the result, or the error, says
    which attempt it was (the journal reports it)."""
    try:
        with home_slot(home, plan.name, logger):
            result = move(plan, home, store, run_id, logger)
    except Exception as exc:
        with contextlib.suppress(AttributeError):
            exc.hygge_attempts = number  # type: ignore[attr-defined]
        raise
    result.attempts = number
    return result


@task(
    name="move_entity",
    task_run_name="move {plan.name}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retry_if_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def move_entity(
    plan: EntityPlan, home: HomeBlock, store: StoreBlock, run_id: str, attempts_before: int = 0
) -> EntityResult:
    """Move one entity from its Home to its Store and return what happened (never data).

    `attempts_before`: attempts made already in a bundle (`hygge_tasks.bundle`)."""
    from prefect import get_run_logger
    from prefect.runtime import task_run

    number = int(task_run.run_count or 1) + attempts_before
    return attempt(plan, home, store, run_id, get_run_logger(), number)


@task(
    name="finish_entity",
    task_run_name="publish {entity}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retry_if_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def finish_entity(entity: str, store: StoreBlock, run_id: str) -> int:
    """Publish a moved entity whose Store asked to wait first; returns the files published."""
    return len(store.finish(entity, run_id).files)

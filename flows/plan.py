"""From a validated spec to runnable pieces: resolved blocks and one plan per entity.

A run plans in two steps, so that it plans once: `blocks_of` applies each entity's overrides
to the Home and Store (no I/O: the flow needs the Stores to lock them, and recovery needs them,
before the ledger may be read), then `plan_jobs` decides each entity's mode from the ledger and
the Store, once the ledger is final. `check_ledger` runs planning's ledger checks without
asking any Store, for the command line's preflight.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from prefect.blocks.core import Block
from pydantic import ValidationError

from blocks import HomeBlock, StoreBlock, WatermarkLedger
from blocks.base import ReadRequest, WriteMode
from flows import change_tracking
from flows.keys import block_problems
from flows.spec import EntitySpec, FlowSpec, RunType, setting_problem
from hygge_core.errors import ConfigError
from hygge_core.ledger_entry import LedgerEntry
from hygge_tasks.changes import stored_version
from hygge_tasks.entity import EntityPlan


@dataclass(frozen=True)
class EntityBlocks:
    """A selected entity and the blocks it runs on, with its overrides applied; not planned."""

    entity: EntitySpec
    home: HomeBlock
    store: StoreBlock

    @property
    def name(self) -> str:
        return self.entity.name


@dataclass
class EntityJob:
    """An entity ready to run: its plan and the blocks with its overrides applied."""

    plan: EntityPlan
    home: HomeBlock
    store: StoreBlock


def resolve_block(ref: str | dict[str, Any], kinds: Mapping[str, type[Block]], role: str) -> Block:
    """A saved block (`"sqlite-home/shop"`) or an inline one (`{type: sqlite, path: ...}`)."""
    if isinstance(ref, dict):
        # parse_spec has already checked an inline block; a spec built another way is not
        cls, problems = block_problems(ref, kinds, role)
        if problems or cls is None:
            msg = "; ".join(problems)
            raise ConfigError(msg)
        return cls.model_validate({k: v for k, v in ref.items() if k != "type"})
    if "/" not in ref:
        msg = (
            f"{role}: {ref!r} is not a block reference; "
            "write it as '<block-type>/<name>', e.g. 'sqlite-home/shop'"
        )
        raise ConfigError(msg)
    try:
        block = Block.load(ref)
    except (ValueError, KeyError) as exc:
        msg = (
            f"{role}: no saved block {ref!r}. Save it first (README: 'Saving blocks'), "
            "check the name with `prefect block ls`, or give the "
            f"{role} inline as a mapping with `type:`"
        )
        raise ConfigError(msg) from exc
    expected = HomeBlock if role == "home" else StoreBlock
    if not isinstance(block, expected):
        msg = f"{role}: block {ref!r} is a {type(block).__name__}, not a {expected.__name__}"
        raise ConfigError(msg)
    return block


def with_overrides(block: Block, entity: EntitySpec, taken: set[str]) -> Block:
    """A copy of `block` with the entity's settings for it applied."""
    fields = set(type(block).model_fields)
    mine = {k: v for k, v in entity.overrides.items() if k in fields}
    taken.update(mine)
    if not mine:
        return block
    try:
        return type(block).model_validate({**block.model_dump(), **mine})
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(msg, entity=entity.name) from exc


def blocks_of(
    spec: FlowSpec, home: HomeBlock, store: StoreBlock, selected: list[str] | None = None
) -> list[EntityBlocks]:
    """Each selected entity (default: all) with its Home and Store; unknown settings refused."""
    names = selected or [e.name for e in spec.entities]
    out = []
    for name in names:
        entity = spec.entity(name)
        out.append(EntityBlocks(entity, *entity_blocks(entity, home, store)))
    return out


def plan_jobs(
    spec: FlowSpec,
    entities: list[EntityBlocks],
    ledger: WatermarkLedger,
    run_type: RunType | None = None,
    loaded_at: dt.datetime | None = None,
) -> list[EntityJob]:
    """One job per entity, with the mode chosen from run type, ledger and Store.

    `loaded_at` is the run's load timestamp (the polisher's `load_timestamp` column).
    """
    jobs = []
    for e in entities:
        e_plan = plan_entity(
            e,
            ledger.entry(e.name),
            run_type or e.entity.run_type or spec.run_type,
            spec.ledger_name,
        )
        jobs.append(EntityJob(replace(e_plan, loaded_at=loaded_at), e.home, e.store))
    return jobs


def build_jobs(
    spec: FlowSpec,
    home: HomeBlock,
    store: StoreBlock,
    ledger: WatermarkLedger,
    selected: list[str] | None = None,
    run_type: RunType | None = None,
    loaded_at: dt.datetime | None = None,
) -> list[EntityJob]:
    """`blocks_of`, then `plan_jobs`: the jobs of the selected entities, in one call."""
    return plan_jobs(spec, blocks_of(spec, home, store, selected), ledger, run_type, loaded_at)


def check_ledger(
    spec: FlowSpec,
    entities: list[EntityBlocks],
    ledger: WatermarkLedger,
    run_type: RunType | None = None,
) -> None:
    """Raise what planning would about the ledger (another source's entry, a renamed watermark
    column) without asking any Store; the run plans for real once it holds its Stores."""
    for e in entities:
        if (run_type or e.entity.run_type or spec.run_type) == "full_drop":
            continue  # the entry starts over
        entry = ledger.entry(e.name)
        if entry is not None:
            _check_entry(e, entry, spec.ledger_name)


def identity(entity: EntitySpec, home: HomeBlock, store: StoreBlock) -> dict[str, str]:
    """Which source and destination an entity's ledger entry belongs to (no secret in it).

    The Home's location with the entity's table, query (a digest) or path, and where the
    Store puts the table. Tuning (batch size, compression, concurrency) and the entity's
    `columns`/`where` are not part of it: changing them keeps the watermark.
    """
    if entity.table:
        source = f" table={entity.table}"
    elif entity.query:
        text = " ".join(entity.query.split())  # re-indenting a query changes nothing
        source = f" query=sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    elif entity.path:
        source = f" files={os.path.normpath(entity.path)}"
    else:
        source = ""  # the Home reads the entity's name, which keys the entry already
    return {"home": home.location() + source, "store": store.describe(entity.name)}


def entity_blocks(
    entity: EntitySpec, home: HomeBlock, store: StoreBlock
) -> tuple[HomeBlock, StoreBlock]:
    """The Home and Store with the entity's settings for them applied; unknown ones refused."""
    taken: set[str] = set()
    e_home = with_overrides(home, entity, taken)
    e_store = with_overrides(store, entity, taken)
    unknown = sorted(set(entity.overrides) - taken)
    if unknown:
        # a saved block's settings are known only now (an inline one's at parse time)
        msg = "; ".join(
            f"field {k}: {setting_problem(k, type(home), type(store))}" for k in unknown
        )
        raise ConfigError(msg, entity=entity.name)
    assert isinstance(e_home, HomeBlock) and isinstance(e_store, StoreBlock)
    if entity.changes:
        e_store = change_tracking.store_for(entity, e_home, e_store)
    if entity.watermark is not None:
        # a Store that merges by key takes the watermark's keys and columns (Delta)
        e_store = e_store.for_entity(list(entity.watermark.keys), entity.watermark.columns)
        rereads = entity.watermark.rereads()
        if rereads and not e_store.merges_by(list(entity.watermark.keys)):
            msg = (
                f"{rereads} on every run, which only a Store that merges by the watermark's "
                f"`keys` can take without loading them twice; the {e_store.spec_type} Store "
                "does not (it appends each load, or merges by other keys). Use a Delta Store "
                "(`type: delta`), or `nulls: fail`/`skip` and no `lag`"
            )
            raise ConfigError(msg, entity=entity.name)
        if entity.deletes is not None:
            soft = entity.deletes.mode == "soft"
            refusal = e_store.deletes_refusal(list(entity.watermark.keys), soft)
            if refusal:
                msg = f"`deletes: {entity.deletes.mode}`: {refusal}"
                raise ConfigError(msg, entity=entity.name)
    return e_home, e_store


def read_request(entity: EntitySpec) -> ReadRequest:
    """What the entity asks its Home for, before any incremental bound."""
    return ReadRequest(
        entity=entity.name,
        table=entity.table,
        query=entity.query,
        path=entity.path,
        columns=entity.columns,
        where=entity.where,
        batch_size=entity.batch_size,
    )


def plan_entity(
    e: EntityBlocks, entry: LedgerEntry | None, run_type: RunType, ledger_name: str
) -> EntityPlan:
    """The entity's plan: its mode (and why), from its run type, ledger entry and Store."""
    entity, store = e.entity, e.store
    request = read_request(entity)
    wm = entity.watermark
    entry = entry or LedgerEntry()
    previous = entry.watermark
    mine = identity(entity, e.home, store)
    # asked at most once: for a Store in object storage, each ask lists the entity's files
    has_data = functools.cache(lambda: store.has_data(entity.name))

    def plan(
        mode: WriteMode,
        reason: str,
        previous: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> EntityPlan:
        return EntityPlan(
            new_files=entity.incremental == "files",
            reencode=entity.reencode,
            changed_files=entity.changed_files,
            previous_files=files,
            name=entity.name,
            request=request,
            mode=mode,
            watermark_column=wm.label if wm else None,
            watermark_columns=wm.columns if wm else [],
            watermark_keys=list(wm.keys) if wm else list(entity.keys or []),
            watermark_nulls=wm.nulls if wm else "fail",
            watermark_lag=wm.lag if wm else None,
            allow_empty=entity.allow_empty,
            # an entity without a watermark is reloaded in full: its deletes need nothing
            deletes=entity.deletes if wm is not None else None,
            previous_keyset=entry.keyset if previous is not None else None,
            previous=previous,
            reason=reason,
            polish=entity.polish,
            run_type=run_type,
            on_drift=entity.drift.on_drift,
            previous_schema=entry.schema,
            # a rebuilt table takes the source's schema as it is now
            schema_reset=run_type == "full_drop" or not has_data(),
            identity=mine,
            changes=entity.changes,
            previous_version=version,
        )

    if run_type == "full_drop":
        return plan("replace", "full_drop: replace the table")  # the entry starts over
    _check_entry(e, entry, ledger_name, mine)
    if entity.changes:
        version = stored_version(entry.changes)
        if version is None:
            return plan("replace", "first load: no change-tracking version yet")
        if not has_data():
            return plan("replace", "destination is empty: reloading the table")
        return plan("append", f"change tracking: changes since version {version}", version=version)
    if wm is None and entity.incremental == "files":
        if entry.files is None:
            return plan("replace", "first load: no file loaded yet")
        if not has_data():
            return plan("replace", "destination is empty: reloading every file")
        return plan("append", "new files only", files=entry.files)
    if wm is None:
        return plan("replace", "no watermark: full reload")
    if not previous:
        return plan("replace", "first load: no watermark yet")
    if not has_data():
        return plan("replace", "destination is empty: reloading from the start")
    return plan("append", "incremental", previous)


def _check_entry(
    e: EntityBlocks, entry: LedgerEntry, ledger_name: str, mine: dict[str, str] | None = None
) -> None:
    """Refuse to load on from an entry of another source, or of another watermark column."""
    entity = e.entity
    mine = mine or identity(entity, e.home, e.store)
    # an entry written before hygge kept identities has none: accepted, and its next commit
    # records one (every commit writes the plan's identity)
    theirs = entry.identity
    if theirs is not None and theirs != mine:
        raise ConfigError(_not_ours(ledger_name, theirs, mine), entity=entity.name)
    wm = entity.watermark
    if wm is not None and entry.watermark and entry.watermark_column != wm.label:
        msg = (
            f"the ledger's watermark is on column {entry.watermark_column!r} but the spec now "
            f"says {wm.label!r}; run this entity once with --full-drop to reload it and start over"
        )
        raise ConfigError(msg, entity=entity.name)


def resolve_blocks(spec: FlowSpec) -> tuple[HomeBlock, StoreBlock]:
    """The spec's Home and Store, saved or inline, checked to be of the right kind."""
    from blocks import HOMES, STORES

    home = resolve_block(spec.home, HOMES, "home")
    store = resolve_block(spec.store, STORES, "store")
    if "spec_name" in type(store).model_fields and getattr(store, "spec_name", None) is None:
        # a Store that names its spec in each table's metadata (Delta) learns it here
        store = store.model_copy(update={"spec_name": spec.name})
    assert isinstance(home, HomeBlock) and isinstance(store, StoreBlock)
    return home, store


def _not_ours(ledger_name: str, theirs: dict[str, Any], mine: dict[str, str]) -> str:
    changed = "; ".join(
        f"its {role} was {theirs.get(key)!r}, this spec's is {mine.get(key)!r}"
        for key, role in (("home", "source"), ("store", "destination"))
        if theirs.get(key) != mine.get(key)
    )
    return (
        f"the ledger {ledger_name!r} holds a watermark loaded elsewhere ({changed}); "
        "loading on from it would skip or repeat rows. If another spec has the same `name`, "
        "give this one its own `name` (or `ledger:`); if the source or destination really "
        "moved, run this entity once with --full-drop to reload it and start over"
    )

"""From a validated spec to runnable pieces: resolved blocks and one plan per entity."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from prefect.blocks.core import Block
from pydantic import ValidationError

from blocks import HomeBlock, StoreBlock, WatermarkLedger
from blocks.base import ReadRequest, WriteMode
from flows.spec import EntitySpec, FlowSpec, RunType
from hygge_tasks.errors import ConfigError
from hygge_tasks.move import EntityPlan


@dataclass
class EntityJob:
    """An entity ready to run: its plan and the blocks with its overrides applied."""

    plan: EntityPlan
    home: HomeBlock
    store: StoreBlock


def resolve_block(ref: str | dict[str, Any], kinds: Mapping[str, type[Block]], role: str) -> Block:
    """A saved block (`"sqlite-home/shop"`) or an inline one (`{type: sqlite, path: ...}`)."""
    if isinstance(ref, dict):
        spec = dict(ref)
        kind = spec.pop("type", None)
        if kind not in kinds:
            msg = f"{role}: unknown type {kind!r}; choose one of: {', '.join(sorted(kinds))}"
            raise ConfigError(msg)
        try:
            return kinds[kind](**spec)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            msg = f"{role} ({kind}): {fields}"
            raise ConfigError(msg) from exc
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


def build_jobs(
    spec: FlowSpec,
    home: HomeBlock,
    store: StoreBlock,
    ledger: WatermarkLedger,
    selected: list[str] | None = None,
    run_type: RunType | None = None,
    loaded_at: dt.datetime | None = None,
) -> list[EntityJob]:
    """One job per selected entity, with the mode chosen from run type, ledger and Store.

    `loaded_at` is the run's load timestamp (the polisher's `load_timestamp` column).
    """
    names = selected or [e.name for e in spec.entities]
    jobs = []
    for name in names:
        entity = spec.entity(name)
        e_home, e_store = entity_blocks(entity, home, store)
        e_plan = _plan(entity, e_store, ledger, run_type or entity.run_type or spec.run_type)
        jobs.append(EntityJob(replace(e_plan, loaded_at=loaded_at), e_home, e_store))
    return jobs


def entity_blocks(
    entity: EntitySpec, home: HomeBlock, store: StoreBlock
) -> tuple[HomeBlock, StoreBlock]:
    """The Home and Store with the entity's settings for them applied; unknown ones refused."""
    taken: set[str] = set()
    e_home = with_overrides(home, entity, taken)
    e_store = with_overrides(store, entity, taken)
    unknown = sorted(set(entity.overrides) - taken)
    if unknown:
        msg = (
            f"unknown field(s) {', '.join(unknown)}: not an entity field, nor a setting of "
            f"{type(home).__name__} or {type(store).__name__}"
        )
        raise ConfigError(msg, entity=entity.name)
    assert isinstance(e_home, HomeBlock) and isinstance(e_store, StoreBlock)
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


def _plan(
    entity: EntitySpec, store: StoreBlock, ledger: WatermarkLedger, run_type: RunType
) -> EntityPlan:
    request = read_request(entity)
    wm = entity.watermark
    entry = ledger.value.get(entity.name) or {}
    previous = entry.get("watermark")

    def plan(mode: WriteMode, reason: str, previous: dict[str, Any] | None = None) -> EntityPlan:
        return EntityPlan(
            name=entity.name,
            request=request,
            mode=mode,
            watermark_column=wm.column if wm else None,
            watermark_keys=list(wm.keys) if wm else [],
            previous=previous,
            reason=reason,
            polish=entity.polish,
            run_type=run_type,
            on_drift=entity.drift.on_drift,
            previous_schema=entry.get("schema"),
            # a rebuilt table takes the source's schema as it is now
            schema_reset=run_type == "full_drop" or not store.has_data(entity.name),
        )

    if run_type == "full_drop":
        return plan("replace", "full_drop: replace the table")
    if wm is None:
        return plan("replace", "no watermark: full reload")
    if previous and previous.get("column") != wm.column:
        msg = (
            f"the ledger's watermark is on column {previous.get('column')!r} but the spec now says "
            f"{wm.column!r}; run this entity once with --full-drop to reload it and start over"
        )
        raise ConfigError(msg, entity=entity.name)
    if not previous:
        return plan("replace", "first load: no watermark yet")
    if not store.has_data(entity.name):
        return plan("replace", "destination is empty: reloading from the start")
    return plan("append", "incremental", previous)

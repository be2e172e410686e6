"""What a `changes: change_tracking` entity needs of its spec, Home and Store.

The spec check (`flows.spec.EntitySpec`) refuses the settings that make no sense beside the
source's own change tracking; planning (`flows.plan.entity_blocks`) refuses a Home without
change tracking and a Store that cannot upsert and delete by the entity's `keys`. The run
itself is `hygge_tasks.changes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blocks import HomeBlock, StoreBlock
from hygge_core.errors import ConfigError

if TYPE_CHECKING:
    from flows.spec import EntitySpec


def problem(entity: EntitySpec) -> str | None:
    """What makes no sense in a change-tracking entity, or None."""
    if not entity.keys:
        return (
            "needs `keys`, the table's primary key columns: changes are upserted and deleted "
            "by them"
        )
    if not entity.table:
        return "reads CHANGETABLE of a `table`: give `table`, not a `query` or `path`"
    if entity.watermark is not None:
        return (
            "moves by the table's change-tracking version: remove `watermark` (a watermark "
            "column sees no deletes, and the two would disagree on what was read)"
        )
    if entity.deletes is not None:
        return "delivers deletes itself (its `D` rows): remove `deletes`"
    if entity.incremental is not None:
        return "reads a table: remove `incremental: files`"
    if entity.where:
        return (
            "reads every change of the table: remove `where` (a row updated out of it would "
            "stay at the destination)"
        )
    if entity.columns is not None and (
        missing := [k for k in entity.keys if k not in entity.columns]
    ):
        return f"needs the `keys` among `columns`: add {', '.join(missing)}"
    return None


def store_for(entity: EntitySpec, home: HomeBlock, store: StoreBlock) -> StoreBlock:
    """The Store for a change-tracking entity, which must upsert and delete by its keys."""
    keys = list(entity.keys or [])
    if not home.reads_changes:
        msg = (
            f"`changes: {entity.changes}` reads SQL Server's Change Tracking; the "
            f"{home.spec_type} Home has none (use `type: mssql`, or a `watermark`)"
        )
        raise ConfigError(msg, entity=entity.name)
    store = store.for_entity(keys, [])
    refusal = store.deletes_refusal(keys)
    if refusal is None and not (store.keeps_log or store.merges_by(keys)):
        refusal = (
            f"the {store.spec_type} Store does not upsert by the `keys` {keys} (for Open "
            "Mirroring set `key_columns` to them and keep `row_marker: upsert`)"
        )
    if refusal:
        msg = (
            f"`changes: {entity.changes}` upserts changed rows and deletes deleted ones by "
            f"`keys`: {refusal}"
        )
        raise ConfigError(msg, entity=entity.name)
    return store

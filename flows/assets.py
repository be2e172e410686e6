"""Committed entities as Prefect assets: one materialization per entity, at commit time.

The parent flow calls `record` right after the ledger covers an entity's data, so an asset
event always means the data is published and its watermark saved; a failed entity, or one
that found nothing new, records none. The events come from one small materializing task per
commit batch (Prefect's own `@materialize` machinery), with the entity's figures as metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE

from blocks.base import StoreBlock


@dataclass(frozen=True)
class Committed:
    """What one entity's committed run produced (from its result or its manifest)."""

    entity: str
    store: StoreBlock
    run_id: str
    mode: str
    rows: int
    bytes: int
    files: int
    watermark: dict[str, Any] | None

    def metadata(self, spec: str) -> dict[str, Any]:
        wm = self.watermark or {}
        return {
            "rows": self.rows,
            "bytes": self.bytes,
            "files": self.files,
            "watermark": {"column": wm.get("column"), "value": wm.get("value")} if wm else None,
            "mode": self.mode,
            "run_id": self.run_id,
            "spec": spec,
            "entity": self.entity,
        }


def _add_metadata(metadata: dict[str, dict[str, Any]]) -> None:
    for key, values in metadata.items():
        add_asset_metadata(key, values)


def record(spec: str, committed: list[Committed], logger: Any) -> None:
    """Emit one asset materialization per committed entity; never fails the run."""
    assets: dict[str, Asset] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for c in committed:
        try:
            key = c.store.asset_key(c.entity)
            assets[key] = Asset(
                key=key,
                properties=AssetProperties(
                    name=c.entity, description=f"hygge spec {spec!r}: {c.store.describe(c.entity)}"
                ),
            )
        except Exception as exc:  # the data is committed; a missing asset is only a report gap
            logger.warning("%s: committed, but its Prefect asset has no key: %s", c.entity, exc)
            continue
        metadata[key] = c.metadata(spec)
    if not assets:
        return
    task = materialize(
        *assets.values(),
        by="hygge",
        name="assets",
        cache_policy=NO_CACHE,
        persist_result=False,
        log_prints=False,
    )(_add_metadata)
    try:
        task(metadata)
    except Exception as exc:
        names = ", ".join(c.entity for c in committed)
        logger.warning("committed %s, but recording their Prefect assets failed: %s", names, exc)

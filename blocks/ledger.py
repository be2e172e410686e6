"""The watermark ledger: one JSON block per flow spec, written only by the parent flow."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from blocks.base import LOGO
from hygge_core.errors import LedgerError


class WatermarkLedger(Block):
    """How far each entity of one flow spec has been loaded.

    `value` maps entity name to its entry: the watermark (column, value, and the identities of
    the rows loaded at exactly that value), the run that committed it, and its row count. Only
    the parent flow writes it, once per committed entity: many writers of one block lose
    updates.

    Example:
        ```python
        from blocks import WatermarkLedger
        ledger = WatermarkLedger.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "hygge Watermark Ledger"
    _block_type_slug = "hygge-watermark-ledger"
    _logo_url = LOGO
    _description = "Per-entity watermarks of one hygge flow spec (written by the flow)."

    value: dict[str, Any] = Field(
        default_factory=dict, description="Entity name to its watermark entry (JSON)."
    )

    def _event_method_called_resources(self) -> Any:
        # no `block loaded` event per ledger read: a dry run would otherwise open the events
        # websocket only to flush that one event at exit (~0.5 s of a 3 s command)
        return None

    @classmethod
    def load_or_new(cls, name: str) -> WatermarkLedger:
        """The saved ledger, or an empty one when this spec has never run."""
        try:
            ledger = cls.load(name)
        except ValueError as exc:
            if "Unable to find" in str(exc) or "not found" in str(exc).lower():
                return cls()
            msg = f"cannot read the watermark ledger {name!r}: {exc}"
            raise LedgerError(msg) from exc
        assert isinstance(ledger, WatermarkLedger)  # load() is sync outside an event loop
        return ledger

    def commit(self, name: str, entity: str, entry: dict[str, Any] | None) -> None:
        """Set one entity's entry and save the ledger."""
        self.commit_many(name, {entity: entry})

    def commit_many(self, name: str, entries: dict[str, dict[str, Any] | None]) -> None:
        """Set several entities' entries and save the ledger once (the only write path).

        One save costs several API calls and grows with the ledger, so the flow commits the
        entities that finished close together in one save.
        """
        for entity, entry in entries.items():
            if entry is None:
                self.value.pop(entity, None)
            else:
                self.value[entity] = entry
        try:
            self.save(name, overwrite=True)
        except Exception as exc:
            msg = f"cannot save the watermark ledger {name!r}: {exc}"
            one = next(iter(entries)) if len(entries) == 1 else None
            raise LedgerError(msg, entity=one) from exc

"""The watermark ledger: one JSON block per flow spec, written only by the parent flow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from blocks.base import LOGO
from hygge_core.errors import LedgerError
from hygge_core.ledger_entry import LedgerEntry

#: what `commit` takes for an entity: an entry, its JSON, or None to forget the entity
Entry = LedgerEntry | Mapping[str, Any] | None


class WatermarkLedger(Block):
    """How far each entity of one flow spec has been loaded.

    `value` maps entity name to its entry (`hygge_core.ledger_entry.LedgerEntry`, kept as
    JSON): the watermark (column, value, and the identities of the rows loaded at exactly that
    value), the run that committed it, its row count, schema and identity. Only
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

    def entry(self, entity: str) -> LedgerEntry | None:
        """The entity's entry, or None when it has never been committed."""
        data = self.value.get(entity)
        return None if data is None else LedgerEntry.from_json(data, entity)

    def commit(self, name: str, entity: str, entry: Entry) -> None:
        """Set one entity's entry and save the ledger."""
        self.commit_many(name, {entity: entry})

    def commit_many(self, name: str, entries: Mapping[str, Entry]) -> None:
        """Set several entities' entries and save the ledger once (the only write path).

        One save costs several API calls and grows with the ledger, so the flow commits the
        entities that finished close together in one save. An entry given as JSON is read as a
        `LedgerEntry` first, so what is saved always has the entry's form.
        """
        for entity, entry in entries.items():
            if entry is None:
                self.value.pop(entity, None)
                continue
            if not isinstance(entry, LedgerEntry):
                entry = LedgerEntry.from_json(entry, entity)
            self.value[entity] = entry.to_json()
        try:
            self.save(name, overwrite=True)
        except Exception as exc:
            msg = f"cannot save the watermark ledger {name!r}: {exc}"
            one = next(iter(entries)) if len(entries) == 1 else None
            raise LedgerError(msg, entity=one) from exc

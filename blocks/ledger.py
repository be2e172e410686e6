"""The watermark ledger: one JSON block per flow spec, written only by the parent flow."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from pydantic import Field, PrivateAttr

from blocks.base import LOGO
from hygge_core.errors import LedgerError
from hygge_core.ledger_entry import LedgerEntry

#: what `commit` takes for an entity: an entry, its JSON, or None to forget the entity
Entry = LedgerEntry | Mapping[str, Any] | None
#: a server busy with other writes (SQLite's "database is locked": 503) is asked again after
#: these pauses (the last one repeated) until `BUSY_GIVE_UP` seconds have passed; the client's
#: own retries wait 2, 4, 8 s, which made the last save of 200 entities take 7 s
BUSY_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
BUSY_GIVE_UP = 120.0


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
    #: the server refused the one-call save once: use Prefect's own from then on
    _full_saves: bool = PrivateAttr(default=False)

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
            self._save_soon(name)
        except Exception as exc:
            msg = f"cannot save the watermark ledger {name!r}: {exc}"
            one = next(iter(entries)) if len(entries) == 1 else None
            raise LedgerError(msg, entity=one) from exc

    def _save_soon(self, name: str) -> None:
        """Save: once the ledger has a block document, one PATCH of its value, asked again
        after short pauses while the server is busy or the connection drops; else (or if the
        server refuses it) `save`."""
        if self._block_document_id is None or self._full_saves:
            self.save(name, overwrite=True)
            return
        payload = {"data": {"value": self.value}, "merge_existing_data": False}
        deadline = time.monotonic() + BUSY_GIVE_UP
        path = f"/block_documents/{self._block_document_id}"
        with get_client(sync_client=True) as client:
            # the client's configured HTTP session (base URL, auth, TLS); httpx's own `send`
            # is one attempt, where the Prefect session's would back off 2, 4, 8 s on a 503
            http = client._client
            for attempt in range(100_000):
                pause = BUSY_PAUSES[min(attempt, len(BUSY_PAUSES) - 1)]
                try:
                    response = httpx.Client.send(
                        http, http.build_request("PATCH", path, json=payload)
                    )
                except httpx.TransportError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(pause)
                    continue
                if response.status_code != 503 or time.monotonic() >= deadline:
                    break
                time.sleep(pause)
        if response.status_code == 503:
            response.raise_for_status()
        if not response.is_success:
            # a block document gone since it was read, a server that wants a CSRF token...:
            # the full save handles them, from now on
            self._full_saves = True
            self.save(name, overwrite=True)

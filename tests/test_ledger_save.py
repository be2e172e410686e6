"""The ledger's save against the real Prefect test server: one PATCH once the block exists, and
Prefect's full save when the server refuses it."""

from __future__ import annotations

import pytest

from blocks import WatermarkLedger
from hygge_core.ledger_entry import LedgerEntry

pytestmark = pytest.mark.integration


def entry(rows: int) -> LedgerEntry:
    return LedgerEntry(watermark=None, run_id=f"r{rows}", rows=rows, mode="replace")


def test_later_saves_patch_the_block_and_read_back_exactly(spec_name: str) -> None:
    ledger = WatermarkLedger.load_or_new(spec_name)
    ledger.commit_many(spec_name, {"a": entry(1)})  # creates the block document
    first_id = ledger._block_document_id
    ledger.commit_many(spec_name, {"b": entry(2), "a": entry(3)})
    assert ledger._block_document_id == first_id and not ledger._full_saves
    again = WatermarkLedger.load(spec_name)
    assert isinstance(again, WatermarkLedger)
    assert {k: v["rows"] for k, v in again.value.items()} == {"a": 3, "b": 2}
    assert again.value == ledger.value
    # an entity forgotten (None) is gone from the saved block too
    ledger.commit_many(spec_name, {"b": None})
    assert set(WatermarkLedger.load_or_new(spec_name).value) == {"a"}


def test_a_block_deleted_behind_the_flow_is_saved_again_in_full(spec_name: str) -> None:
    from prefect.client.orchestration import get_client

    ledger = WatermarkLedger.load_or_new(spec_name)
    ledger.commit_many(spec_name, {"a": entry(1)})
    assert ledger._block_document_id is not None
    with get_client(sync_client=True) as client:
        client.delete_block_document(ledger._block_document_id)
    # the PATCH finds no document (404): Prefect's own save creates it again, with everything
    ledger.commit_many(spec_name, {"b": entry(2)})
    assert ledger._full_saves
    saved = WatermarkLedger.load_or_new(spec_name)
    assert {k: v["rows"] for k, v in saved.value.items()} == {"a": 1, "b": 2}

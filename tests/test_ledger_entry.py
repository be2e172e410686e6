"""The typed ledger entry: every form a saved ledger holds reads, and writes back, as it was."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from blocks import WatermarkLedger
from flows.spec import parse_spec
from hygge_core.errors import LedgerError
from hygge_core.ledger_entry import LedgerEntry
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import events_rows, spec_for

WATERMARK = {"column": "ts", "kind": "datetime", "value": "2024-05-01T12:00:00", "boundary": ["7"]}
SCHEMA = {"arrow": "c2NoZW1h", "absent": []}
IDENTITY = {"home": "sqlite path=/x.sqlite table=events", "store": "parquet /lake/events/"}
# what `hygge_tasks.move` writes today
TODAY = {
    "watermark": WATERMARK,
    "run_id": "20240501T120000000000Z-abcd1234-9f3e",
    "rows": 250,
    "mode": "append",
    "committed_at": "2024-05-01T12:00:01+00:00",
    "schema": SCHEMA,
    "identity": IDENTITY,
}
# earlier versions wrote fewer keys; a no-watermark entity's entry has a null watermark
FORMS = {
    "today": TODAY,
    "before identities": {k: v for k, v in TODAY.items() if k != "identity"},
    "before schemas": {k: v for k, v in TODAY.items() if k not in ("identity", "schema")},
    "no watermark": {**TODAY, "watermark": None, "mode": "replace"},
    "watermark only": {"watermark": {"column": "ts", "value": 5}},
    "null watermark only": {"watermark": None},
}


@pytest.mark.parametrize("form", list(FORMS), ids=list(FORMS))
def test_every_entry_form_reads_and_writes_back_unchanged(form: str) -> None:
    data = FORMS[form]
    entry = LedgerEntry.from_json(data)
    assert entry.to_json() == data
    assert entry.watermark == data["watermark"]
    assert entry.schema == data.get("schema")
    assert entry.identity == data.get("identity")
    assert entry.rows == data.get("rows")
    assert entry.watermark_column == (data["watermark"] or {}).get("column")


def test_the_watermark_is_opaque_and_unknown_keys_are_kept() -> None:
    # a later watermark format, and a key written by a later hygge, survive a read and a write
    data = {
        **TODAY,
        "watermark": {**WATERMARK, "boundary_format": "v2"},
        "note": {"from": "a later hygge"},
    }
    entry = LedgerEntry.from_json(data)
    assert entry.watermark == {**WATERMARK, "boundary_format": "v2"}
    assert entry.extra == {"note": {"from": "a later hygge"}}
    assert entry.to_json() == data


def test_an_empty_schema_is_not_written() -> None:
    # a move whose source sent no batch remembers no schema; the entry then has no `schema`
    entry = LedgerEntry(watermark=None, run_id="r", rows=0, mode="replace", committed_at="t")
    assert entry.to_json() == {
        "watermark": None,
        "run_id": "r",
        "rows": 0,
        "mode": "replace",
        "committed_at": "t",
    }
    assert LedgerEntry.from_json({**entry.to_json(), "schema": None}) == entry


def test_the_entry_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LedgerEntry().rows = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], r"entity 'events': the ledger entry is list \[1, 2\], not a JSON object"),
        ({"watermark": "ts=5"}, r"entity 'events': the ledger entry's 'watermark' is 'ts=5'"),
        ({"watermark": None, "identity": "x"}, r"the ledger entry's 'identity' is 'x'"),
    ],
)
def test_a_broken_entry_names_the_entity_and_the_fix(data: Any, message: str) -> None:
    with pytest.raises(LedgerError, match=message) as info:
        LedgerEntry.from_json(data, "events")
    assert "run the entity once with --full-drop" in str(info.value)


def test_a_ledger_reads_entries_typed_and_saves_them_as_json(spec_name: str) -> None:
    ledger = WatermarkLedger.load_or_new(spec_name)
    assert ledger.entry("events") is None
    ledger.commit_many(
        spec_name, {"events": LedgerEntry.from_json(TODAY), "old": FORMS["before schemas"]}
    )
    again = WatermarkLedger.load(spec_name)
    assert again.value == {"events": TODAY, "old": FORMS["before schemas"]}
    assert again.entry("events") == LedgerEntry.from_json(TODAY)
    assert again.entry("old").schema is None  # type: ignore[union-attr]
    again.commit(spec_name, "old", None)
    assert set(WatermarkLedger.load(spec_name).value) == {"events"}


def test_a_run_commits_the_entry_its_move_built(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    spec = spec_for(spec_name, db, tmp_path / "lake")
    assert run_flow(spec).is_completed()
    saved = ledger_of(spec)["events"]
    entry = WatermarkLedger.load_or_new(parse_spec(spec).ledger_name).entry("events")
    assert entry is not None
    assert entry.to_json() == saved
    assert sorted(saved) == sorted(TODAY)
    assert (entry.mode, entry.rows, entry.watermark_column) == ("replace", 100, "ts")
    assert entry.watermark_value == "2024-05-01T12:00:19"
    assert entry.identity == {
        "home": f"sqlite path={db} table=events",
        "store": f"parquet {tmp_path / 'lake'}/events/",
    }
    assert entry.schema is not None and "arrow" in entry.schema

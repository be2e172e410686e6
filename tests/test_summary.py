"""The end-of-run table: what a terminal user reads under it."""

from __future__ import annotations

from flows.summary import SummaryRow, render
from hygge_tasks.entity import EntityResult


def result(entity: str, **extra: object) -> EntityResult:
    base = {"run_id": "r1", "mode": "append", "rows": 10, "bytes": 100, "seconds": 1.0}
    return EntityResult(entity=entity, files=["f1"], **{**base, **extra})  # type: ignore[arg-type]


def test_the_table_says_what_more_than_files_a_run_did() -> None:
    rows = [
        SummaryRow.ok(result("plain")),
        SummaryRow.ok(result("orders", deleted=1000)),
        SummaryRow.ok(result("lines", copied_files=3)),
        SummaryRow.ok(result("quiet", changed=False, rows=0)),
        SummaryRow.ok(result("ct", home_note="change tracking version too old: reloaded")),
    ]
    lines = render(rows).splitlines()
    notes = [line for line in lines[len(rows) + 2 :] if line]
    assert notes == [
        "  orders: 1 file(s); 1,000 deleted (gone from the source)",
        "  lines: 1 file(s); copied as they are (3 source files, no re-encode)",
        "  ct: 1 file(s); change tracking version too old: reloaded",
    ]
    # the artifact's rows carry the same detail
    assert rows[1].as_dict()["detail"] == "1 file(s); 1,000 deleted (gone from the source)"

"""The end-of-run summary: one row per entity, printed and published as a table artifact."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

from prefect.artifacts import create_table_artifact

from hygge_tasks.entity import EntityResult


@dataclass
class SummaryRow:
    entity: str
    status: str
    mode: str
    rows: int
    seconds: float
    rows_per_second: float
    watermark: str
    detail: str
    ran_on: str = ""
    #: bytes written to the Store per second (compressed Parquet), for upload-bound Stores
    mb_per_second: float = 0.0
    #: what the destination's own service says of the table (Fabric's mirroring monitor)
    fabric: str = ""
    #: the run published something (its verdict must be newer than the run)
    changed: bool = False
    #: the detail says more than the files written: the terminal prints it under the table
    noteworthy: bool = False

    @classmethod
    def ok(cls, result: EntityResult) -> SummaryRow:
        wm = result.watermark or {}
        plain = "no new rows" if not result.changed else f"{len(result.files)} file(s)"
        detail = plain
        if result.null_watermark_rows:
            detail += f"; {result.null_watermark_rows} NULL-watermark rows skipped"
        if result.changed and result.rows == 0 and not result.deleted:
            detail = "source is empty: published an empty table"
        if result.deleted:
            detail += f"; {result.deleted:,} deleted (gone from the source)"
        if result.copied_files:
            detail += f"; copied as they are ({result.copied_files} source files, no re-encode)"
        if result.schema_change:
            detail += f"; {result.schema_change}"
        if result.home_note:
            detail += f"; {result.home_note}"
        return cls(
            entity=result.entity,
            status="ok",
            mode=result.mode,
            rows=result.rows,
            seconds=round(result.seconds, 3),
            rows_per_second=round(result.rows_per_second),
            watermark=str(wm.get("value", "")) if wm else "",
            detail=detail,
            ran_on=result.ran_on,
            mb_per_second=round(result.bytes / result.seconds / 1e6, 2) if result.seconds else 0.0,
            changed=result.changed,
            noteworthy=detail != plain,
        )

    @classmethod
    def failed(cls, entity: str, mode: str, error: BaseException) -> SummaryRow:
        return cls(entity, "FAILED", mode, 0, 0.0, 0.0, "", _short(error))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(error: BaseException) -> str:
    # whole: the end of a message says what to do next
    return str(error).strip() or type(error).__name__


def render(rows: list[SummaryRow]) -> str:
    """A fixed-width table for the terminal."""
    headers = ["entity", "status", "mode", "rows", "seconds", "rows/s", "MB/s", "watermark"]
    fabric = any(r.fabric for r in rows)
    body = [
        [
            r.entity,
            r.status,
            r.mode,
            f"{r.rows:,}",
            f"{r.seconds:.2f}",
            f"{r.rows_per_second:,.0f}",
            f"{r.mb_per_second:.1f}",
            r.watermark,
            *([r.fabric] if fabric else []),
        ]
        for r in rows
    ]
    if fabric:
        headers.append("fabric")
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    notes = [f"  {r.entity}: {r.detail}" for r in rows if r.status != "ok" or r.noteworthy]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def publish_summary(rows: list[SummaryRow]) -> None:
    """The table as the run's `hygge-summary` artifact in the Prefect UI."""
    # the summary is also logged; an artifact hiccup must not fail the run
    with contextlib.suppress(Exception):
        create_table_artifact(
            key="hygge-summary", table=[r.as_dict() for r in rows], description="hygge run summary"
        )

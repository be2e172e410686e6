"""The run journal: one record per entity per flow run, successes and failures alike.

Records are kept beside the Store's data as a Parquet dataset, one small file per flow run
(`<store path>/_journal/<run_id>.parquet` for the `ParquetStore`), so the whole history reads
with one call and no run ever rewrites another run's file:

    pl.scan_parquet("lake/_journal/*.parquet")

The parent flow adds each record as its entity finishes and, with each ledger save, the Store
replaces this run's file in one step (temp file, then rename), so a run that dies still leaves
the records of the entities it committed. The same rows appear in the Prefect UI as a table
artifact, and `python -m flows.run --history` prints the recent ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from blocks.base import StoreBlock, utc_now
from hygge_tasks.entity import EntityPlan, EntityResult

SCHEMA = pa.schema(
    [
        ("flow", pa.string()),
        ("entity", pa.string()),
        ("run_id", pa.string()),
        ("run_type", pa.string()),
        ("mode", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int32()),
        ("started_at", pa.timestamp("us", "UTC")),
        ("ended_at", pa.timestamp("us", "UTC")),
        ("seconds", pa.float64()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("files", pa.list_(pa.string())),
        ("watermark_column", pa.string()),
        ("watermark_before", pa.string()),
        ("watermark_after", pa.string()),
        ("schema_change", pa.string()),
        ("error", pa.string()),
        # NULL-watermark rows an incremental run skipped (`watermark.nulls: skip`)
        ("null_watermark_rows", pa.int64()),
        # rows read into the Store's writer and rows its staged files held, reconciled before
        # publishing (a mismatch fails the entity)
        ("rows_read", pa.int64()),
        ("rows_published", pa.int64()),
        # rows deleted at the destination because the source no longer has them (`deletes:`)
        ("deleted", pa.int64()),
        # the destination service's verdict on the table after the run (Fabric's monitor)
        ("destination_verdict", pa.string()),
        # what the Home reported about the read (a change-tracking reload and why)
        ("note", pa.string()),
    ]
)


@dataclass
class JournalRecord:
    """One entity's run, as the journal keeps it."""

    flow: str
    entity: str
    run_id: str
    run_type: str
    mode: str
    status: str  # "ok" or "failed"
    started_at: dt.datetime
    ended_at: dt.datetime
    attempts: int | None = None
    rows: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    watermark_column: str | None = None
    watermark_before: str | None = None
    watermark_after: str | None = None
    schema_change: str | None = None
    error: str | None = None
    null_watermark_rows: int = 0
    rows_read: int | None = None
    rows_published: int | None = None
    deleted: int = 0
    destination_verdict: str | None = None
    note: str | None = None

    @property
    def seconds(self) -> float:
        return max((self.ended_at - self.started_at).total_seconds(), 0.0)

    def as_row(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds}

    def as_artifact_row(self) -> dict[str, Any]:
        """JSON-friendly, for the Prefect UI."""
        row = self.as_row()
        row["started_at"] = self.started_at.isoformat(timespec="seconds")
        row["ended_at"] = self.ended_at.isoformat(timespec="seconds")
        row["seconds"] = round(self.seconds, 3)
        row["files"] = ", ".join(self.files)
        return {k: ("" if v is None else v) for k, v in row.items()}


def watermark_value(watermark: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(column, value) of a watermark's JSON (`LedgerEntry.watermark`), as text."""
    if not watermark:
        return None, None
    value = watermark.get("value")
    return watermark.get("column"), None if value is None else str(value)


class Journal:
    """This flow run's records, written to each Store area they belong to as they arrive."""

    def __init__(self, flow: str, run_id: str, logger: Any) -> None:
        self.flow = flow
        self.run_id = run_id
        self.logger = logger
        self.records: list[JournalRecord] = []
        self._by_area: dict[str, tuple[StoreBlock, list[JournalRecord]]] = {}
        #: each area's records as journal rows, made once per record
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._dirty: set[str] = set()
        self._failed: set[str] = set()

    def ok(
        self,
        plan: EntityPlan,
        store: StoreBlock,
        result: EntityResult,
        before: dict[str, Any] | None,
        started_at: dt.datetime,
    ) -> None:
        """Record a committed entity; `before` is its ledger watermark before this run."""
        column, was = watermark_value(before)
        after_column, now = watermark_value(result.watermark)
        record = JournalRecord(
            **self._common(plan, started_at),
            attempts=result.attempts,
            mode=result.mode,
            status="ok",
            rows=result.rows,
            bytes=result.bytes,
            files=list(result.files),
            watermark_column=after_column or column,
            watermark_before=was,
            watermark_after=now,
            schema_change=result.schema_change,
            null_watermark_rows=result.null_watermark_rows,
            rows_read=result.rows_read,
            rows_published=result.rows_published,
            deleted=result.deleted,
            note=result.home_note,
        )
        self.add(store, record)

    def failed(
        self,
        plan: EntityPlan,
        store: StoreBlock,
        error: BaseException,
        before: dict[str, Any] | None,
        started_at: dt.datetime,
    ) -> None:
        """Record an entity that did not commit: its watermark stays where it was."""
        column, was = watermark_value(before)
        # a failed reconciliation carries both counts (`hygge_tasks.move._reconcile`)
        read, published = getattr(error, "hygge_rows", (None, None))
        record = JournalRecord(
            **self._common(plan, started_at),
            rows_read=read,
            rows_published=published,
            # set by the task on its last attempt; None when the task never ran
            attempts=getattr(error, "hygge_attempts", None),
            mode=plan.mode,
            status="failed",
            watermark_column=column or plan.watermark_column,
            watermark_before=was,
            watermark_after=was,
            error=str(error).strip() or type(error).__name__,
        )
        self.add(store, record)

    def _common(self, plan: EntityPlan, started_at: dt.datetime) -> dict[str, Any]:
        # started: when the parent handed the entity to a worker; ended: when it came back
        return {
            "flow": self.flow,
            "entity": plan.name,
            "run_id": self.run_id,
            "run_type": plan.run_type,
            "started_at": started_at,
            "ended_at": utc_now(),
        }

    def add(self, store: StoreBlock, record: JournalRecord) -> None:
        """Keep the record; `flush` writes it with the others of its Store area."""
        self.records.append(record)
        area = store.lock_id()
        self._by_area.setdefault(area, (store, []))[1].append(record)
        self._rows.setdefault(area, []).append(record.as_row())
        self._dirty.add(area)

    def unwritten(self) -> bool:
        return bool(self._dirty)

    def flush(self) -> None:
        """Rewrite this run's journal file in each Store area that has new records.

        Called with each ledger save (and at the end of the run), not once per entity: a
        rewrite per entity made a run of 1,000 entities rewrite half a million rows.
        """
        for area in sorted(self._dirty):
            store, mine = self._by_area[area]
            try:
                store.write_journal(self.run_id, rows_table(self._rows[area]))
            except Exception as exc:
                # the data and the ledger are committed already; a journal that cannot be
                # written is reported (once per Store), tried again with the next flush, and
                # not allowed to fail the entity
                if area not in self._failed:
                    names = ", ".join(r.entity for r in mine[-3:])
                    self.logger.error("%s: cannot write the run journal: %s", names, exc)
                self._failed.add(area)
                continue
            self._dirty.discard(area)

    def verdict(self, store: StoreBlock, entity: str, verdict: str, failed: bool) -> None:
        """Add the destination's verdict to the entity's record (and fail it, if it failed)."""
        area = store.lock_id()
        _, mine = self._by_area.get(area, (store, []))
        for i, record in enumerate(mine):
            if record.entity == entity:
                record.destination_verdict = verdict
                if failed:
                    record.status, record.error = "failed", verdict
                self._rows[area][i] = record.as_row()
                self._dirty.add(area)
        with contextlib.suppress(Exception):
            self.flush()

    def publish_artifact(self) -> None:
        with contextlib.suppress(Exception):
            from prefect.artifacts import create_table_artifact

            create_table_artifact(
                key="hygge-journal",
                table=[r.as_artifact_row() for r in self.records],
                description=f"hygge run journal, run {self.run_id}",
            )


def to_table(records: list[JournalRecord]) -> pa.Table:
    return rows_table([r.as_row() for r in records])


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def render_history(
    tables: list[pa.Table], flow: str, entities: list[str] | None = None, limit: int = 20
) -> str:
    """The most recent journal records of one flow spec, newest first, as a terminal table."""
    if not tables:
        return f"no journal yet for {flow!r}: it is written by every run"
    df = pl.from_arrow(pa.concat_tables(tables, promote_options="permissive"))
    assert isinstance(df, pl.DataFrame)
    df = df.filter(pl.col("flow") == flow)
    if entities:
        df = df.filter(pl.col("entity").is_in(entities))
    df = df.sort("started_at", descending=True).head(limit)
    if df.is_empty():
        which = f" of {', '.join(entities)}" if entities else ""
        return f"no journal records{which} for {flow!r}"
    headers = ["started (UTC)", "entity", "run type", "status", "tries", "rows", "seconds"]
    headers += ["watermark", "note"]
    body = [
        [
            r["started_at"].strftime("%Y-%m-%d %H:%M:%S"),
            r["entity"],
            r["run_type"],
            r["status"],
            "" if r["attempts"] is None else str(r["attempts"]),
            f"{r['rows']:,}",
            f"{r['seconds']:.2f}",
            r["watermark_after"] or "",
            _note(r),
        ]
        for r in df.iter_rows(named=True)
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def _note(row: dict[str, Any]) -> str:
    text = row["error"] or row["schema_change"] or row.get("note") or ""
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."

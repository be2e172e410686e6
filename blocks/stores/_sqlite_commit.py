"""One run's commit to a SQLite database: its rows, its deletes and its run record, together.

Everything a run changes happens in ONE transaction (`BEGIN IMMEDIATE` ... `COMMIT`), which
also inserts the run's id into `_hygge_runs`; so after a crash the table holds the whole run
or none of it, and `committed` tells which. The run's staged Arrow files are bound through
ADBC's bulk ingest (`adbc_ingest`), inside that transaction:

- replace: the old table is dropped and the new one created and filled; readers see the old
  table or the new one. With keys, the unique index on them is built after the rows are in
  (a sort, cheaper than maintaining it row by row); a run holding a key twice keeps its row
  with the highest `order` value;
- append: new columns are added (`ALTER TABLE ADD COLUMN`), then the rows are appended;
- merge: the rows go to a temporary table first, then `INSERT ... ON CONFLICT (keys) DO
  UPDATE` upserts them, in `order` so the highest watermark of a key wins;
- deletes (`deletes: detect`) remove rows by key; soft deletes set the column on them.

Every connection is ADBC's: its SQLite library is not Python's `sqlite3`, and two SQLite
libraries in one process do not see each other's locks (SQLite's "multiple copies" hazard).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from adbc_driver_manager import dbapi

from blocks.stores._sqlite_types import column_list, ident

#: the table that records which runs committed (one row per run, the newest kept)
RUNS = "_hygge_runs"
#: run records kept per entity; recovery only ever asks about the newest prepared run
KEEP_RUNS = 100
#: how long a commit waits for another connection's write lock before it fails (transient)
BUSY_TIMEOUT_MS = 30_000
_STAGE = "_hygge_stage"


@dataclass
class RunCommit:
    """What one run's commit does to one table."""

    entity: str
    run_id: str
    #: replace, append or merge
    kind: str
    #: every column the run writes, with its declared type
    columns: list[tuple[str, str]]
    rows: Path
    keys: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    deletes: Path | None = None
    soft: Path | None = None
    soft_column: str | None = None
    row_count: int = 0


def connect(db: Path) -> dbapi.Connection:
    """A connection that runs its own transactions, waiting for other writers' locks."""
    import adbc_driver_sqlite.dbapi as adbc

    conn = adbc.connect(str(db), autocommit=True)
    with contextlib.closing(conn.cursor()) as cur:
        run(cur, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


@contextlib.contextmanager
def cursor(db: Path) -> Iterator[dbapi.Cursor]:
    """A cursor on its own connection, both closed at the end."""
    conn = connect(db)
    try:
        with contextlib.closing(conn.cursor()) as cur:
            yield cur
    finally:
        conn.close()


def run(cur: dbapi.Cursor, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Execute and finish one statement (an unfinished one keeps the transaction from ending)."""
    cur.execute(sql, parameters=params)
    return cur.fetchall()  # the driver steps the statement here: its errors arrive here too


#: one lock per database file: this process's entities take turns at their commits (a long
#: full drop would otherwise outlast another entity's busy timeout)
_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(db: Path) -> threading.Lock:
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(str(db.resolve()), threading.Lock())


@contextlib.contextmanager
def transaction(db: Path) -> Iterator[dbapi.Cursor]:
    with _writer_lock(db), cursor(db) as cur:
        run(cur, "BEGIN IMMEDIATE")  # the write lock first: no read-then-upgrade deadlock
        try:
            yield cur
            run(cur, "COMMIT")
        except BaseException:
            with contextlib.suppress(dbapi.Error):
                run(cur, "ROLLBACK")
            raise


def commit(db: Path, plan: RunCommit) -> None:
    """Apply one staged run to its table and record it, in one transaction."""
    with transaction(db) as cur:
        table = ident(plan.entity)
        existing = table_columns(cur, plan.entity)
        if plan.kind == "replace" or existing is None:
            if existing is not None:
                run(cur, f"DROP TABLE {table}")
            run(cur, f"CREATE TABLE {table} ({_definitions(plan.columns)})")
            _ingest(cur, plan.entity, plan.rows)
            if plan.keys:
                _unique_keys(cur, plan, dedupe=True)
        else:
            for name, declared in plan.columns:
                if name.lower() not in existing:
                    run(cur, f"ALTER TABLE {table} ADD COLUMN {ident(name)} {declared}")
            if plan.kind == "merge":
                _unique_keys(cur, plan, dedupe=False)
                _upsert(cur, plan)
            else:
                _ingest(cur, plan.entity, plan.rows)
        if plan.deletes is not None:
            _delete(cur, plan, plan.deletes)
        if plan.soft is not None:
            _soft_delete(cur, plan, plan.soft)
        _record(cur, plan)


def committed(db: Path, entity: str, run_id: str) -> bool:
    """Whether the database holds the commit of this run."""
    if not db.is_file():
        return False
    with cursor(db) as cur:
        if not run(cur, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [RUNS]):
            return False
        sql = f"SELECT 1 FROM {RUNS} WHERE entity = ? AND run_id = ?"
        return bool(run(cur, sql, [entity, run_id]))


def table_columns(cur: dbapi.Cursor, table: str) -> set[str] | None:
    """The table's column names, lowercased (SQLite matches names so), or None: no table."""
    rows = run(cur, f"PRAGMA table_info({ident(table)})")
    return {str(r[1]).lower() for r in rows} if rows else None


def _definitions(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"{ident(n)} {d}" for n, d in columns)


def _ingest(cur: dbapi.Cursor, table: str, path: Path, temporary: bool = False) -> None:
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        stream = pa.RecordBatchReader.from_batches(reader.schema, batches)
        cur.adbc_ingest(
            table, stream, mode="create" if temporary else "append", temporary=temporary
        )


def _staged(cur: dbapi.Cursor, path: Path) -> str:
    """The staged file as a temporary table (this connection's only), named for the SQL."""
    run(cur, f"DROP TABLE IF EXISTS temp.{_STAGE}")
    _ingest(cur, _STAGE, path, temporary=True)
    return f"temp.{_STAGE}"


def _index_name(plan: RunCommit) -> str:
    digest = hashlib.sha256("\x00".join(plan.keys).encode()).hexdigest()[:8]
    return f"{plan.entity}__hygge_keys_{digest}"


def _order_by(plan: RunCommit, newest_first: bool = False) -> str:
    """The run's version order: the watermark (first non-NULL), then the staged order."""
    way = " DESC" if newest_first else ""
    if not plan.order:
        return f"rowid{way}"
    cols = [ident(c) for c in plan.order]
    wm = cols[0] if len(cols) == 1 else f"coalesce({', '.join(cols)})"
    return f"{wm}{way}, rowid{way}"


def _unique_keys(cur: dbapi.Cursor, plan: RunCommit, dedupe: bool) -> None:
    """The unique index an upsert needs; on a new table, a key held twice keeps one row."""
    index = ident(_index_name(plan))
    create = f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {ident(plan.entity)} "
    create += f"({column_list(plan.keys)})"
    try:
        run(cur, create)
        return
    except dbapi.IntegrityError:
        if not dedupe:
            raise
    keys = column_list(plan.keys)
    # the newest version of each key stays: the highest watermark, then the last staged
    ranked = (
        f"SELECT rowid AS r, row_number() OVER (PARTITION BY {keys} ORDER BY "
        f"{_order_by(plan, newest_first=True)}) AS n FROM {ident(plan.entity)}"
    )
    table = ident(plan.entity)
    run(cur, f"DELETE FROM {table} WHERE rowid IN (SELECT r FROM ({ranked}) WHERE n > 1)")
    run(cur, create)


def _upsert(cur: dbapi.Cursor, plan: RunCommit) -> None:
    stage = _staged(cur, plan.rows)
    names = [n for n, _ in plan.columns]
    keys = {k.lower() for k in plan.keys}
    updates = [f"{ident(n)} = excluded.{ident(n)}" for n in names if n.lower() not in keys]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    cols = column_list(names)
    # rows are inserted in the SELECT's order, so a key's last (highest) version wins
    run(
        cur,
        f"INSERT INTO {ident(plan.entity)} ({cols}) SELECT {cols} FROM {stage} WHERE true "
        f"ORDER BY {_order_by(plan)} ON CONFLICT ({column_list(plan.keys)}) {action}",
    )
    run(cur, f"DROP TABLE {stage}")


def _key_match(plan: RunCommit, stage: str) -> str:
    table = ident(plan.entity)
    return " AND ".join(f"{table}.{ident(k)} = {stage}.{ident(k)}" for k in plan.keys)


def _delete(cur: dbapi.Cursor, plan: RunCommit, path: Path) -> None:
    stage = _staged(cur, path)
    keys = column_list(plan.keys)
    run(cur, f"DELETE FROM {ident(plan.entity)} WHERE ({keys}) IN (SELECT {keys} FROM {stage})")
    run(cur, f"DROP TABLE {stage}")


def _soft_delete(cur: dbapi.Cursor, plan: RunCommit, path: Path) -> None:
    assert plan.soft_column is not None
    stage = _staged(cur, path)
    column = ident(plan.soft_column)
    run(
        cur,
        f"UPDATE {ident(plan.entity)} SET {column} = {stage}.{column} FROM {stage} "
        f"WHERE {_key_match(plan, stage)}",
    )
    run(cur, f"DROP TABLE {stage}")


def _record(cur: dbapi.Cursor, plan: RunCommit) -> None:
    run(
        cur,
        f"CREATE TABLE IF NOT EXISTS {RUNS} (entity TEXT NOT NULL, run_id TEXT NOT NULL, "
        "kind TEXT, rows INTEGER, committed_at TEXT, PRIMARY KEY (entity, run_id))",
    )
    now = dt.datetime.now(dt.UTC).isoformat()
    run(
        cur,
        f"INSERT INTO {RUNS} VALUES (?, ?, ?, ?, ?)",
        [plan.entity, plan.run_id, plan.kind, plan.row_count, now],
    )
    run(
        cur,
        f"DELETE FROM {RUNS} WHERE entity = ? AND run_id NOT IN (SELECT run_id FROM {RUNS} "
        "WHERE entity = ? ORDER BY run_id DESC LIMIT ?)",
        [plan.entity, plan.entity, KEEP_RUNS],
    )

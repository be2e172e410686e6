"""SqliteHome: tables or queries from a SQLite database file, read Arrow-natively with ADBC."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import os
import re
import sqlite3
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field

from blocks.base import HomeBlock, ReadRequest, Since
from blocks.homes import _sql
from blocks.homes._parallel import merge_streams
from blocks.homes._sql import SQLITE, Binder, qmark
from blocks.homes._sqlite_values import (
    SENTINEL,
    arrow_type_for,
    cast_batch,
    drop_sentinel,
    exact_decimals,
    is_text_part,
    merge_schema,
    quote_ident,
    with_sentinel,
)
from hygge_core.errors import HomeError, TransientHomeError, first_line
from hygge_core.timestamps import NanoTimestamp

#: `NUMERIC` or `DECIMAL` declared without (p,s): typed from the values it holds (`_bare_numeric`)
_BARE_NUMERIC = re.compile(r"\s*(?:DECIMAL|NUMERIC)\s*", re.I)
#: the magnitude up to which a float64 holds every integer exactly
_EXACT_FLOAT_INT = 2**53


class SqliteHome(HomeBlock):
    """Reads entities from a SQLite database through ADBC (Arrow-native, no Python row loop).

    SQLite stores few types, so the Home maps declared column types onto Arrow types for
    table reads: `DATETIME`/`TIMESTAMP` to timestamps, `DATE` to dates, `DECIMAL(p,s)` to
    exact decimals (never through a double SQLite does not hold), `BOOLEAN` to booleans. Every
    batch of a run carries that one schema; a value that has no exact value of it fails the
    read, naming the column and the value.

    Example:
        ```python
        from blocks import SqliteHome
        home = SqliteHome.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "SQLite Home"
    _block_type_slug = "sqlite-home"
    _description = "A SQLite database file as a hygge Home."
    spec_type = "sqlite"
    location_fields = ("path",)

    path: str = Field(description="Path of the SQLite database file.")

    read_threads: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Table reads of at least 500,000 rows are split into this many rowid ranges, "
        "each read on its own connection in its own thread (1: one connection).",
    )

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        import adbc_driver_sqlite.dbapi as adbc

        db = Path(self.path)
        if not db.is_file():
            msg = (
                f"SQLite database {self.path!r} does not exist (looked from {Path.cwd()}); "
                "check the Home's `path`"
            )
            raise HomeError(msg, entity=request.entity)
        opened: list[Any] = []
        merged: Iterator[pa.RecordBatch] | None = None
        try:
            conn = self._connect(db, request.entity)
            opened.append(conn)
            columns: list[tuple[str, pa.DataType | None]] | None = None
            target = None
            if request.table:
                declared = self._declared_columns(conn, request)
                _known(request, [n for n, _ in declared], f"table {request.table!r}")
                target = {n: t for n, t in declared if t is not None}
                wanted = request.columns or [n for n, _ in declared]
                columns = [(n, target.get(n)) for n in wanted]
            elif request.columns:
                _known(request, _result_columns(conn, request), "the query's result")
            readers: list[Any] = []
            if columns:
                ranges = self._ranges(conn, request, columns)
                readers = self._open_ranges(db, request, ranges, columns, opened) if ranges else []
            if not readers:
                sql, params = self.build_select(request)
                readers = [_execute(conn, sql, params, columns, request.batch_size, opened)]
            driver_schema = readers[0].schema
            if columns is not None:
                helpers = [n for n in driver_schema.names if n == SENTINEL or is_text_part(n)]
                driver_schema = pa.schema([f for f in driver_schema if f.name not in helpers])
            schema = merge_schema(driver_schema, target)

            def stream(reader: Any) -> Callable[[], Iterator[pa.RecordBatch]]:
                def batches() -> Iterator[pa.RecordBatch]:
                    for batch in _driver_batches(reader, request.entity):
                        if columns is not None:
                            batch = exact_decimals(drop_sentinel(batch), schema, request.entity)
                        yield cast_batch(batch, schema, request.entity)

                return batches

            merged = (
                merge_streams([stream(r) for r in readers])
                if len(readers) > 1
                else stream(readers[0])()
            )
            sent = False
            for batch in merged:
                sent = True
                yield batch
            if not sent:
                yield pa.RecordBatch.from_pylist([], schema=schema)
        except adbc.Error as exc:
            raise _error(exc, request.entity, self.path) from exc
        finally:
            if isinstance(merged, Generator):
                merged.close()  # stops the range threads before their connections close
            for c in reversed(opened):
                with contextlib.suppress(Exception):
                    c.close()

    def check(self, request: ReadRequest) -> None:
        _sql.check_read(self, request)

    def _connect(self, db: Path, entity: str) -> Any:
        import adbc_driver_sqlite.dbapi as adbc

        try:
            # read-only: a typo'd path must never create an empty database
            conn = adbc.connect(f"file:{db.resolve()}?mode=ro")
            with contextlib.closing(conn.cursor()) as cur:
                # a writer's lock is waited for (then the read is retried), not failed at once
                cur.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                cur.fetchall()
            return conn
        except adbc.Error as exc:
            msg = f"cannot open SQLite database {self.path!r}: {exc}"
            raise HomeError(msg, entity=entity) from exc

    def _ranges(
        self, conn: Any, request: ReadRequest, columns: list[tuple[str, pa.DataType | None]]
    ) -> list[tuple[str, list[Any]]]:
        """One SELECT per rowid range of a large table read, or [] to read on one connection.

        Only for tables with a rowid (and no column that takes its name) whose every column
        has a declared type: each range's driver infers types from its own first rows, which
        must not differ.
        """
        threads = min(self.read_threads, os.cpu_count() or 1)
        names = {n.lower() for n, _ in columns}
        if threads < 2 or names & _ROWID_NAMES or any(t is None for _, t in columns):
            return []
        cur = conn.cursor()
        try:
            # two statements: SQLite answers a lone MIN or MAX of the rowid with one b-tree
            # descent, but both in one statement with a scan of the whole table
            table = quote_ident(request.table or "")
            cur.execute(f"SELECT MIN(rowid) FROM {table}")
            (low,) = cur.fetchone()
            cur.execute(f"SELECT MAX(rowid) FROM {table}")
            (high,) = cur.fetchone()
        except Exception:  # WITHOUT ROWID tables and views: read on one connection
            return []
        finally:
            cur.close()
        if low is None or high - low + 1 < 2 * PARALLEL_MIN_ROWS:
            return []
        parts = min(threads, (high - low + 1) // PARALLEL_MIN_ROWS)
        return self.build_selects(request, _sql.split_points(int(low), int(high), parts))

    def _open_ranges(
        self,
        db: Path,
        request: ReadRequest,
        ranges: list[tuple[str, list[Any]]],
        columns: list[tuple[str, pa.DataType | None]],
        opened: list[Any],
    ) -> list[Any]:
        """Start one statement per range, each on its own connection, all on one snapshot.

        Each statement's snapshot begins at its execute (the driver reads its first batch
        there). If no write was committed between the first execute and the last, every
        range reads the same database state; `PRAGMA data_version` on a separate connection
        tells. Otherwise [] is returned and the table is read on one connection: a row moved
        between ranges by a concurrent write must not be read twice or missed.
        """
        uri = f"file:{db.resolve()}?mode=ro"
        first = len(opened)  # what this method opens, to close again if it falls back
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as monitor:
                before = monitor.execute("PRAGMA data_version").fetchone()[0]
                readers = []
                for sql, params in ranges:
                    conn = self._connect(db, request.entity)
                    opened.append(conn)
                    readers.append(
                        self.open_range(conn, sql, params, columns, request.batch_size, opened)
                    )
                after = monitor.execute("PRAGMA data_version").fetchone()[0]
            if before == after:
                return readers
        except sqlite3.Error:
            pass  # the check itself failed (busy, say): no split, the one-connection read decides
        for resource in reversed(opened[first:]):
            with contextlib.suppress(Exception):
                resource.close()
        del opened[first:]
        return []

    def open_range(
        self,
        conn: Any,
        sql: str,
        params: list[Any],
        columns: list[tuple[str, pa.DataType | None]],
        batch_rows: int,
        opened: list[Any],
    ) -> Any:
        """Execute one range's statement (a seam the tests use to commit a write midway)."""
        return _execute(conn, sql, params, columns, batch_rows, opened)

    def estimate_rows(self, request: ReadRequest) -> int | None:
        if not request.table or not Path(self.path).is_file():
            return None
        try:
            uri = f"file:{Path(self.path).resolve()}?mode=ro"
            # the largest rowid: one b-tree descent, where COUNT(*) reads the whole table
            # (0.3 s for 10M rows, 1.5 s from a cold cache); deleted rows make it an overcount
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as con:
                table = quote_ident(request.table)
                row = con.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()
            return None if row[0] is None else int(row[0])  # NULL: empty, or a view
        except sqlite3.Error:
            return None

    def describe(self, request: ReadRequest) -> str:
        what = f"table {request.table}" if request.table else "query"
        return f"sqlite {self.path} {what}"

    def build_select(self, request: ReadRequest) -> tuple[str, list[Any]]:
        """The SELECT for a request, with the incremental bound as a bound parameter.

        Built by the shared SQL builders (`blocks.homes._sql`); SQLite casts no bound: the
        value is bound as SQLite compares it (`_sql_param`), since timestamps are text here.
        """
        select_list, predicates, binder = self._select_parts(request)
        return _sql.final_select(SQLITE, request, select_list, predicates), binder.values

    def build_selects(self, request: ReadRequest, points: list[int]) -> list[tuple[str, list[Any]]]:
        """The request's SELECT once per rowid range between `points` (open at both ends)."""
        select_list, predicates, binder = self._select_parts(request)
        ranges = _sql.range_predicates(SQLITE, "rowid", points, None, binder.copy, nullable=False)
        return [
            (_sql.final_select(SQLITE, request, select_list, [*predicates, pred]), b.values)
            for pred, b in ranges
        ]

    def _select_parts(self, request: ReadRequest) -> tuple[list[str], list[str], Binder]:
        select_list = [SQLITE.quote(c) for c in request.columns] if request.columns else ["*"]
        binder = Binder(qmark, to_param=_sql_param)
        predicates = []
        if request.since is not None:
            predicates.append(_since_predicate(request.since, binder))
        return select_list, predicates, binder

    def _declared_columns(
        self, conn: Any, request: ReadRequest
    ) -> list[tuple[str, pa.DataType | None]]:
        """The table's columns in order, with the Arrow type their declared type maps to."""
        cur = conn.cursor()
        cur.execute(f"PRAGMA table_info({quote_ident(request.table or '')})")
        rows = cur.fetchall()
        cur.close()
        if not rows:
            msg = (
                f"table {request.table!r} does not exist in SQLite database {self.path!r}; "
                "check the entity's `table`"
            )
            raise HomeError(msg, entity=request.entity)
        declared = [(name, decl or "") for _cid, name, decl, *_ in rows]
        # only the columns read are typed: one the entity leaves out must not fail it
        read = {c.lower() for c in request.columns} if request.columns else None
        bare = [
            n
            for n, d in declared
            if _BARE_NUMERIC.fullmatch(d) and (read is None or n.lower() in read)
        ]
        typed = self._bare_numeric(conn, request, bare) if bare else {}
        out: list[tuple[str, pa.DataType | None]] = []
        for name, decl in declared:
            if read is not None and name.lower() not in read:
                out.append((name, None))
                continue
            if name in typed:
                out.append((name, typed[name]))
                continue
            try:
                out.append((name, arrow_type_for(decl)))
            except ValueError as exc:
                msg = (
                    f"column {name!r} of table {request.table!r} is declared {decl!r}, which "
                    f"hygge cannot read as a decimal ({exc}); declare it DECIMAL(p,s) with p at "
                    f"most 38, or read it as text through a `query` (CAST({quote_ident(name)} "
                    "AS TEXT))"
                )
                raise HomeError(msg, entity=request.entity) from exc
        return out

    def _bare_numeric(
        self, conn: Any, request: ReadRequest, names: list[str]
    ) -> dict[str, pa.DataType]:
        """The type of each `NUMERIC`/`DECIMAL` column without (p,s), from the values it holds.

        Only INTEGER values (or none): int64. REAL values and integers a double holds exactly:
        float64, bitwise what SQLite holds. TEXT or BLOB values, or REALs beside integers
        beyond 2^53, have no exact common type: the read fails and says what to declare. The
        scan reads the entity's rows (its `where`, so a check's `1 = 0` scans nothing).
        """
        checks = []
        for n in names:
            q = quote_ident(n)
            checks += [
                f"max(typeof({q}) IN ('text', 'blob'))",
                f"max(typeof({q}) = 'real')",
                f"max(typeof({q}) = 'integer' AND ({q} > {_EXACT_FLOAT_INT} "
                f"OR {q} < -{_EXACT_FLOAT_INT}))",
            ]
        where = f" WHERE ({request.where})" if request.where else ""
        table = quote_ident(request.table or "")
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT {', '.join(checks)} FROM {table}{where}")
            flags = [bool(v) for v in cur.fetchone()]
        finally:
            cur.close()
        out: dict[str, pa.DataType] = {}
        for i, n in enumerate(names):
            textual, real, big = flags[3 * i : 3 * i + 3]
            if textual or (real and big):
                held = "TEXT or BLOB values" if textual else "REAL values and integers beyond 2^53"
                msg = (
                    f"column {n!r} of table {request.table!r} is declared NUMERIC without "
                    f"precision and scale and holds {held}, which no one Arrow type holds "
                    f"exactly; declare it DECIMAL(p,s), or read it as text through a `query` "
                    f"(CAST({quote_ident(n)} AS TEXT))"
                )
                raise HomeError(msg, entity=request.entity)
            out[n] = pa.float64() if real else pa.int64()
        return out


#: how long a read waits for another process's write lock before it gives up (and is retried)
_BUSY_TIMEOUT_MS = 10_000


def _error(exc: Exception, entity: str, path: str | None = None) -> HomeError:
    """A driver error as a HomeError that says what to fix (transient while the file is busy)."""
    import adbc_driver_sqlite.dbapi as adbc

    text = first_line(exc).split("Failed to prepare query: ", 1)[-1]
    where = f"SQLite database {path!r}" if path else "the SQLite database"
    if "locked" in text or "busy" in text:
        msg = (
            f"{where} is locked by another process (a writer holds it): {text}; the entity is "
            "retried (`retries`), or run it again once the writer is done"
        )
        return TransientHomeError(msg, entity=entity)
    if "not a database" in text or "malformed" in text or "disk image" in text:
        msg = (
            f"{where} is not a SQLite database or is damaged ({text}): check that `path` "
            "points at the database file itself and not at a copy still being written; "
            "`sqlite3 FILE 'PRAGMA integrity_check'` shows the damage, and a backup restores it"
        )
        return HomeError(msg, entity=entity)
    if isinstance(exc, adbc.ProgrammingError):
        msg = f"SQLite rejected the SQL: {text}; check the entity's `query`, `columns` and `where`"
        return HomeError(msg, entity=entity)
    if "Type mismatch" in text:
        msg = (
            f"SQLite read failed: {text}; a column holds a value of another storage class "
            "than its declared type (text in an INTEGER column, say): fix the value, or read "
            "the column through a `query` that selects it as text (CAST(col AS TEXT))"
        )
        return HomeError(msg, entity=entity)
    return HomeError(f"SQLite read failed: {text}", entity=entity)


def _driver_batches(reader: Any, entity: str) -> Iterator[pa.RecordBatch]:
    """The reader's batches; a driver error while reading (a reader raises Arrow's errors, not
    the driver's) as the Home's error."""
    batches = iter(reader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:  # the driver's status arrives as OSError
            raise _error(exc, entity) from exc
        yield batch


def _result_columns(conn: Any, request: ReadRequest) -> list[str]:
    """The column names a query returns, from a run of it that returns no rows."""
    cur = conn.cursor()
    try:
        cur.execute(f"SELECT * FROM {_sql.source_sql(SQLITE, request)} LIMIT 0")
        return list(cur.fetch_arrow_table().schema.names)
    finally:
        cur.close()


def _known(request: ReadRequest, available: list[str], source: str) -> None:
    """Refuse `columns` the source lacks.

    SQLite reads a quoted name that matches no column as a text literal: a misspelled column
    would arrive as a column holding its own name in every row.
    """
    have = {a.lower() for a in available}  # SQLite matches names case-insensitively
    missing = [c for c in request.columns or [] if c.lower() not in have]
    if missing:
        shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
        msg = (
            f"column(s) {', '.join(map(repr, missing))} not in {source} (it has: {shown}); "
            "check the entity's `columns`"
        )
        raise HomeError(msg, entity=request.entity)


#: names that, taken by a column, mean that column instead of the row id
_ROWID_NAMES = {"rowid", "oid", "_rowid_"}
#: the fewest rows per range of a split read: below, threads cost more than they bring
PARALLEL_MIN_ROWS = 250_000


def _execute(
    conn: Any,
    sql: str,
    params: list[Any],
    columns: list[tuple[str, pa.DataType | None]] | None,
    batch_rows: int,
    opened: list[Any],
) -> Any:
    """Run `sql` (behind the typed sentinel row for table reads) and return its batch reader.

    The cursor joins `opened`: the reader reads only while its cursor lives, and the caller
    closes both.
    """
    if columns is not None:
        sql = with_sentinel(sql, columns)
    cur = conn.cursor()
    opened.append(cur)
    cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
    cur.execute(sql, parameters=params or None)
    return cur.fetch_record_batch()


def _since_predicate(since: Since, binder: Binder) -> str:
    """The incremental bound as SQLite compares it: a superset of what the engine admits.

    SQLite keeps timestamps as text and compares them as text, in whatever spelling the
    application wrote: `T` or space, 0 to 9 fraction digits (`strftime('%f')` writes 3), a
    `Z` or `+00:00` suffix. One bound spelled one way loses rows spelled another way at the same
    instant (`'...00.009' >= '...00.009000'` is false), so a timestamp bound is spelled in its
    shortest form (no trailing fraction zeros: a prefix of every longer spelling of that
    instant) once with a space and once with a `T`: each arm admits its separator's rows from
    that instant on, and every later day sorts after both.
    """
    value = since.value
    if isinstance(value, NanoTimestamp):
        value = value.floor_datetime()  # a floor: a superset again
    if not isinstance(value, dt.datetime):
        kind = _sql.value_kind(value)
        return _sql.since_predicate(SQLITE, since, kind, None, binder)
    expr = _sql.since_expr(SQLITE, since)
    col = f"{expr} {SQLITE.binary_collation}"
    space, tee = (_shortest_text(value, sep) for sep in (" ", "T"))
    day_t = f"{value:%Y-%m-%d}T"
    return (
        f"(({col} >= {binder.bind(space, None)} AND {col} < {binder.bind(day_t, None)}) "
        f"OR {col} >= {binder.bind(tee, None)} OR {expr} IS NULL)"
    )


def _shortest_text(value: dt.datetime, sep: str) -> str:
    """The shortest text spelling of `value` with separator `sep`: `2024-05-01 12:00:00.5`.

    Every other spelling of the same instant (more fraction digits, a zone suffix) has it as a
    prefix, so it sorts at or after it; the zone is dropped (SQLite reads keep naive times).
    """
    text = f"{value:%Y-%m-%d}{sep}{value:%H:%M:%S}"
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text


def _sql_param(value: Any) -> Any:
    # timestamp bounds are spelled by `_since_predicate`; these are the other values
    if isinstance(value, NanoTimestamp):
        value = value.floor_datetime()
    if isinstance(value, dt.datetime):
        return str(value.replace(tzinfo=None))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bool):
        return int(value)
    return value

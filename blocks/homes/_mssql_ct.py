"""SQL Server Change Tracking for `MssqlHome` (`changes: change_tracking`).

Each run reads in one snapshot, as Microsoft documents for Change Tracking: one statement
batch on one connection,

    SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION;
    SELECT CHANGE_TRACKING_CURRENT_VERSION(), CHANGE_TRACKING_MIN_VALID_VERSION(...);
    SELECT <the whole table>  -- or CHANGETABLE(CHANGES <table>, @last_version) joined to it
    COMMIT TRANSACTION;

so the version the ledger keeps is exactly the one the rows were read at: a change committed
during the read is in the next run's CHANGETABLE, never lost, never read twice. The rows come
through the shared ODBC read path (`_odbc`) and `MssqlHome.batches`, as a plain read's do.

Before it, a small probe (its own connection) decides what the run reads: the table's rows
(no stored version, or one older than `CHANGE_TRACKING_MIN_VALID_VERSION`: the changes since
were cleaned up), or its changes. It refuses, naming the T-SQL that fixes it, a table without
change tracking (the minimum valid version is NULL) and a database that does not allow
snapshot isolation. The snapshot's own minimum valid version is checked again: cleanup
passing the stored version between the probe and the read fails the attempt as transient,
and the retry reloads in full. The connection is closed once the rows are read; the
read-only transaction ends with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from blocks.base import CHANGE_OPERATION, ChangeRead, ReadRequest
from blocks.homes import _odbc, _sql
from blocks.homes._limits import connection_slots
from blocks.homes._sql import TSQL, Binder, Dialect, qmark
from hygge_core.errors import ConfigError, HomeError, TransientHomeError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from blocks.homes.mssql import Column, MssqlHome


class TrackingSql:
    """The T-SQL of a Change Tracking read, one method per piece a test may emulate.

    `tests/test_mssql_ct.py` swaps `state`, `bind_last`, `changes_from` and `snapshot` for
    PostgreSQL statements over a table shaped like CHANGETABLE's output; the join, the column
    selection and the conversion stay these.
    """

    dialect: Dialect = TSQL

    def state(self, table: str) -> str:
        """One row: the database's current version, the table's minimum valid version (NULL:
        change tracking is off for the table) and whether snapshot isolation is allowed."""
        literal = "N'" + table.replace("'", "''") + "'"
        return (
            "SELECT CHANGE_TRACKING_CURRENT_VERSION() AS current_version, "
            f"CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID({literal})) AS min_valid_version, "
            "(SELECT snapshot_isolation_state FROM sys.databases WHERE database_id = DB_ID())"
            " AS snapshot_state"
        )

    def bind_last(self, mark: str) -> tuple[list[str], str]:
        """Statements that bind the last version, and how the read then names it."""
        return [f"DECLARE @last_version bigint = CAST({mark} AS bigint)"], "@last_version"

    def changes_from(self, table: str, last: str) -> str:
        """The FROM item of the changes since `last`: one row per changed key, aliased `ct`."""
        return f"CHANGETABLE(CHANGES {table}, {last}) AS ct"

    def snapshot(self, statements: list[str]) -> str:
        """One batch running `statements` in one snapshot transaction."""
        head = ["SET NOCOUNT ON", "SET TRANSACTION ISOLATION LEVEL SNAPSHOT", "BEGIN TRANSACTION"]
        return "; ".join([*head, *statements, "COMMIT TRANSACTION"]) + ";"

    def changes(
        self, table: str, keys: list[str], columns: list[str], select: list[str], last: str
    ) -> str:
        """The changes since `last` with each row's current values (NULL for a deleted row):
        the operation first, the keys from CHANGETABLE (a deleted row has only those)."""
        q = self.dialect.quote
        inner = [f"ct.{q('SYS_CHANGE_OPERATION')} AS {q(CHANGE_OPERATION)}"]
        inner += [f"{'ct' if c in keys else 't'}.{q(c)} AS {q(c)}" for c in columns]
        on = " AND ".join(f"t.{q(k)} = ct.{q(k)}" for k in keys)
        return (
            f"SELECT {q(CHANGE_OPERATION)}, {', '.join(select)} FROM (SELECT {', '.join(inner)} "
            f"FROM {self.changes_from(table, last)} LEFT OUTER JOIN {table} AS t ON {on})"
            " AS hygge_ct"
        )


TSQL_TRACKING = TrackingSql()


@dataclass(frozen=True)
class TrackingState:
    """What the source says about its change tracking, read in one statement."""

    current: int | None
    min_valid: int | None
    snapshot_allowed: bool

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> TrackingState:
        row = rows[0] if rows else {}
        current, low = row.get("current_version"), row.get("min_valid_version")
        return cls(
            None if current is None else int(current),
            None if low is None else int(low),
            row.get("snapshot_state") == 1,
        )


def enable_sql(database: str, table: str) -> str:
    """The T-SQL that turns change tracking on for a table and lets hygge read snapshots."""
    db = TSQL.quote(database)
    return (
        f"ALTER DATABASE {db} SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, "
        f"AUTO_CLEANUP = ON); ALTER TABLE {table} ENABLE CHANGE_TRACKING; "
        f"ALTER DATABASE {db} SET ALLOW_SNAPSHOT_ISOLATION ON;"
    )


def decide(
    state: TrackingState, last: int | None, table: str, database: str, entity: str
) -> str | None:
    """Why the run reads the whole table (None: it reads the changes since `last`); raises
    when the source cannot be read by version at all."""
    if state.current is None or state.min_valid is None:
        msg = (
            f"change tracking is not enabled on table {table} (its minimum valid version is "
            f"NULL), which `changes: change_tracking` reads; enable it, and allow the snapshot "
            f"reads it needs: `{enable_sql(database, table)}`"
        )
        raise ConfigError(msg, entity=entity)
    if not state.snapshot_allowed:
        msg = (
            f"database {TSQL.quote(database)} does not allow snapshot isolation, which "
            "`changes: change_tracking` reads in so that the version and the rows agree; run "
            f"`ALTER DATABASE {TSQL.quote(database)} SET ALLOW_SNAPSHOT_ISOLATION ON;`"
        )
        raise ConfigError(msg, entity=entity)
    if last is None:
        return "change tracking: first load, the whole table"
    if state.min_valid > last:
        return (
            f"change tracking: the stored version {last} is older than the table's minimum "
            f"valid version {state.min_valid} (the changes since were cleaned up, after the "
            "database's CHANGE_RETENTION): full reload, replacing the table"
        )
    return None


def read_changes(
    home: MssqlHome, request: ReadRequest, keys: list[str], last: int | None
) -> ChangeRead:
    """`MssqlHome.read_changes`: probe, then the rows or changes in one snapshot."""
    from blocks.homes.mssql import Column

    entity = request.entity
    if not request.table or request.query:
        msg = "`changes: change_tracking` reads a `table`, not a query"
        raise ConfigError(msg, entity=entity)
    dialect, sql = home.dialect, home.tracking
    table = dialect.table(request.table)
    opts = home.fetch_options()
    base = _sql.base_select(dialect, request)
    with connection_slots(home.identity(), 1, home.max_connections):
        state = TrackingState.of(home._guard(request, lambda: _rows(opts, sql.state(table))))
        columns = home._guard(request, lambda: home.columns(opts, base, request))
    reason = decide(state, last, table, home.database, entity)
    names = [c.name for c in columns]
    if missing := [k for k in keys if k not in names]:
        msg = f"`keys` {missing} are not among the table's columns ({', '.join(names)})"
        raise ConfigError(msg, entity=entity)
    select = [c.select(exact_text=opts.attrs_before is not None) for c in columns]
    binder = Binder(qmark)
    if reason is None:
        prelude, ref = sql.bind_last(binder.bind(last, None))
        q = dialect.quote(CHANGE_OPERATION)
        read_cols = [Column(CHANGE_OPERATION, q, pa.string(), pa.string()), *columns]
        data = sql.changes(table, keys, names, select, ref)
        what = f"change tracking: the changes since version {last}"
    else:
        prelude, read_cols = [], columns
        data = _sql.final_select(dialect, request, select, [])
        what = reason
    out = ChangeRead(full=reason is not None, reason=what, batches=iter(()))
    text = sql.snapshot([*prelude, sql.state(table), data])
    out.batches = _snapshot_read(home, request, (table, text), binder, read_cols, out, last)
    return out


def _snapshot_read(
    home: MssqlHome,
    request: ReadRequest,
    statement: tuple[str, str],
    binder: Binder,
    columns: list[Column],
    out: ChangeRead,
    last: int | None,
) -> Iterator[pa.RecordBatch]:
    from blocks.homes.mssql import fetch_types

    table, text = statement
    opts = home.fetch_options()
    with connection_slots(home.identity(), 1, home.max_connections):
        reader = home._guard(request, lambda: _odbc.fetch(opts, text, binder.values, 1))
        state = TrackingState.of(home._guard(request, lambda: _table(reader).to_pylist()))
        # the snapshot's own state: tracking switched off since the probe fails here too
        again = decide(state, None if out.full else last, table, home.database, request.entity)
        if not out.full and again is not None:
            msg = (
                f"change tracking cleaned up the changes since version {last} during the read "
                f"(the minimum valid version is now {state.min_valid}); the retry reloads in full"
            )
            raise TransientHomeError(msg, entity=request.entity)
        out.version = state.current
        types = fetch_types(columns)
        more = home._guard(
            request, lambda: _odbc.next_result(reader, opts, request.batch_size, types)
        )
        if not more:
            msg = "the snapshot read returned its version but no rows; report it"
            raise HomeError(msg, entity=request.entity)
        yield from home.batches(request, reader, columns)


def _rows(opts: _odbc.FetchOptions, sql: str) -> list[dict[str, Any]]:
    return _table(_odbc.fetch(opts, sql, [], 10)).to_pylist()


def _table(reader: Any) -> pa.Table:
    return pa.Table.from_batches(list(reader), schema=reader.schema)

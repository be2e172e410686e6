"""SQL Server Change Tracking (`changes: change_tracking`) up to the wire.

No SQL Server can run on these machines (see `tests/test_mssql_home.py`). So:
- the T-SQL text is built by the real code and parsed with sqlglot (`read="tsql"`), statement
  by statement, and checked as exact text;
- the state machine (first run, changes, a version too old, change tracking off, snapshot
  isolation off) runs through `read_changes` with the ODBC reader faked to answer as SQL
  Server would (the version source), and through planning with real ledger entries;
- whole flows run the MSSQL Home's own ODBC read path against PostgreSQL through psqlODBC, as
  `tests/pg_odbc.py` does for plain reads, with CHANGETABLE emulated by a PostgreSQL table
  shaped like its output, into the Parquet Store (its current view) and the Delta Store.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa
import pytest
import sqlglot

import blocks
from blocks import SqlServerCredentials
from blocks.base import CHANGE_OPERATION, ReadRequest
from blocks.homes import _mssql_ct, _odbc
from blocks.homes._mssql_ct import TrackingSql, TrackingState, decide
from blocks.homes._sql import POSTGRES
from blocks.homes.mssql import MssqlHome, tsql_column
from blocks.stores.parquet_current import current_view
from flows.spec import parse_spec
from hygge_core import faults
from hygge_core.errors import ConfigError, TransientHomeError
from hygge_tasks.changes import split_changes, stored_version
from tests.conftest import ledger_of, run_flow
from tests.pg_odbc import PgOdbcHome, pg_odbc_home
from tests.pg_server import PgServer

# --- the T-SQL text ------------------------------------------------------------------------


# what SQL Server would describe for `sales.orders` (faked: no server to ask)
DESCRIBED = [
    tsql_column("id", "bigint", 19, 0),
    tsql_column("Amount €", "decimal(12,2)", 12, 2),
    tsql_column("at", "datetimeoffset(7)", 34, 7),
]


class FakeReader:
    """Stands in for the ODBC reader (no SQL Server): the current result set's rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.table = pa.Table.from_pylist(rows)
        self.schema = self.table.schema

    def __iter__(self) -> Any:
        return iter(self.table.to_batches())


class FakeServer:
    """What SQL Server would answer a Change Tracking read: its version state, and the rows
    (a fake version source; the statements it is sent are kept for checking)."""

    def __init__(self, current: int | None, low: int | None, snapshot: int = 1) -> None:
        self.state = {"current_version": current, "min_valid_version": low}
        self.state["snapshot_state"] = snapshot
        self.sent: list[tuple[str, list[Any]]] = []

    def fetch(self, opts: Any, sql: str, params: list[Any], *_: Any) -> FakeReader:
        self.sent.append((sql, list(params)))
        return FakeReader([self.state])

    def next_result(self, reader: FakeReader, *_: Any) -> bool:
        # the data set: no rows, in the types the Home fetches (the operation first, if any)
        op = [pa.field(CHANGE_OPERATION, pa.string())] if "CHANGETABLE" in self.sent[-1][0] else []
        reader.schema = pa.schema([*op, *(pa.field(c.name, c.fetch) for c in DESCRIBED)])
        reader.table = reader.schema.empty_table()
        return True


def tracked(monkeypatch: pytest.MonkeyPatch, server: FakeServer, last: int | None) -> Any:
    monkeypatch.setattr(_odbc, "fetch", server.fetch)
    monkeypatch.setattr(_odbc, "next_result", server.next_result)
    # SQL Server's column description, given rather than asked for
    monkeypatch.setattr(MssqlHome, "columns", lambda *_: DESCRIBED)
    login = SqlServerCredentials(username="hygge_reader", password="secret")
    home = MssqlHome(host="127.0.0.1", database="shop", credentials=login, driver="FreeTDS")
    request = ReadRequest(entity="e", table="sales.orders")
    return home.read_changes(request, ["id"], last)


def assert_tsql_batch(sql: str) -> list[str]:
    """Each statement of the batch parses as T-SQL. sqlglot (30.x) knows neither snapshot
    isolation nor CHANGETABLE's `CHANGES` keyword: those two are checked as exact text, then
    parsed with the keyword taken out (the rest of the statement is unchanged)."""
    statements = [s.strip() for s in sql.rstrip(";").split("; ")]
    for s in statements:
        if s == "SET TRANSACTION ISOLATION LEVEL SNAPSHOT":
            continue
        sqlglot.parse_one(s.replace("CHANGETABLE(CHANGES ", "CHANGETABLE("), read="tsql")
        bare = re.sub(r"\[(?:[^\]]|\]\])*\]|N?'(?:[^']|'')*'", "", s)
        assert " LIMIT " not in bare.upper() and "::" not in bare
    return statements


STATE = (
    "SELECT CHANGE_TRACKING_CURRENT_VERSION() AS current_version, "
    "CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(N'[sales].[orders]')) AS min_valid_version, "
    "(SELECT snapshot_isolation_state FROM sys.databases WHERE database_id = DB_ID()) "
    "AS snapshot_state"
)
HEAD = [
    "SET NOCOUNT ON",
    "SET TRANSACTION ISOLATION LEVEL SNAPSHOT",
    "BEGIN TRANSACTION",
    STATE,
]


def test_the_first_read_takes_the_version_and_the_table_in_one_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeServer(current=42, low=7)
    read = tracked(monkeypatch, server, None)
    assert read.full and "first load" in read.reason
    assert server.sent[0] == (STATE, [])  # the probe
    batches = list(read.batches)
    assert read.version == 42
    (batch_sql, params) = server.sent[-1]
    statements = assert_tsql_batch(batch_sql)
    assert statements[:4] == HEAD and statements[-1] == "COMMIT TRANSACTION"
    assert statements[4].startswith("SELECT [id], ") and statements[4].endswith(
        "FROM [sales].[orders]"
    )
    assert params == []
    assert batches  # what the fake returned for the data set


def test_later_reads_take_changetable_joined_to_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(current=50, low=7)
    read = tracked(monkeypatch, server, 42)
    assert not read.full and read.reason == "change tracking: the changes since version 42"
    list(read.batches)
    assert read.version == 50
    (batch_sql, params) = server.sent[-1]
    statements = assert_tsql_batch(batch_sql)
    assert statements[3] == "DECLARE @last_version bigint = CAST(? AS bigint)"
    assert params == ["42"]
    changes = statements[5]
    op = f"[{CHANGE_OPERATION}]"
    assert changes.startswith(f"SELECT {op}, [id], [Amount €], ")
    assert f"FROM (SELECT ct.[SYS_CHANGE_OPERATION] AS {op}, ct.[id] AS [id], t.[Amount €]" in (
        changes
    )
    assert changes.endswith(
        "FROM CHANGETABLE(CHANGES [sales].[orders], @last_version) AS ct LEFT OUTER JOIN "
        "[sales].[orders] AS t ON t.[id] = ct.[id]) AS hygge_ct"
    )


def test_a_version_older_than_the_minimum_valid_one_reloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = tracked(monkeypatch, FakeServer(current=90, low=60), 42)
    assert read.full
    assert "stored version 42 is older than the table's minimum valid version 60" in read.reason
    assert "full reload" in read.reason


def test_cleanup_during_the_read_fails_the_attempt_as_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeServer(current=50, low=7)
    read = tracked(monkeypatch, server, 42)
    server.state["min_valid_version"] = 45  # the cleanup ran between probe and snapshot
    with pytest.raises(TransientHomeError, match="retry reloads in full"):
        list(read.batches)


@pytest.mark.parametrize(
    ("state", "says"),
    [
        pytest.param(
            TrackingState(12, None, True),
            "change tracking is not enabled on table [sales].[orders]",
            id="table-not-tracked",
        ),
        pytest.param(TrackingState(None, None, True), "ALTER TABLE", id="database-not-tracked"),
        pytest.param(
            TrackingState(12, 3, False), "does not allow snapshot isolation", id="no-snapshot"
        ),
    ],
)
def test_a_source_that_cannot_be_read_by_version_names_the_fix(
    state: TrackingState, says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        decide(state, 5, "[sales].[orders]", "shop", "e")
    text = str(caught.value)
    assert "ALTER DATABASE [shop] SET ALLOW_SNAPSHOT_ISOLATION ON;" in text
    if state.min_valid is None:
        assert "ALTER DATABASE [shop] SET CHANGE_TRACKING = ON" in text
        assert "ALTER TABLE [sales].[orders] ENABLE CHANGE_TRACKING;" in text


def test_the_enabling_tsql_parses() -> None:
    for statement in _mssql_ct.enable_sql("shop", "[sales].[orders]").rstrip(";").split("; "):
        sqlglot.parse_one(statement, read="tsql")


def test_the_state_machine_decides_from_the_stored_version() -> None:
    assert "first load" in (decide(TrackingState(9, 1, True), None, "t", "d", "e") or "")
    assert decide(TrackingState(9, 1, True), 1, "t", "d", "e") is None  # 1 is still valid
    assert decide(TrackingState(9, 5, True), 5, "t", "d", "e") is None
    assert "full reload" in (decide(TrackingState(9, 6, True), 5, "t", "d", "e") or "")


def test_changes_split_into_upserts_and_keys_to_delete() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            CHANGE_OPERATION: ["I", "U", "D", "U"],
            "id": [1, 2, 3, 4],
            "name": ["a", "b", None, "d"],
        }
    )
    rows, gone = split_changes(batch, ["id"], "e")
    assert rows.to_pylist() == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 4, "name": "d"},
    ]
    assert gone.to_pylist() == [{"id": 3}]
    odd = pa.RecordBatch.from_pydict({CHANGE_OPERATION: ["I", "X"], "id": [1, 2]})
    with pytest.raises(Exception, match=r"operation\(s\) \['X'\]"):
        split_changes(odd, ["id"], "e")
    assert stored_version({"kind": "change_tracking", "version": 7}) == 7
    assert stored_version({"kind": "change_tracking", "version": True}) is None
    assert stored_version(None) is None


def entity_spec(**entity: Any) -> dict[str, Any]:
    return {
        "name": "ct",
        "home": {
            "type": "mssql",
            "host": "h",
            "database": "d",
            "credentials": {"username": "u", "password": "p"},
        },
        "store": {"type": "parquet", "path": "lake"},
        "entities": [{"name": "orders", "table": "dbo.orders", **entity}],
    }


@pytest.mark.parametrize(
    ("entity", "says"),
    [
        pytest.param({}, "needs `keys`", id="no-keys"),
        pytest.param(
            {"table": None, "query": "SELECT 1", "keys": ["id"]}, "give `table`", id="query"
        ),
        pytest.param(
            {"keys": ["id"], "watermark": {"column": "ts", "keys": ["id"]}},
            "remove `watermark`",
            id="watermark",
        ),
        pytest.param({"keys": ["id"], "deletes": "detect"}, "remove `deletes`", id="deletes"),
        pytest.param({"keys": ["id"], "where": "id > 3"}, "remove `where`", id="where"),
        pytest.param({"keys": ["id"], "columns": ["name"]}, "add id", id="columns"),
    ],
)
def test_the_spec_refuses_what_makes_no_sense_with_change_tracking(
    entity: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse_spec(entity_spec(changes="change_tracking", **entity))


def test_keys_without_changes_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"watermark\.keys"):
        parse_spec(entity_spec(keys=["id"]))


# --- whole flows on PostgreSQL, CHANGETABLE emulated ----------------------------------------


class PgTracking(TrackingSql):
    """Change Tracking emulated in PostgreSQL: `<schema>.ct_state` answers for
    CHANGE_TRACKING_CURRENT_VERSION/MIN_VALID_VERSION and snapshot isolation, and
    `<schema>.ct_changes` (one row per changed key: its last change's version, its creation
    version, whether it is deleted) stands in for CHANGETABLE's side table, from which the
    FROM item derives SYS_CHANGE_OPERATION as SQL Server does (I: created after the last
    version; U: changed; D: deleted). A REPEATABLE READ transaction stands in for SNAPSHOT."""

    dialect = POSTGRES

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def state(self, table: str) -> str:
        columns = "current_version, min_valid_version, snapshot_state"
        return f'SELECT {columns} FROM "{self.schema}".ct_state'

    def bind_last(self, mark: str) -> tuple[list[str], str]:
        return [], f"CAST({mark} AS bigint)"

    def changes_from(self, table: str, last: str) -> str:
        op = (
            "CASE WHEN c.deleted THEN 'D' WHEN c.\"SYS_CHANGE_CREATION_VERSION\" > p.v "
            "THEN 'I' ELSE 'U' END"
        )
        return (
            f'(SELECT c.*, {op} AS "SYS_CHANGE_OPERATION" FROM "{self.schema}".ct_changes c, '
            f'(SELECT {last} AS v) p WHERE c."SYS_CHANGE_VERSION" > p.v) AS ct'
        )

    def snapshot(self, statements: list[str]) -> str:
        return "; ".join(statements)


class PgCtHome(PgOdbcHome):
    """The MSSQL Home's read path on PostgreSQL (`tests/pg_odbc.py`), Change Tracking
    emulated by `PgTracking` (set per test: it names the test's schema)."""

    _block_type_slug = "test-pg-ct-home"
    spec_type = "pg-ct"
    tracking: ClassVar[TrackingSql] = PgTracking("public")


class Source:
    """A PostgreSQL table with its emulated change tracking, changed as SQL Server's would be."""

    def __init__(self, pg: PgServer, schema: str) -> None:
        self.pg, self.s = pg, schema
        self.table = f'"{schema}".orders'
        pg.execute(
            f"CREATE TABLE {self.table} (id int PRIMARY KEY, name text, amount numeric(10, 2))",
            f'CREATE TABLE "{schema}".ct_state (current_version bigint, '
            "min_valid_version bigint, snapshot_state int)",
            f'INSERT INTO "{schema}".ct_state VALUES (0, 0, 1)',
            f'CREATE TABLE "{schema}".ct_changes (id int PRIMARY KEY, '
            '"SYS_CHANGE_VERSION" bigint, "SYS_CHANGE_CREATION_VERSION" bigint, deleted boolean)',
        )

    def _track(self, ids: list[int], deleted: bool, insert: bool) -> None:
        s = self.s
        self.pg.execute(f'UPDATE "{s}".ct_state SET current_version = current_version + 1')
        for i in ids:
            self.pg.execute(
                f'INSERT INTO "{s}".ct_changes SELECT {i}, v, v, {deleted} FROM '
                f'(SELECT current_version AS v FROM "{s}".ct_state) x ON CONFLICT (id) DO UPDATE '
                'SET "SYS_CHANGE_VERSION" = EXCLUDED."SYS_CHANGE_VERSION", deleted = '
                "EXCLUDED.deleted"
                + (
                    ', "SYS_CHANGE_CREATION_VERSION" = EXCLUDED."SYS_CHANGE_VERSION"'
                    if insert
                    else ""
                )
            )

    def insert(self, ids: list[int], name: str = "new") -> None:
        values = ", ".join(f"({i}, '{name} {i}', {i}.25)" for i in ids)
        self.pg.execute(f"INSERT INTO {self.table} VALUES {values}")
        self._track(ids, deleted=False, insert=True)

    def update(self, ids: list[int], name: str) -> None:
        self.pg.execute(
            f"UPDATE {self.table} SET name = '{name} ' || id, amount = amount + 1 "
            f"WHERE id IN ({', '.join(map(str, ids))})"
        )
        self._track(ids, deleted=False, insert=False)

    def delete(self, ids: list[int]) -> None:
        self.pg.execute(f"DELETE FROM {self.table} WHERE id IN ({', '.join(map(str, ids))})")
        self._track(ids, deleted=True, insert=False)

    def cleanup(self) -> None:
        """What SQL Server's cleanup does after CHANGE_RETENTION: the change rows go, and the
        minimum valid version moves to the current one."""
        s = self.s
        self.pg.execute(
            f'DELETE FROM "{s}".ct_changes',
            f'UPDATE "{s}".ct_state SET min_valid_version = current_version',
        )

    def version(self) -> int:
        return int(self.pg.query(f'SELECT current_version FROM "{self.s}".ct_state')[0][0])

    def rows(self) -> list[tuple[Any, ...]]:
        return sorted(
            (i, n, str(a))
            for i, n, a in self.pg.query(f"SELECT id, name, amount FROM {self.table}")
        )


def as_rows(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    return sorted((i, n, str(a)) for i, n, a in frame.select("id", "name", "amount").rows())


def ct_spec(
    pg: PgServer, schema: str, lake: Path, store_type: str, name: str, monkeypatch: Any
) -> dict[str, Any]:
    """A spec moving `<schema>.orders` by its emulated change tracking, small batches."""
    monkeypatch.setitem(blocks.HOMES, "pg-ct", PgCtHome)
    monkeypatch.setattr(PgCtHome, "tracking", PgTracking(schema))
    return {
        "name": name,
        "home": {**pg_odbc_home(pg), "type": "pg-ct"},
        "store": {"type": store_type, "path": str(lake)},
        "retries": 0,
        "defaults": {"batch_size": 3},
        "entities": [
            {"name": "orders", "table": f"{schema}.orders", "changes": "change_tracking"}
            | {"keys": ["id"]}
        ],
    }


def held(lake: Path, store_type: str) -> list[tuple[Any, ...]]:
    """What the destination holds now: the Delta table, or the Parquet Store's current view."""
    if store_type == "delta":
        return as_rows(pl.read_delta(str(lake / "orders")))
    return as_rows(current_view(lake / "orders", ["id"]).collect())


@pytest.mark.parametrize("store_type", ["parquet", "delta"])
def test_change_tracking_keeps_the_destination_equal_to_the_source(
    pg: PgServer,
    pg_schema: str,
    tmp_path: Path,
    spec_name: str,
    monkeypatch: pytest.MonkeyPatch,
    store_type: str,
) -> None:
    """Emulated: SQL Server's CHANGETABLE and version functions (`PgTracking`, PostgreSQL
    has neither); real: the MSSQL Home's ODBC read path (psqlODBC, the statement batch with
    two result sets), the conversion into upserts and deletes, the Stores, the ledger."""
    src = Source(pg, pg_schema)
    lake = tmp_path / "lake"
    spec = ct_spec(pg, pg_schema, lake, store_type, spec_name, monkeypatch)

    def destination() -> list[tuple[Any, ...]]:
        return held(lake, store_type)

    def run(context: str) -> dict[str, Any]:
        state = run_flow(spec)
        assert state.is_completed(), (context, state)
        assert destination() == src.rows(), context
        entry = ledger_of(spec)["orders"]
        assert entry["changes"] == {"kind": "change_tracking", "version": src.version()}, context
        return entry

    src.insert(list(range(1, 8)))
    entry = run("first load")
    assert entry["mode"] == "replace" and entry["rows"] == 7

    src.insert([8, 9])
    src.update([2, 3], "changed")
    src.delete([4, 5])
    entry = run("inserts, updates and deletes")
    assert (entry["mode"], entry["rows"], entry["deleted"]) == ("append", 4, 2)

    src.delete([8])  # inserted by the last run
    src.update([2], "again")
    src.insert([10])
    src.delete([10])  # inserted and deleted between runs: a delete of a key never loaded
    src.insert([4], "back")  # deleted by the last run, inserted again
    entry = run("a second round")
    assert (entry["rows"], entry["deleted"]) == (2, 2)

    src.delete([1])
    src.update([6], "late")
    src.cleanup()  # the changes since the stored version are gone: a full reload
    entry = run("after cleanup")
    assert entry["mode"] == "replace" and entry["rows"] == len(src.rows())
    journal = pl.read_parquet(lake / "_journal" / "*.parquet").sort("started_at")
    assert "full reload" in journal["note"][-1]
    assert "older than the table's minimum valid version" in journal["note"][-1]

    state = run_flow(spec)  # nothing changed: nothing published, the version stays
    assert state.is_completed()
    assert destination() == src.rows()


def test_a_table_without_change_tracking_fails_naming_the_tsql(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emulated: a table whose CHANGE_TRACKING_MIN_VALID_VERSION is NULL (`PgTracking`);
    real: the probe through the ODBC read path, and the flow's failure."""
    src = Source(pg, pg_schema)
    src.insert([1])
    pg.execute(f'UPDATE "{pg_schema}".ct_state SET min_valid_version = NULL')
    spec = ct_spec(pg, pg_schema, tmp_path / "lake", "parquet", spec_name, monkeypatch)
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match="ENABLE CHANGE_TRACKING") as caught:
        state.result()
    assert "SET ALLOW_SNAPSHOT_ISOLATION ON" in str(caught.value)
    assert "orders" not in ledger_of(spec)


@pytest.mark.parametrize("point", ["move.after_read", "flow.before_ledger"])
def test_a_failed_run_moves_the_version_exactly_once(
    pg: PgServer,
    pg_schema: str,
    tmp_path: Path,
    spec_name: str,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    """Emulated: CHANGETABLE (`PgTracking`). The run fails at a fault point (raised, not
    SIGKILL: the emulating Home is a test class a CLI subprocess cannot load): before
    publishing, the rerun reads the same changes again; after publishing and before the
    ledger, recovery commits the version from the manifest and the rerun reads on from it.
    Either way the destination equals the source and the ledger holds the current version."""
    src = Source(pg, pg_schema)
    lake = tmp_path / "lake"
    spec = ct_spec(pg, pg_schema, lake, "delta", spec_name, monkeypatch)
    src.insert(list(range(1, 7)))
    assert run_flow(spec).is_completed()
    first = ledger_of(spec)["orders"]["changes"]["version"]
    src.update([1, 2], "changed")
    src.delete([3])
    monkeypatch.setenv("HYGGE_FAULT", f"{point}:raise")
    assert run_flow(spec).is_failed()
    assert ledger_of(spec)["orders"]["changes"]["version"] == first  # not moved
    published = held(lake, "delta") == src.rows()
    assert published == (point == "flow.before_ledger")
    monkeypatch.delenv("HYGGE_FAULT")
    faults.reset()
    src.insert([7])
    assert run_flow(spec).is_completed()
    assert held(lake, "delta") == src.rows()
    assert ledger_of(spec)["orders"]["changes"] == {
        "kind": "change_tracking",
        "version": src.version(),
    }


def replay(container: Any, folder: str) -> list[tuple[Any, ...]]:
    """The mirrored table after Fabric applies the landing zone's files in number order (a
    reference applier): 0 inserts, 1 updates, 4 upserts, 2 deletes by key."""
    from tests.test_open_mirroring import data_files, read

    table: dict[int, tuple[Any, ...]] = {}
    for name in data_files(container, folder):
        for row in read(container, folder, name).to_pylist():
            if row.get("__rowMarker__", 0) == 2:
                table.pop(row["id"], None)
            else:
                table[row["id"]] = (row["id"], row["name"], str(row["amount"]))
    return sorted(table.values())


def test_open_mirroring_gets_the_changes_as_markers(
    pg: PgServer,
    pg_schema: str,
    azurite: Any,
    tmp_path: Path,
    spec_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Emulated: CHANGETABLE (`PgTracking`) and Fabric, by replaying the landing zone's files
    in order; real: the ODBC read path, the Open Mirroring Store on Azurite. `I`/`U` rows go
    as the Store's upserts (4), `D` rows as deletes (2), keys only."""
    from tests.test_open_mirroring import ITEM, data_files, read

    src = Source(pg, pg_schema)
    spec = ct_spec(pg, pg_schema, tmp_path, "parquet", spec_name, monkeypatch)
    ws = azurite.new_container()
    spec["store"] = {
        "type": "open_mirroring",
        "workspace": ws,
        "item": ITEM,
        "credentials": {"connection_string": azurite.connection_string},
        "drop_wait_seconds": 1,
    }
    spec["entities"][0]["key_columns"] = ["id"]
    c = azurite.container(ws)
    src.insert(list(range(1, 6)))
    assert run_flow(spec).is_completed()
    assert replay(c, "orders") == src.rows()
    src.update([1], "changed")
    src.insert([6])
    src.delete([2, 3])
    assert run_flow(spec).is_completed()
    assert replay(c, "orders") == src.rows()
    names = data_files(c, "orders")
    markers = [set(read(c, "orders", n)["__rowMarker__"].to_pylist()) for n in names[1:]]
    assert {4} in markers and {2} in markers

    spec["entities"][0]["key_columns"] = ["name"]
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"does not upsert by the `keys` \['id'\]"):
        state.result()


@pytest.mark.parametrize("reader", ["arrow-odbc", "pyodbc"])
def test_both_readers_step_through_a_batch_of_result_sets(pg: PgServer, reader: str) -> None:
    """The snapshot read's two result sets (version, then rows), through arrow-odbc and
    through pyodbc (the token-login reader, `PyodbcBatches`), on PostgreSQL via psqlODBC."""
    fields = {k: v for k, v in pg_odbc_home(pg).items() if k != "type"}
    opts = PgOdbcHome.model_validate(fields).fetch_options()
    if reader == "pyodbc":
        opts = dataclasses.replace(opts, attrs_before=dict)
    sql = "SELECT CAST(? AS bigint) AS v; SELECT g AS id, 'r' || g AS name"
    sql += " FROM generate_series(1, 5) g"
    got = _odbc.fetch(opts, sql, ["41"], 2)
    assert pa.Table.from_batches(list(got), schema=got.schema).to_pylist() == [{"v": 41}]
    assert _odbc.next_result(got, opts, 2)
    rows = pa.Table.from_batches(list(got), schema=got.schema)
    assert rows.column("id").to_pylist() == [1, 2, 3, 4, 5]
    assert rows.column("name").to_pylist()[-1] == "r5"
    assert not _odbc.next_result(got, opts, 2)


def test_planning_reads_the_whole_table_until_a_version_is_committed(tmp_path: Path) -> None:
    """The plan side of the state machine, from real ledger entries (no server needed)."""
    from blocks import ParquetStore
    from flows.plan import EntityBlocks, plan_entity
    from hygge_core.ledger_entry import LedgerEntry

    spec = parse_spec(entity_spec(changes="change_tracking", keys=["id"]))
    login = SqlServerCredentials(username="u", password="p")
    home = MssqlHome(host="h", database="d", credentials=login)
    store = ParquetStore(path=str(tmp_path / "lake"))
    e = EntityBlocks(spec.entities[0], home, store)

    def plan(entry: LedgerEntry | None, run_type: Any = "incremental") -> tuple[str, Any]:
        p = plan_entity(e, entry, run_type, "ledger")
        assert p.changes == "change_tracking" and p.watermark_keys == ["id"]
        return p.mode, p.previous_version

    assert plan(None) == ("replace", None)
    entry = LedgerEntry(changes={"kind": "change_tracking", "version": 12})
    assert LedgerEntry.from_json(entry.to_json()) == entry  # the version survives the manifest
    assert plan(entry) == ("replace", None)  # nothing published yet: reload
    (tmp_path / "lake" / "orders").mkdir(parents=True)
    (tmp_path / "lake" / "orders" / "part-x-00000.parquet").write_bytes(b"")
    assert plan(entry) == ("append", 12)
    assert plan(entry, "full_drop") == ("replace", None)


def test_only_the_sql_server_home_reads_change_tracking(tmp_path: Path) -> None:
    from blocks import ParquetStore, SqliteHome
    from flows.change_tracking import store_for

    entity = parse_spec(entity_spec(changes="change_tracking", keys=["id"])).entities[0]
    store = ParquetStore(path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"the sqlite Home has none \(use `type: mssql`"):
        store_for(entity, SqliteHome(path=str(tmp_path / "x.db")), store)

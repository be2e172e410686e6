"""MssqlHome up to the wire, for real; the shared ODBC read path end to end on PostgreSQL.

No SQL Server (nor any TDS server) can run on these machines, so:
- the real ODBC drivers (Microsoft's Driver 18 from `mssql-python-odbc`, FreeTDS from
  Debian) are loaded and pointed at a closed local port and given bad options: their real
  errors must come out classified (transient or not) and free of secrets;
- the read path the Home uses (`_plan` -> arrow-odbc -> conversion -> batches, connection
  limits, watermark binding, error mapping) runs end to end against the real PostgreSQL
  through psqlODBC. What is swapped for that, and only that: the SQL dialect (PostgreSQL's
  quoting instead of brackets), the connection string (psqlODBC's), and the column
  description (a zero-row probe instead of `sys.dm_exec_describe_first_result_set`);
- the T-SQL text is checked by parsing it with sqlglot (`read="tsql"`) and by exact text,
  using a fixed column description standing in for what SQL Server would report.
Not covered here, for lack of a server: SQL Server's own answers (type descriptions,
`datetimeoffset`/`time` conversions running, login failures 18456, Azure throttling codes
arriving from a real service) and Entra ID logins accepted by a service (the access-token path
up to the driver and its pyodbc reader are tested in `tests/test_mssql_token.py`).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlglot

import blocks
from blocks import MssqlHome, SqlServerCredentials
from blocks.base import ReadRequest, Since
from blocks.homes import _odbc
from blocks.homes.mssql import Column, describe_sql, tsql_column
from hygge_core.errors import ConfigError, HomeError, TransientHomeError, is_transient
from hygge_core.timestamps import NanoTimestamp
from tests.conftest import ledger_of, run_flow
from tests.pg_odbc import PgOdbcHome, pg_odbc_home
from tests.pg_server import PgServer, free_port

SECRET = "pa;ss}w=rd{x"


def creds(password: str = SECRET) -> SqlServerCredentials:
    return SqlServerCredentials(username="hygge_reader", password=password)


def mssql(**extra: Any) -> MssqlHome:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),  # nothing listens there
        "database": "shop",
        "credentials": creds(),
        "connect_timeout": 2,
        **extra,
    }
    return MssqlHome(**fields)


# --- T-SQL text ---------------------------------------------------------------------------

# what SQL Server would describe for the odd table below (faked: no server to ask)
DESCRIBED = [
    tsql_column("id", "bigint", 19, 0),
    tsql_column("Amount €", "decimal(12,2)", 12, 2),
    tsql_column("changed]at", "datetime2(7)", 27, 7),
    tsql_column("at", "datetimeoffset(7)", 34, 7),
    tsql_column("clock", "time(7)", 16, 7),
    tsql_column("guid", "uniqueidentifier", 0, 0),
    tsql_column("code", "nvarchar(20)", 0, 0),
    tsql_column("day", "date", 10, 0),
]


class DescribedMssqlHome(MssqlHome):
    """MssqlHome with SQL Server's column description given, not asked for (no server)."""

    _block_type_slug = "test-described-mssql-home"

    def columns(self, opts: Any, base: str, request: ReadRequest) -> list[Column]:
        return DESCRIBED


def tsql_for(request: ReadRequest, **extra: Any) -> tuple[str, list[str]]:
    fields = {"host": "127.0.0.1", "database": "shop", "credentials": creds(), "driver": "FreeTDS"}
    home = DescribedMssqlHome(**{**fields, **extra})
    ((sql, binder, _),) = home._plan(home.fetch_options(), request, "", 1)
    return sql, binder.values


def assert_tsql(sql: str) -> None:
    """Parses as T-SQL, and holds none of the constructs T-SQL lacks (sqlglot is lenient)."""
    sqlglot.parse_one(sql, read="tsql")
    bare = re.sub(r"\[(?:[^\]]|\]\])*\]|N?'(?:[^']|'')*'", "", sql)  # drop names, literals
    assert " LIMIT " not in bare.upper() and "::" not in bare


SELECT_LIST = (
    "[id], [Amount €], [changed]]at], "
    "CAST(SWITCHOFFSET([at], '+00:00') AS datetime2(7)) AS [at], "
    "DATEDIFF_BIG(NANOSECOND, CAST('00:00:00' AS time(7)), [clock]) AS [clock], "
    "LOWER(CONVERT(char(36), [guid])) AS [guid], [code], [day]"
)


class TSqlCase:
    def __init__(self, request: ReadRequest, sql: str, params: list[str]) -> None:
        self.request, self.sql, self.params = request, sql, params


TABLE = 'sales."Order ""Lines"" ü"'
TSQL_CASES = [
    pytest.param(
        TSqlCase(
            ReadRequest(entity="e", table=TABLE),
            f'SELECT {SELECT_LIST} FROM [sales].[Order "Lines" ü]',
            [],
        ),
        id="table",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(
                entity="e",
                table="[dbo].[a]]b]",
                where="[code] <> N'x'",
                since=Since("changed]at", dt.datetime(2024, 5, 1, 12, 0, 0, 5)),
            ),
            f"SELECT {SELECT_LIST} FROM [dbo].[a]]b] WHERE ([code] <> N'x') AND "
            "([changed]]at] >= CAST(? AS datetime2(7)) OR [changed]]at] IS NULL)",
            ["2024-05-01T12:00:00.000005"],
        ),
        id="datetime2-watermark",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(
                entity="e",
                table="dbo.t",
                since=Since("at", dt.datetime(2024, 5, 1, tzinfo=dt.UTC)),
            ),
            f"SELECT {SELECT_LIST} FROM [dbo].[t] "
            "WHERE ([at] >= CAST(? AS datetimeoffset(7)) OR [at] IS NULL)",
            ["2024-05-01T00:00:00+00:00"],
        ),
        id="datetimeoffset-watermark",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(
                entity="e",
                table="dbo.t",
                since=Since("changed]at", NanoTimestamp(1_714_564_800_123_456_789)),
            ),
            # arrow-odbc and pyodbc bind text; SQL Server's CAST reads 7 digits exactly, the
            # 9th-digit nanoseconds are cut (a bound at or before the value: the engine's exact
            # filter drops what it admits too much)
            f"SELECT {SELECT_LIST} FROM [dbo].[t] "
            "WHERE ([changed]]at] >= CAST(? AS datetime2(7)) OR [changed]]at] IS NULL)",
            ["2024-05-01T12:00:00.1234567"],
        ),
        id="datetime2-nanosecond-watermark",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(
                entity="e",
                table="dbo.t",
                since=Since("at", NanoTimestamp(1_714_564_800_000_000_001, utc=True)),
            ),
            f"SELECT {SELECT_LIST} FROM [dbo].[t] "
            "WHERE ([at] >= CAST(? AS datetimeoffset(7)) OR [at] IS NULL)",
            ["2024-05-01T12:00:00.0000000+00:00"],
        ),
        id="datetimeoffset-nanosecond-watermark",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(entity="e", table="dbo.t", since=Since("code", "Ab")),
            f"SELECT {SELECT_LIST} FROM [dbo].[t] WHERE ([code] COLLATE "
            "Latin1_General_100_BIN2 >= CAST(? AS nvarchar(max)) OR [code] IS NULL)",
            ["Ab"],
        ),
        id="text-watermark-binary-collation",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(entity="e", table="dbo.t", since=Since("Amount €", Decimal("12.50"))),
            f"SELECT {SELECT_LIST} FROM [dbo].[t] "
            "WHERE ([Amount €] >= CAST(? AS decimal(12, 2)) OR [Amount €] IS NULL)",
            ["12.50"],
        ),
        id="decimal-watermark",
    ),
    pytest.param(
        TSqlCase(
            ReadRequest(
                entity="e", query="SELECT TOP (10) * FROM dbo.t ORDER BY id;", since=Since("id", 7)
            ),
            f"SELECT {SELECT_LIST} FROM (SELECT TOP (10) * FROM dbo.t ORDER BY id) AS hygge_q "
            "WHERE ([id] >= CAST(? AS bigint) OR [id] IS NULL)",
            ["7"],
        ),
        id="query-int-watermark",
    ),
]


@pytest.mark.parametrize("case", TSQL_CASES)
def test_generated_tsql_is_exact_and_parses(case: TSqlCase) -> None:
    sql, params = tsql_for(case.request)
    assert sql == case.sql
    assert params == case.params
    assert_tsql(sql)


def test_describe_and_partition_sql_are_tsql() -> None:
    described = describe_sql("SELECT [it's] FROM [dbo].[t]")
    assert described == (
        "SELECT name, system_type_name, precision, scale FROM "
        "sys.dm_exec_describe_first_result_set(N'SELECT [it''s] FROM [dbo].[t]', NULL, 0) "
        "WHERE is_hidden = 0 ORDER BY column_ordinal"
    )
    assert_tsql(described)
    from blocks.homes import _sql

    preds = _sql.range_predicates(
        _sql.TSQL, "day", [dt.date(2024, 1, 1)], "date", lambda: _sql.Binder(_sql.qmark)
    )
    for pred, _ in preds:
        assert_tsql(f"SELECT * FROM [t] WHERE {pred}")


def test_sql_server_types_map_to_exact_arrow_types() -> None:
    cases = {
        "tinyint": pa.uint8(),
        "smallint": pa.int16(),
        "int": pa.int32(),
        "bigint": pa.int64(),
        "bit": pa.bool_(),
        "money": pa.decimal128(19, 4),
        "real": pa.float32(),
        "float": pa.float64(),
        "datetime": pa.timestamp("us"),
        "nvarchar(max)": pa.string(),
        "varbinary(max)": pa.binary(),
        "xml": pa.string(),
    }
    for name, arrow in cases.items():
        col = tsql_column("c", name, 53 if name == "float" else 0, 0)
        assert col.arrow == arrow, name
    assert tsql_column("c", "decimal(38,10)", 38, 10).arrow == pa.decimal128(38, 10)
    assert tsql_column("c", "datetime2(7)", 27, 7).arrow == pa.timestamp("ns")
    assert tsql_column("c", "datetime2(3)", 23, 3).arrow == pa.timestamp("us")
    assert tsql_column("c", "datetimeoffset(7)", 34, 7).arrow == pa.timestamp("ns", tz="UTC")
    assert tsql_column("c", "time(3)", 12, 3).arrow == pa.time64("us")
    # the int64 that DATEDIFF_BIG returns becomes a time of day
    nanos = pa.array([3_600_000_000_123], pa.int64()).cast(pa.time64("ns"))
    assert nanos.type == pa.time64("ns") and nanos[0].value == 3_600_000_000_123


# --- connection strings and real drivers -----------------------------------------------


def test_connection_string_braces_every_value() -> None:
    assert _odbc.escape_value("a}b;c=d{") == "{a}}b;c=d{}"
    text = mssql(driver="ODBC Driver 18 for SQL Server").connection_string()
    assert "PWD={pa;ss}}w=rd{x};" in text
    assert text.startswith("Driver={ODBC Driver 18 for SQL Server};Server={tcp:127.0.0.1,")
    assert "Encrypt={yes};TrustServerCertificate={no};" in text
    tds = mssql(driver="FreeTDS", encrypt="no").connection_string()
    assert "TDS_Version={7.4}" in tds and "Encryption={request}" in tds
    with pytest.raises(ConfigError, match="may not contain"):
        _odbc.connection_string({"a;b": "x"})


def test_auto_driver_finds_a_real_driver() -> None:
    _, family = _odbc.resolve_driver("auto")
    assert family in ("msodbc", "freetds")
    assert _odbc.bundled_driver18() is not None  # mssql-python-odbc is a dev dependency


def test_driver18_unreachable_server_is_transient_and_secret_free() -> None:
    home = mssql(driver=_odbc.bundled_driver18())
    start = time.monotonic()
    with pytest.raises(TransientHomeError, match=r"Login timeout expired.*HYT00.*will retry") as e:
        list(home.read(ReadRequest(entity="orders", table="dbo.orders")))
    assert time.monotonic() - start < 15
    assert "entity 'orders'" in str(e.value) and SECRET not in str(e.value)
    assert is_transient(e.value)


def test_freetds_unreachable_server_is_transient() -> None:
    home = mssql(driver="FreeTDS")
    with pytest.raises(TransientHomeError, match=r"Unable to connect.*08S01") as e:
        list(home.read(ReadRequest(entity="orders", table="dbo.orders")))
    assert SECRET not in str(e.value)


def test_escaped_password_is_not_read_as_options_but_a_raw_one_would_be() -> None:
    lib = _odbc.bundled_driver18()
    assert lib is not None
    # unescaped, the driver reads `Encrypt=maybe` out of the password and refuses the option
    raw = f"Driver={{{lib}}};Server=tcp:127.0.0.1,{free_port()};UID=u;PWD=x;Encrypt=maybe;"
    opts = _odbc.FetchOptions(raw, 100, 100, 2, 0)
    with pytest.raises(Exception, match="Encrypt") as info:
        _odbc.fetch(opts, "SELECT 1", [], 1)
    err = _odbc.to_home_error(info.value, "e", "SQL Server", ["x"], "")
    assert not is_transient(err)
    assert "check the Home's settings" in str(err)
    # escaped by the Home, the same text is just a (wrong) password: the driver goes on to
    # try the login, which times out against the closed port
    home = mssql(driver=lib, credentials=creds("x;Encrypt=maybe"))
    with pytest.raises(TransientHomeError, match="Login timeout"):
        list(home.read(ReadRequest(entity="e", table="t")))


def test_missing_driver_says_how_to_install_one() -> None:
    with pytest.raises(HomeError, match=r"Can't open lib.*mssql-python-odbc") as e:
        list(mssql(driver="No Such Driver 99").read(ReadRequest(entity="e", table="t")))
    assert not is_transient(e.value)


@pytest.mark.parametrize(
    ("state", "native", "message", "kind"),
    [
        # the diagnostic text arrow-odbc formats; codes are SQL Server's documented ones
        ("08S01", 0, "TCP Provider: connection reset", "transient"),
        ("HYT00", 0, "Query timeout expired", "transient"),
        ("40001", 1205, "Transaction was deadlocked", "transient"),
        ("42000", 40613, "Database 'db' on server 's' is not currently available", "transient"),
        ("42000", 40501, "The service is currently busy", "transient"),
        ("42000", 10928, "Resource ID : 1. The request limit for the database", "transient"),
        ("42000", 49919, "Cannot process create or update request", "transient"),
        ("28000", 18456, "Login failed for user 'u'", "auth"),
        ("08001", 101, "password authentication failed for user", "auth"),
        ("42S02", 208, "Invalid object name 'dbo.nope'", "missing"),
        ("42000", 102, "Incorrect syntax near 'FORM'", "sql"),
    ],
)
def test_sql_server_errors_are_classified(state: str, native: int, message: str, kind: str) -> None:
    text = (
        "ODBC emitted an error calling 'X':\n"
        f"State: {state}, Native error: {native}, Message: {message}"
    )
    failure = _odbc.OdbcFailure.parse(Exception(text))
    assert (failure.state, failure.native, failure.kind) == (state, native, kind)


def test_sql_server_credentials_need_exactly_one_login() -> None:
    with pytest.raises(ValueError, match="exactly one login"):
        SqlServerCredentials()
    with pytest.raises(ValueError, match="exactly one login"):
        SqlServerCredentials(username="u", password="p", managed_identity=True)
    with pytest.raises(ValueError, match="service_principal needs client_id"):
        SqlServerCredentials(tenant_id="t", client_secret="s")
    sp = SqlServerCredentials(tenant_id="t", client_id="c", client_secret="s3")
    assert sp.odbc_login("msodbc") == {
        "Authentication": "ActiveDirectoryServicePrincipal",
        "UID": "c@t",
        "PWD": "s3",
    }
    mi = SqlServerCredentials(managed_identity=True)
    assert mi.odbc_login("msodbc") == {"Authentication": "ActiveDirectoryMsi", "UID": None}
    with pytest.raises(ConfigError, match="FreeTDS supports SQL logins only"):
        sp.odbc_login("freetds")
    assert "s3" not in repr(sp)


# --- the shared ODBC read path, end to end on PostgreSQL ---------------------------------


def test_odbc_path_moves_a_table_fully_and_incrementally(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(blocks.HOMES, "pg-odbc", PgOdbcHome)
    table = f'"{pg_schema}"."odd ""name"" ü"'
    pg.execute(
        f"CREATE TABLE {table} (id int, ts timestamp, amount numeric(12, 3), f8 float8,"
        " flag boolean, d date, note text, raw bytea, big bigint)"
    )

    def insert(rows: range, step: int) -> None:
        values = ",".join(
            f"({i}, '2024-05-01 12:00:00'::timestamp + {i // step} * interval '1 second', "
            f"{i}.125, {i} + 0.1, {str(i % 2 == 0).lower()}, '2024-05-01', 'ü✓ {i}', "
            f"'\\x{i:04x}', {2**62 + i})"
            for i in rows
        )
        pg.execute(f"INSERT INTO {table} VALUES {values}")

    insert(range(0, 40), 4)
    pg.execute(f"INSERT INTO {table} (id) VALUES (1000)")  # a NULL watermark
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": pg_odbc_home(pg, max_text_size=64, max_binary_size=64),
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "defaults": {"batch_size": 16},
        "entities": [
            {
                "name": "odd",
                "table": f'{pg_schema}."odd ""name"" ü"',
                # the NULL-watermark row: loaded by the first (full) load, then skipped
                "watermark": {"column": "ts", "keys": ["id"], "nulls": "skip"},
            }
        ],
    }
    state = run_flow(spec)
    assert state.is_completed(), state
    insert(range(40, 50), 4)  # ids 40-43 tie with the stored watermark second (40 // 4 = 10)
    state = run_flow(spec)
    assert state.is_completed(), state
    assert state.result()[0]["rows"] == 10

    import pyarrow.parquet as pq

    got = pa.concat_tables(pq.read_table(f) for f in sorted((lake / "odd").glob("*.parquet")))
    rows = sorted(got.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [*range(50), 1000]
    assert rows[7] == {
        "id": 7,
        "ts": dt.datetime(2024, 5, 1, 12, 0, 1),
        "amount": Decimal("7.125"),
        "f8": 7.1,  # float64, not psqlODBC's float32 (7.099999904632568)
        "flag": False,
        "d": dt.date(2024, 5, 1),
        "note": "ü✓ 7",
        "raw": b"\x00\x07",
        "big": 2**62 + 7,
    }
    assert got.schema.field("f8").type == pa.float64()
    assert got.schema.field("flag").type == pa.bool_()
    assert ledger_of(spec)["odd"]["watermark"]["boundary"] == ["48", "49"]


def test_odbc_path_fails_loudly_on_text_longer_than_its_buffer(pg: PgServer) -> None:
    home = PgOdbcHome(
        host=pg.host,
        port=pg.port,
        database=pg.dbname,
        credentials=SqlServerCredentials(username=pg.user, password=pg.password),
        max_text_size=10,
    )
    query = "SELECT repeat('x', 50) AS long"
    with pytest.raises(HomeError, match=r"longer than the text/binary buffer.*max_text_size=10"):
        list(home.read(ReadRequest(entity="e", query=query)))
    wide = home.model_copy(update={"max_text_size": 64})
    assert next(wide.read(ReadRequest(entity="e", query=query))).to_pylist() == [{"long": "x" * 50}]


def test_odbc_path_reports_a_refused_login_and_missing_table(pg: PgServer) -> None:
    good = SqlServerCredentials(username=pg.user, password=pg.password)
    fields = {"host": pg.host, "port": pg.port, "database": pg.dbname}
    home = PgOdbcHome(**fields, credentials=good)
    with pytest.raises(HomeError, match=r"does not exist.*check `table`") as e:
        list(home.read(ReadRequest(entity="ghost", table="public.no_such")))
    assert not is_transient(e.value)
    wrong = PgOdbcHome(
        **fields, credentials=SqlServerCredentials(username=pg.user, password="no;pe")
    )
    # psqlODBC reports a refused password as SQLSTATE 08001: still not a reason to retry
    with pytest.raises(HomeError, match=r"password authentication failed.*check the login") as e:
        list(wrong.read(ReadRequest(entity="e", query="SELECT 1 AS x")))
    assert not is_transient(e.value)
    assert "no;pe" not in str(e.value)


def test_odbc_path_pushes_a_nanosecond_bound_as_text(pg: PgServer, pg_schema: str) -> None:
    # the ODBC path binds the bound as text with 7 digits (SQL Server's datetime2(7) reads
    # them exactly); PostgreSQL keeps microseconds and rounds the text: still a superset of
    # `ts >= bound`, which is all a Home owes (the engine filters exactly)
    pg.execute(
        f'CREATE TABLE "{pg_schema}".ns (id int, ts timestamp)',
        f"INSERT INTO \"{pg_schema}\".ns VALUES (1, '2024-05-01 12:00:00.123456'),"
        " (2, '2024-05-01 12:00:00.123457'), (3, NULL)",
    )
    home = PgOdbcHome(
        host=pg.host,
        port=pg.port,
        database=pg.dbname,
        credentials=SqlServerCredentials(username=pg.user, password=pg.password),
    )
    bound = NanoTimestamp(1_714_564_800_123_456_789)  # 12:00:00.123456789
    request = ReadRequest(entity="e", table=f"{pg_schema}.ns", since=Since("ts", bound))
    got = pa.Table.from_batches(list(home.read(request)))
    assert sorted(got.column("id").to_pylist()) == [2, 3]

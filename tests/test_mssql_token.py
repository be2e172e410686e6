"""Entra ID access-token logins for MssqlHome: the token's wire form, its secrecy, its read path.

What is real here: Microsoft's ODBC Driver 18 (from `mssql-python-odbc`) loaded by pyodbc and
given the token as the pre-connect attribute `SQL_COPT_SS_ACCESS_TOKEN` (1256); the pyodbc read
path (`_odbc.PyodbcBatches`) end to end against the real PostgreSQL through psqlODBC.
What is faked, and why: azure-identity's `DefaultAzureCredential` (no Entra ID tenant can be
reached from here), replaced at hygge's one seam `blocks.credentials._default_azure_credential`;
it is the boundary that hands hygge a token, everything after it runs for real.
Not covered, for lack of a server: SQL Server accepting or refusing a real token (error 18456),
and `datetime2(7)` text (`CONVERT(.., 121)`) produced by SQL Server itself (the same text is
produced by PostgreSQL below and parsed by the same code).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

import blocks
import blocks.credentials
from blocks import MssqlHome, SqlServerCredentials
from blocks.base import ReadRequest
from blocks.credentials import ENTRA_SCOPE, SQL_COPT_SS_ACCESS_TOKEN, access_token_struct
from blocks.homes import _odbc
from blocks.homes.mssql import tsql_column
from hygge_core.errors import ConfigError, HomeError, TransientHomeError, is_transient
from tests.conftest import run_flow
from tests.pg_odbc import PgOdbcHome, pg_odbc_home
from tests.pg_server import PgServer, free_port

# shaped like a JWT (header.payload.signature, base64url); no service would accept it
TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9."
    "eyJhdWQiOiJodHRwczovL2RhdGFiYXNlLndpbmRvd3MubmV0LyJ9.c2lnbmF0dXJlLXNlY3JldA"
)


def token_home(**extra: Any) -> MssqlHome:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),  # nothing listens there
        "database": "shop",
        "credentials": SqlServerCredentials(access_token=TOKEN),
        "driver": _odbc.bundled_driver18(),
        "connect_timeout": 2,
        **extra,
    }
    return MssqlHome(**fields)


class FakeDefaultAzureCredential:
    """Stands in for azure-identity (no tenant reachable): records scopes, hands out tokens."""

    def __init__(self, tokens: list[str] | None = None, error: str | None = None) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self._tokens = list(tokens or [])
        self._error = error

    def get_token(self, *scopes: str) -> AccessToken:
        self.scopes.append(scopes)
        if self._error is not None:
            raise ClientAuthenticationError(self._error)
        return AccessToken(self._tokens.pop(0), 4_102_444_800)


# --- the token's wire form ---------------------------------------------------------------


def test_access_token_struct_is_microsofts_acesstoken_layout() -> None:
    # learn.microsoft.com, "Using Microsoft Entra ID with the ODBC Driver": ACCESSTOKEN is
    # { unsigned int dataSize; char data[]; } and the token's bytes are expanded with a zero
    # byte after each; dataSize counts the expanded bytes
    assert access_token_struct("ab") == b"\x04\x00\x00\x00a\x00b\x00"
    packed = access_token_struct(TOKEN)
    expanded = b"".join(bytes([c, 0]) for c in TOKEN.encode("ascii"))
    assert struct.unpack("<I", packed[:4]) == (2 * len(TOKEN),)
    assert packed[4:] == expanded == TOKEN.encode("utf-16-le")
    assert SQL_COPT_SS_ACCESS_TOKEN == 1256
    assert SqlServerCredentials(access_token=TOKEN).attrs_before() == {1256: packed}
    for bad in ("", "tök.en", "Bearer eyJ0"):
        with pytest.raises(ConfigError, match="non-empty ASCII string without spaces"):
            access_token_struct(bad)


def test_token_logins_are_their_own_mode() -> None:
    with pytest.raises(ValueError, match="got sql_login, access_token"):
        SqlServerCredentials(username="u", password="p", access_token=TOKEN)
    with pytest.raises(ValueError, match="got managed_identity, default_credential"):
        SqlServerCredentials(managed_identity=True, default_credential=True)
    creds = SqlServerCredentials(default_credential=True)
    assert creds.auth == "default_credential" and creds.uses_token
    assert not SqlServerCredentials(managed_identity=True).uses_token
    with pytest.raises(ConfigError, match="FreeTDS supports SQL logins only"):
        SqlServerCredentials(access_token=TOKEN).odbc_login("freetds")


def test_the_token_never_shows_in_strings_reprs_or_dumps() -> None:
    home = token_home()
    text = home.connection_string()
    assert TOKEN not in text
    # the driver refuses a token next to any of these (FA005), so none may be there
    for key in ("UID=", "PWD=", "Authentication=", "Trusted_Connection="):
        assert key not in text
    opts = home.fetch_options()
    shown = [repr(opts), str(opts), repr(home), str(home), repr(home.credentials)]
    shown += [home.model_dump_json(), home.credentials.model_dump_json()]
    for item in shown:
        assert TOKEN not in item
        assert TOKEN[:40] not in item
    assert home.credentials.secrets() == [TOKEN]  # what error messages are scrubbed of


# --- the real ODBC Driver 18 ---------------------------------------------------------------


def test_driver18_receives_the_token_attribute() -> None:
    home = token_home()
    opts = home.fetch_options()
    # proof that the driver got attribute 1256: it refuses it beside a user name (FA005),
    # which it says only when the attribute is set
    with_user = dataclasses.replace(opts, connection_string=opts.connection_string + "UID={u};")
    with pytest.raises(Exception, match="Cannot use Access Token") as info:
        _odbc.fetch(with_user, "SELECT 1", [], 1)
    err = _odbc.to_home_error(info.value, "e", "SQL Server", [TOKEN], "")
    assert "SQLSTATE FA005" in str(err) and not is_transient(err)
    assert TOKEN not in str(info.value)
    # the same string without the attribute: no complaint about a token, just the login timeout
    plain = dataclasses.replace(with_user, attrs_before=None)
    with pytest.raises(Exception, match="Login timeout expired") as info:
        _odbc.fetch(plain, "SELECT 1", [], 1)
    assert "Access Token" not in str(info.value)


def test_driver18_token_login_to_unreachable_server_is_transient_and_token_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransientHomeError, match=r"Login timeout expired.*HYT00.*will retry") as e:
        list(token_home().read(ReadRequest(entity="orders", table="dbo.orders")))
    assert "entity 'orders'" in str(e.value)
    assert TOKEN not in str(e.value) and TOKEN not in repr(e.value.__cause__)
    assert TOKEN not in caplog.text


def test_default_credential_token_is_fetched_for_the_sql_scope_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeDefaultAzureCredential(tokens=[TOKEN, TOKEN + "x"])
    monkeypatch.setattr(blocks.credentials, "_default_azure_credential", lambda: fake)
    home = token_home(credentials=SqlServerCredentials(default_credential=True))
    for _ in range(2):  # each connection asks again, so an expired token is never reused
        with pytest.raises(TransientHomeError, match="Login timeout expired"):
            list(home.read(ReadRequest(entity="orders", table="dbo.orders")))
    assert fake.scopes == [(ENTRA_SCOPE,), (ENTRA_SCOPE,)]
    assert ENTRA_SCOPE == "https://database.windows.net/.default"
    assert TOKEN not in home.connection_string()


def test_default_credential_without_a_login_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeDefaultAzureCredential(error="DefaultAzureCredential failed to retrieve a token")
    monkeypatch.setattr(blocks.credentials, "_default_azure_credential", lambda: fake)
    home = token_home(credentials=SqlServerCredentials(default_credential=True))
    with pytest.raises(HomeError, match=r"entity 'orders': DefaultAzureCredential found no") as e:
        list(home.read(ReadRequest(entity="orders", table="dbo.orders")))
    assert "az login" in str(e.value) and not is_transient(e.value)


# --- the token read path (pyodbc) end to end on PostgreSQL ---------------------------------


class PgPyodbcHome(PgOdbcHome):
    """PgOdbcHome read through the token path: pyodbc + `PyodbcBatches`, not arrow-odbc.

    The access-token attribute itself is omitted: 1256 is Microsoft's driver's own attribute
    (msodbcsql.h), which psqlODBC does not know, and PostgreSQL takes no Entra token over
    ODBC. The login is the test server's password; everything after connecting is the path a
    token login takes.
    """

    _block_type_slug = "test-pg-pyodbc-home"
    spec_type = "pg-pyodbc"

    def fetch_options(self) -> _odbc.FetchOptions:
        return dataclasses.replace(super().fetch_options(), attrs_before=dict)


ALL_TYPES = (
    "SELECT id, id::int2 AS i2, (id * 100000)::int4 AS i4, (id::int8 << 40) AS i8,"
    " (id + 0.125)::numeric(12, 3) AS n, (id + 0.1)::float8 AS f8, (id + 0.5)::float4 AS f4,"
    " id % 2 = 0 AS b, DATE '2024-02-29' + id AS d,"
    " TIMESTAMP '2024-05-01 12:00:00.123456' + id * INTERVAL '1 second' AS ts,"
    " TIME '23:59:59.999999' AS tm, repeat('ü✓', 20) || id AS tx, '\\x00ff'::bytea AS by,"
    " NULL::int4 AS nothing FROM generate_series(1, 25) AS id"
    " UNION ALL SELECT 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL"
)


def test_token_read_path_matches_the_arrow_odbc_path_type_for_type(pg: PgServer) -> None:
    fields = {"host": pg.host, "port": pg.port, "database": pg.dbname}
    creds = SqlServerCredentials(username=pg.user, password=pg.password)
    request = ReadRequest(entity="e", query=ALL_TYPES, batch_size=7)
    arrow_odbc = PgOdbcHome(**fields, credentials=creds, max_text_size=256)
    token_path = PgPyodbcHome(**fields, credentials=creds, max_text_size=256)
    expected = pa.Table.from_batches(list(arrow_odbc.read(request)))
    batches = list(token_path.read(request))
    assert [b.num_rows for b in batches] == [7, 7, 7, 5]  # bounded batches
    got = pa.Table.from_batches(batches)
    for name in ("f8", "n", "b", "d", "ts", "tx", "by", "nothing"):
        assert got.schema.field(name).type == expected.schema.field(name).type, name
    # integer widths come from the column size, which psqlODBC reports as arrow-odbc reads it
    assert got.schema.field("i8").type == pa.int64() and got.schema.field("i2").type == pa.int16()
    assert got.to_pylist() == expected.to_pylist()
    row = next(r for r in got.to_pylist() if r["id"] == 4)
    assert row["f8"] == 4.1 and row["n"] == Decimal("4.125") and row["b"] is True
    assert row["ts"] == dt.datetime(2024, 5, 1, 12, 0, 4, 123456)


def test_token_read_path_reads_long_text_whole_and_nanosecond_text_exactly(pg: PgServer) -> None:
    home = PgPyodbcHome(
        host=pg.host,
        port=pg.port,
        database=pg.dbname,
        credentials=SqlServerCredentials(username=pg.user, password=pg.password),
        max_text_size=10,
    )
    long = next(home.read(ReadRequest(entity="e", query="SELECT repeat('x', 50000) AS long")))
    assert long.to_pylist() == [{"long": "x" * 50000}]  # pyodbc reads a value whole
    # `datetime2(7)` travels as SQL Server's style-121 text on this path (`Column.text_expr`);
    # the same text, from PostgreSQL, parsed into the column's type by the same code
    col = tsql_column("at", "datetime2(7)", 27, 7)
    assert col.select(exact_text=True) == "CONVERT(varchar(27), [at], 121) AS [at]"
    opts = home.fetch_options()
    sql = "SELECT '2024-05-01 12:00:00.1234567' AS at UNION ALL SELECT NULL"
    reader = _odbc.fetch(opts, sql, [], 10, lambda s: pa.schema([("at", col.fetch)]))
    values = pa.Table.from_batches(list(reader)).column("at").cast(pa.int64()).to_pylist()
    assert values == [1_714_564_800_123_456_700, None]


def test_token_read_path_moves_a_table_fully_and_incrementally(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(blocks.HOMES, "pg-pyodbc", PgPyodbcHome)
    table = f'"{pg_schema}"."tok"'
    pg.execute(f"CREATE TABLE {table} (id int, ts timestamp, amount numeric(12, 3), note text)")

    def insert(ids: range, second: int | None = None) -> None:
        values = ",".join(
            f"({i}, TIMESTAMP '2024-05-01 12:00:00' + {i // 4 if second is None else second}"
            f" * INTERVAL '1 second', {i}.125, 'ü {i}')"
            for i in ids
        )
        pg.execute(f"INSERT INTO {table} VALUES {values}")

    insert(range(0, 20))
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {**pg_odbc_home(pg), "type": "pg-pyodbc"},
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "defaults": {"batch_size": 8},
        "entities": [
            {
                "name": "tok",
                "table": f"{pg_schema}.tok",
                "watermark": {"column": "ts", "keys": ["id"]},
            }
        ],
    }
    assert run_flow(spec).is_completed()
    insert(range(20, 22), second=4)  # late rows tied with the stored watermark (ids 16-19)
    insert(range(22, 26))
    state = run_flow(spec)
    assert state.is_completed(), state
    assert state.result()[0]["rows"] == 6
    got = pa.concat_tables(pq.read_table(f) for f in sorted((lake / "tok").glob("*.parquet")))
    rows = sorted(got.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(26))
    assert rows[21] == {
        "id": 21,
        "ts": dt.datetime(2024, 5, 1, 12, 0, 4),
        "amount": Decimal("21.125"),
        "note": "ü 21",
    }


def test_datetimeoffset_struct_decodes_to_utc() -> None:
    # SQL_SS_TIMESTAMPOFFSET_STRUCT, as msodbcsql hands it to a pyodbc output converter (no
    # SQL Server here to send one: the layout is built from the documented struct)
    raw = struct.pack("<6hI2h", 2024, 5, 1, 14, 30, 15, 123_456_700, 2, 30)
    assert _odbc.datetimeoffset_value(raw) == dt.datetime(2024, 5, 1, 12, 0, 15, 123456, dt.UTC)
    west = struct.pack("<6hI2h", 2024, 12, 31, 23, 0, 0, 0, -8, 0)
    assert _odbc.datetimeoffset_value(west) == dt.datetime(2025, 1, 1, 7, 0, 0, tzinfo=dt.UTC)
    assert _odbc.datetimeoffset_value(None) is None


def test_a_flow_with_a_token_login_never_shows_the_token(
    tmp_path: Path, spec_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole run: the error summary, the logs and the run journal carry no token."""
    caplog.set_level(logging.DEBUG)
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {
            "type": "mssql",
            "host": "127.0.0.1",
            "port": free_port(),  # nothing listens there
            "database": "shop",
            "driver": _odbc.bundled_driver18(),
            "connect_timeout": 2,
            "credentials": {"access_token": TOKEN},
        },
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "entities": [{"name": "orders", "table": "dbo.orders"}],
    }
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"1 of 1 entities failed: orders") as info:
        state.result()
    text = str(info.value) + str(getattr(info.value, "summary", ""))
    assert "Login timeout expired" in text
    assert TOKEN not in text and TOKEN not in caplog.text
    journal = list((lake / "_journal").glob("*.parquet"))
    assert journal, "the failed run is journaled"
    for path in journal:
        records = str(pq.read_table(path).to_pylist())  # decoded: the file is compressed
        assert "Login timeout" in records and TOKEN not in records

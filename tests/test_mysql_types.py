"""MySQL/MariaDB type matrix: every type the MysqlHome maps, at its edges, through a real flow.

One wide table on a real MariaDB (tests/mariadb_server.py): a row of one extreme, a row of the
other, a row of NULLs. The flow reads it into the real Parquet Store; the lake must hold each
value exactly, in the Arrow type `blocks.homes._mysql_types` documents. A value Arrow cannot
hold (a zero date, a TIME that is a duration) is refused naming the column, never changed.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from blocks import MysqlCredentials, MysqlHome
from blocks.base import ReadRequest
from hygge_core.errors import HomeError
from tests.conftest import run_flow
from tests.mariadb_server import MariaServer, maria_home
from tests.test_postgres_home import lake_rows, lake_schema

UTC = dt.UTC
U64 = 2**64 - 1
D65 = "9" * 35 + "." + "9" * 30
LONG_TEXT = "ü✓😀 " * 20_000 + "end"

# name, SQL type, first value, second value (SQL literals), the two values read, Arrow type
# fmt: off
COLUMNS: list[tuple[str, str, str, str, Any, Any, pa.DataType]] = [
    ("ti", "TINYINT", "-128", "127", -128, 127, pa.int8()),
    ("tu", "TINYINT UNSIGNED", "255", "0", 255, 0, pa.int16()),
    ("si", "SMALLINT", "-32768", "32767", -32768, 32767, pa.int16()),
    ("su", "SMALLINT UNSIGNED", "65535", "0", 65535, 0, pa.int32()),
    ("mi", "MEDIUMINT", "-8388608", "8388607", -8388608, 8388607, pa.int32()),
    ("mu", "MEDIUMINT UNSIGNED", "16777215", "0", 16777215, 0, pa.int32()),
    ("i4", "INT", "-2147483648", "2147483647", -(2**31), 2**31 - 1, pa.int32()),
    ("iu", "INT UNSIGNED", "4294967295", "0", 2**32 - 1, 0, pa.int64()),
    ("bi", "BIGINT", str(-(2**63)), str(2**63 - 1), -(2**63), 2**63 - 1, pa.int64()),
    ("bu", "BIGINT UNSIGNED", str(U64), "0", Decimal(U64), Decimal(0), pa.decimal128(20, 0)),
    ("bo", "BOOL", "1", "0", 1, 0, pa.int8()),
    ("yr", "YEAR", "2155", "1901", 2155, 1901, pa.int16()),
    ("dc", "DECIMAL(10,2)", "12345678.91", "-0.01", Decimal("12345678.91"), Decimal("-0.01"),
     pa.decimal128(10, 2)),
    ("d38", "DECIMAL(38,20)", "123456789012345678.12345678901234567890",
     "-0.00000000000000000001", Decimal("123456789012345678.12345678901234567890"),
     Decimal("-1E-20"), pa.decimal128(38, 20)),
    ("d65", "DECIMAL(65,30)", D65, "-" + D65, Decimal(D65), Decimal("-" + D65),
     pa.decimal256(65, 30)),
    ("du", "DECIMAL(5,0) UNSIGNED", "99999", "0", Decimal(99999), Decimal(0),
     pa.decimal128(5, 0)),
    ("f4", "FLOAT", "1.5", "-3.25", 1.5, -3.25, pa.float32()),
    ("f8", "DOUBLE", "0.1", "1.7976931348623157e308", 0.1, 1.7976931348623157e308, pa.float64()),
    ("dt6", "DATETIME(6)", "'9999-12-31 23:59:59.999999'", "'1000-01-01 00:00:00'",
     dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(1000, 1, 1),
     pa.timestamp("us")),
    ("dt0", "DATETIME", "'2024-02-29 12:34:56'", "'1000-01-01 00:00:00'",
     dt.datetime(2024, 2, 29, 12, 34, 56), dt.datetime(1000, 1, 1),
     pa.timestamp("us")),
    ("ts6", "TIMESTAMP(6) NULL", "'2038-01-19 03:14:07.999999'", "'1970-01-01 00:00:01'",
     dt.datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC),
     dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), pa.timestamp("us", tz="UTC")),
    ("dd", "DATE", "'9999-12-31'", "'1000-01-01'", dt.date(9999, 12, 31), dt.date(1000, 1, 1),
     pa.date32()),
    ("tm", "TIME(6)", "'23:59:59.999999'", "'00:00:00'", dt.time(23, 59, 59, 999999), dt.time(0),
     pa.time64("us")),
    ("b1", "BIT(1)", "b'1'", "b'0'", True, False, pa.bool_()),
    ("b8", "BIT(8)", "b'10000001'", "b'0'", 129, 0, pa.int64()),
    ("b64", "BIT(64)", "b'" + "1" * 64 + "'", "b'0'", Decimal(U64), Decimal(0),
     pa.decimal128(20, 0)),
    ("js", "JSON", """'{"a": [1, 2.50], "ü": "✓"}'""", "'null'", '{"a": [1, 2.50], "ü": "✓"}',
     "null", pa.string()),
    ("bl", "BLOB", "x'00ff10'", "x''", b"\x00\xff\x10", b"", pa.binary()),
    ("vb", "VARBINARY(8)", "x'0001'", "''", b"\x00\x01", b"", pa.binary()),
    ("bn", "BINARY(4)", "x'01'", "''", b"\x01\x00\x00\x00", b"\x00" * 4, pa.binary()),
    ("tx", "LONGTEXT", f"'{LONG_TEXT}'", "''", LONG_TEXT, "", pa.string()),
    ("vc", "VARCHAR(5)", "'fünf✓'", "' a\\'b'", "fünf✓", " a'b", pa.string()),
    ("l1", "VARCHAR(5) CHARACTER SET latin1", "'café'", "''", "café", "", pa.string()),
    ("en", "ENUM('a','b')", "'b'", "'a'", "b", "a", pa.string()),
    ("st", "SET('x','y')", "'x,y'", "''", "x,y", "", pa.string()),
    ("uu", "UUID", "'12345678-9abc-4def-8123-456789abcdef'",
     "'00000000-0000-0000-0000-000000000000'",
     "12345678-9abc-4def-8123-456789abcdef", "00000000-0000-0000-0000-000000000000",
     pa.string()),
    ("ip", "INET6", "'::1'", "'::ffff:192.168.0.1'", "::1", "::ffff:192.168.0.1", pa.string()),
    ("g", "POINT", "POINT(1.5, -2)", "POINT(0, 0)", "POINT(1.5 -2)", "POINT(0 0)", pa.string()),
]
# fmt: on


def home(server: MariaServer, database: str, **extra: Any) -> MysqlHome:
    fields: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "database": database,
        "credentials": MysqlCredentials(username=server.user, password=server.password),
    }
    return MysqlHome(**{**fields, **extra})


def test_every_type_round_trips_exactly_through_a_flow(
    mariadb: MariaServer, maria_db: str, tmp_path: Path, spec_name: str
) -> None:
    ddl = ", ".join(f"`{name}` {sql}" for name, sql, *_ in COLUMNS)
    rows = [
        "(1, " + ", ".join(c[2] for c in COLUMNS) + ")",
        "(2, " + ", ".join(c[3] for c in COLUMNS) + ")",
        "(3" + ", NULL" * len(COLUMNS) + ")",
    ]
    mariadb.execute(
        "SET time_zone = '+00:00'",  # the TIMESTAMP literals are UTC
        f"CREATE TABLE `{maria_db}`.types (id INT PRIMARY KEY, {ddl})",
        f"INSERT INTO `{maria_db}`.types VALUES " + ", ".join(rows),
    )
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": maria_home(mariadb, maria_db),
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "entities": [
            {"name": "types", "table": "types"},
            {
                "name": "by_query",
                "query": f"SELECT id, CONCAT(vc, '✓') AS `Ünï code`, bu + 0 AS n FROM "
                f"`{maria_db}`.types WHERE id < 3",
            },
        ],
    }
    state = run_flow(spec)
    assert state.is_completed(), state
    schema = lake_schema(lake, "types")
    for name, _, _, _, _, _, arrow in COLUMNS:
        assert schema.field(name).type == arrow, name
    got = lake_rows(lake, "types")
    assert got == [
        {"id": 1, **{c[0]: c[4] for c in COLUMNS}},
        {"id": 2, **{c[0]: c[5] for c in COLUMNS}},
        {"id": 3, **{c[0]: None for c in COLUMNS}},
    ]
    # a computed column is described as exactly as a table's (DECIMAL(21,0) from `bu + 0`)
    assert lake_rows(lake, "by_query") == [
        {"id": 1, "Ünï code": "fünf✓✓", "n": Decimal(U64)},
        {"id": 2, "Ünï code": " a'b✓", "n": Decimal(0)},
    ]


@pytest.mark.parametrize(
    ("sql_type", "value", "what"),
    [
        ("DATE", "'0000-00-00'", "zero date"),
        ("DATE", "'2024-00-10'", "zero date"),
        ("DATETIME(6)", "'2024-02-00 10:00:00'", "zero date"),
        ("TIMESTAMP NULL", "'0000-00-00 00:00:00'", "zero date"),
        ("TIME", "'24:00:00'", "24 hours or more"),
        ("TIME(6)", "'-00:00:00.000001'", "below 00:00:00"),
        ("TIME", "'838:59:59'", "24 hours or more"),
    ],
)
def test_a_value_arrow_cannot_hold_is_refused_naming_the_column_and_the_choice(
    mariadb: MariaServer, maria_db: str, sql_type: str, value: str, what: str
) -> None:
    mariadb.execute(
        "SET sql_mode = ''",  # a server that allows zero dates
        f"CREATE TABLE `{maria_db}`.odd (id INT, v {sql_type})",
        f"INSERT INTO `{maria_db}`.odd VALUES (1, NULL), (2, {value})",
    )
    h = home(mariadb, maria_db)
    with pytest.raises(HomeError, match=r"entity 'odd'.*column 'v' holds") as info:
        list(h.read(ReadRequest(entity="odd", table="odd")))
    text = str(info.value)
    assert what in text and "CAST(`v` AS CHAR)" in text and "`where`" in text
    # the choice offered works, and reads the server's own text
    as_text = ReadRequest(entity="odd", query="SELECT id, CAST(v AS CHAR) AS v FROM odd")
    got = pa.Table.from_batches(list(h.read(as_text))).sort_by("id")
    want = mariadb.query(f"SELECT CAST(v AS CHAR) FROM `{maria_db}`.odd WHERE id = 2")[0][0]
    assert got.column("v").to_pylist() == [None, want]
    # and `where` leaves the row out
    rest = ReadRequest(entity="odd", table="odd", where="id = 1")
    assert pa.Table.from_batches(list(h.read(rest))).to_pylist() == [{"id": 1, "v": None}]

"""PostgreSQL type matrix: every documented type, with its edge values, through a real flow.

Each type is one column of one wide table; row i holds the type's i-th edge value (NULL once
its values run out, and a last row of NULLs). The flow reads it with the PostgresHome into the
real Parquet Store, and every value in the lake is compared with what the server holds, both
sides in a canonical form: exact decimals as their digits, instants as UTC microseconds, dates
as days, bytes as hex, floats by their bits. A value the Home cannot carry exactly must be
refused with a message that names the entity, the column and the choice, never changed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks import PostgresCredentials, PostgresHome
from blocks.base import ReadRequest
from hygge_core.errors import HomeError
from tests.conftest import run_flow
from tests.pg_server import PgServer, pg_home

LONG_TEXT = "ü✓😀 " * 30_000 + "end"


@dataclass(frozen=True)
class Case:
    name: str
    sql_type: str
    values: list[str]  # SQL literals
    canon: str  # the server's canonical text of `{v}`
    arrow: pa.DataType  # what the lake holds


INT = "{v}::text"
DEC = "{v}::numeric::text"
TXT = "CASE WHEN {v} IS NOT NULL THEN format('%s', {v}) END"  # the output function's text
EPOCH_US = "(extract(epoch from {v}) * 1000000)::bigint::text"

CASES = [
    Case("i2", "smallint", ["-32768", "32767", "0", "-1"], INT, pa.int16()),
    Case("i4", "integer", ["-2147483648", "2147483647", "0"], INT, pa.int32()),
    Case("i8", "bigint", ["-9223372036854775808", "9223372036854775807", "0"], INT, pa.int64()),
    Case(
        "n12_3",
        "numeric(12,3)",
        ["-999999999.999", "999999999.999", "0", "-0.001", "1.5"],
        DEC,
        pa.decimal128(12, 3),
    ),
    Case(
        "n38_20",
        "numeric(38,20)",
        ["123456789012345678.12345678901234567890", "-0.00000000000000000001"],
        DEC,
        pa.decimal128(38, 20),
    ),
    Case(
        "n50_10",
        "numeric(50,10)",
        ["-1234567890123456789012345678901234567890.0123456789", "0"],
        DEC,
        pa.decimal256(50, 10),
    ),
    Case(
        "nneg",
        "numeric(5,-2)",
        ["9999900", "-9999900", "0", "12300", "12345"],  # 12345 is stored as 12300
        DEC,
        pa.decimal128(7, 0),
    ),
    Case("nsmall", "numeric(3,5)", ["0.00999", "-0.00001", "0"], DEC, pa.decimal128(5, 5)),
    Case("nwide", "numeric(100,2)", ["-" + "9" * 98 + ".99", "0.01"], TXT, pa.string()),
    Case(
        "nfree",
        "numeric",
        ["'NaN'", "'Infinity'", "'-Infinity'", "0", "-1.000000000000000000000000000001", "1e100"],
        TXT,
        pa.string(),
    ),
    Case(
        "cash",
        "money",
        ["'92233720368547758.07'", "'-92233720368547758.08'", "0", "'12.34'", "'-0.01'"],
        DEC,
        pa.decimal128(19, 2),
    ),
    Case(
        "f4",
        "real",
        ["'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "3.4028235e38", "1.4e-45", "0.1"],
        "encode(float4send({v}), 'hex')",
        pa.float32(),
    ),
    Case(
        "f8",
        "double precision",
        ["'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "1.7976931348623157e308", "5e-324", "0.1"],
        "encode(float8send({v}), 'hex')",
        pa.float64(),
    ),
    Case(
        "d",
        "date",
        ["'4713-01-01 BC'", "'5874897-12-31'", "'1970-01-01'", "'2000-02-29'"],
        "({v} - date '1970-01-01')::text",
        pa.date32(),
    ),
    Case(
        "tm",
        "time",
        ["'00:00'", "'23:59:59.999999'", "'12:34:56.789'"],
        EPOCH_US,
        pa.time64("us"),
    ),
    Case(
        "ts",
        "timestamp",
        [
            "'4713-01-01 00:00 BC'",
            "'294246-12-31 23:59:59.999999'",
            "'1970-01-01'",
            "'2024-02-29 12:34:56.789012'",
        ],
        EPOCH_US,
        pa.timestamp("us"),
    ),
    Case(
        "tstz",
        "timestamptz",
        [
            "'4713-01-01 00:00+00 BC'",
            "'294246-12-31 23:59:59.999999+00'",
            "'2024-06-30 23:30:00.123456+05:30'",
            "'1999-12-31 23:59:59.999999-08'",
        ],
        EPOCH_US,
        pa.timestamp("us", tz="UTC"),
    ),
    Case("b", "boolean", ["true", "false"], INT, pa.bool_()),
    Case(
        "by",
        "bytea",
        ["'\\x'", "'\\x00ff10'", "decode(repeat('00ff', 50000), 'hex')"],
        "encode({v}, 'hex')",
        pa.binary(),
    ),
    Case(
        "tx",
        "text",
        ["''", "'ü✓😀'", f"'{LONG_TEXT}'", "'a''b\\c\"'", "' padded '"],
        TXT,
        pa.string(),
    ),
    Case("vc", "varchar(5)", ["''", "'fünf✓'"], TXT, pa.string()),
    Case("ch", "char(4)", ["'ab'", "''", "'ü✓'"], TXT, pa.string()),
    Case(
        "u",
        "uuid",
        ["'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"],
        TXT,
        pa.string(),
    ),
    Case("js", "json", ['\'{"b": 1,  "a": [1, 2]}\'', "'null'", "'\"ü\"'"], TXT, pa.string()),
    Case("jsb", "jsonb", ['\'{"b": 1, "a": [1.50, 2]}\'', "'[]'"], TXT, pa.string()),
    Case(
        "iv",
        "interval",
        ["'1 year 2 mons -3 days 04:05:06.789'", "'-178000000 years'", "'0'"],
        TXT,
        pa.string(),
    ),
    Case("ttz", "timetz", ["'23:59:59.999999+14'", "'00:00:00-12'"], TXT, pa.string()),
    Case(
        "ip",
        "inet",
        ["'::1/128'", "'192.168.0.1/24'"],
        "host({v}) || '/' || masklen({v})",  # CAST(inet AS text) keeps the mask: '::1/128'
        pa.string(),
    ),
    Case("x", "xid", ["'4294967295'", "'0'"], TXT, pa.string()),
    Case("rc", "regclass", ["'pg_class'"], TXT, pa.string()),
    Case("ci", "cid", ["'4294967295'", "'0'"], TXT, pa.string()),
    Case("x8", "xid8", ["'18446744073709551615'", "'0'"], TXT, pa.string()),
    Case("rt", "regtype", ["'integer'", "'character varying'"], TXT, pa.string()),
    Case("rp", "regproc", ["'now'", "'-'"], TXT, pa.string()),
    Case("iv2", "int2vector", ["'1 2'", "''"], TXT, pa.string()),
    Case("nm", "name", ["'ü✓'", "''"], TXT, pa.string()),
    Case("qc", '"char"', ["'a'", "''"], TXT, pa.string()),
    Case("bt", "bit(3)", ["B'101'", "B'000'"], TXT, pa.string()),
    Case("vb", "varbit", ["B''", "B'1'"], TXT, pa.string()),
    Case("mac", "macaddr", ["'08:00:2b:01:02:03'"], TXT, pa.string()),
    Case("pt", "point", ["'(1.5,-2)'", "'(NaN,Infinity)'"], TXT, pa.string()),
    Case("rg", "int4range", ["'[1,5)'", "'empty'", "'(,)'"], TXT, pa.string()),
    Case("tsv", "tsvector", ["'a b:2'", "''"], TXT, pa.string()),
    Case("xm", "xml", ["'<a>ü</a>'"], TXT, pa.string()),
    Case("lsn", "pg_lsn", ["'16/B374D848'", "'FFFFFFFF/FFFFFFFF'"], TXT, pa.string()),
    Case("o", "oid", ["4294967295", "0", "1"], INT, pa.int64()),
    Case(
        "ia",
        "integer[]",
        ["'{}'", "'{1,NULL,-2147483648}'", "'{2147483647}'"],
        "array_to_json({v})::text",
        pa.list_(pa.int32()),
    ),
    Case(
        "ta",
        "text[]",
        ["'{}'", '\'{"",NULL,"ü,✓","a\\"b"}\''],
        "array_to_json({v})::text",
        pa.list_(pa.string()),
    ),
    Case(
        "oa",
        "oid[]",
        ["'{4294967295,0}'"],
        "array_to_json(CAST({v} AS bigint[]))::text",  # JSON spells oids as strings
        pa.list_(pa.int64()),
    ),
    Case("en", "{s}.mood", ["'ok'", "'ünï'"], TXT, pa.string()),
    Case(
        "ena",
        "{s}.mood[]",
        ["'{ok,ünï}'", "'{}'"],
        "array_to_json({v})::text",
        pa.list_(pa.string()),
    ),
    Case("rpa", "regproc[]", ["'{now,-}'"], TXT, pa.string()),
    Case("qca", '"char"[]', ["'{a,\"\"}'"], TXT, pa.string()),
    Case("na", "numeric[]", ["'{1.50,NaN}'"], TXT, pa.string()),
    Case(
        "ma", "integer[][]", ["'{}'", "'{1,2}'"], "array_to_json({v})::text", pa.list_(pa.int32())
    ),
]


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _float_bits(col: pa.ChunkedArray, width: int) -> list[str | None]:
    arr = col.combine_chunks()
    dtype = np.uint32 if width == 4 else np.uint64
    bits = np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset : arr.offset + len(arr)]
    valid = arr.is_valid().to_pylist()
    return [f"{b:0{width * 2}x}" if ok else None for b, ok in zip(bits, valid, strict=True)]


def lake_canon(col: pa.ChunkedArray) -> list[str | None]:
    """The lake's values in the form `Case.canon` gives the server's."""
    t = col.type
    if pa.types.is_float32(t):
        return _float_bits(col, 4)
    if pa.types.is_float64(t):
        return _float_bits(col, 8)
    if pa.types.is_date32(t):
        col = col.cast(pa.int32())  # 5874897 AD is past Python's dates
    elif pa.types.is_timestamp(t) or pa.types.is_time64(t):
        col = col.cast(pa.int64())
    out: list[str | None] = []
    for v in col.to_pylist():
        if v is None:
            out.append(None)
        elif isinstance(v, bool):
            out.append(str(v).lower())
        elif isinstance(v, bytes):
            out.append(v.hex())
        elif isinstance(v, list):
            out.append(json.dumps(v, ensure_ascii=False))
        elif hasattr(v, "as_tuple"):  # Decimal: its exact digits, never an exponent
            out.append(format(v, "f"))
        else:
            out.append(str(v))
    return out


def server_canon(rows: list[tuple[Any, ...]], case_index: int) -> list[str | None]:
    out = []
    for row in rows:
        v = row[case_index + 1]
        if v is not None and CASES[case_index].canon.startswith("array_to_json"):
            v = json.dumps(json.loads(v), ensure_ascii=False)
        out.append(v)
    return out


def make_matrix(pg: PgServer, schema: str) -> str:
    table = f"{q(schema)}.matrix"
    pg.execute(f"CREATE TYPE {q(schema)}.mood AS ENUM ('ok', 'ünï')")
    cases = [replace(c, sql_type=c.sql_type.format(s=q(schema))) for c in CASES]
    cols = ", ".join(f"{c.name} {c.sql_type}" for c in cases)
    pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, {cols})")
    n = max(len(c.values) for c in CASES) + 1  # the last row: all NULL
    for i in range(n):
        vals = [
            f"CAST({c.values[i]} AS {c.sql_type})" if i < len(c.values) else "NULL" for c in cases
        ]
        pg.execute(f"INSERT INTO {table} VALUES ({i}, {', '.join(vals)})")
    return table


def home(pg: PgServer, **extra: Any) -> PostgresHome:
    return PostgresHome(
        host=pg.host,
        port=pg.port,
        database=pg.dbname,
        credentials=PostgresCredentials(username=pg.user, password=pg.password),
        **extra,
    )


def test_every_type_arrives_exactly_in_the_lake(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str
) -> None:
    table = make_matrix(pg, pg_schema)
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": pg_home(pg),
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "entities": [{"name": "matrix", "table": f"{pg_schema}.matrix"}],
    }
    state = run_flow(spec)
    assert state.is_completed(), state
    got = pa.concat_tables(pq.read_table(f) for f in sorted((lake / "matrix").glob("*.parquet")))
    got = got.sort_by("id")
    canon = ", ".join(c.canon.format(v=c.name) for c in CASES)
    expected = pg.query(f"SELECT id, {canon} FROM {table} ORDER BY id")
    assert got.column("id").to_pylist() == [r[0] for r in expected]
    for i, case in enumerate(CASES):
        assert got.schema.field(case.name).type == case.arrow, case.name
        assert lake_canon(got.column(case.name)) == server_canon(expected, i), case.name
    # the canonical forms themselves are what a user would expect
    row = {c.name: lake_canon(got.column(c.name))[3] for c in CASES}
    assert row["cash"] == "12.34" and row["nneg"] == "12300" and row["f4"] == "80000000"
    assert lake_canon(got.column("o"))[0] == "4294967295"
    assert lake_canon(got.column("nfree"))[:3] == ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize(
    ("sql_type", "value", "what"),
    [
        ("integer[]", "'{{1,2},{3,4}}'", "multi-dimensional array"),
        ("integer[]", "'[0:1]={1,2}'", "not indexed from 1"),
        ("timestamptz[]", "'{infinity}'", "±infinity"),
        ("date[]", "'{2024-01-01,-infinity}'", "±infinity"),
        ("timestamp[]", "'{2024-01-01,294270-01-01}'", "294247 AD"),
        ("timestamp", "'infinity'", "±infinity"),
        ("timestamptz", "'-infinity'", "±infinity"),
        ("timestamp", "'294270-01-01'", "294247 AD"),
        ("date", "'infinity'", "±infinity"),
        ("time", "'24:00:00'", "24:00:00"),
    ],
)
def test_a_value_arrow_cannot_hold_is_refused_naming_the_column_and_the_choice(
    pg: PgServer, pg_schema: str, sql_type: str, value: str, what: str
) -> None:
    table = f"{q(pg_schema)}.odd"
    pg.execute(
        f"CREATE TABLE {table} (id int, v {sql_type})",
        f"INSERT INTO {table} VALUES (1, NULL), (2, {value})",
    )
    request = ReadRequest(entity="odd", table=f"{pg_schema}.odd")
    with pytest.raises(HomeError, match=r"entity 'odd'.*column 'v' holds") as info:
        list(home(pg).read(request))
    text = str(info.value)
    assert what in text and 'CAST("v" AS text)' in text and "`where`" in text
    # the choice offered works, and reads PostgreSQL's own text
    as_text = ReadRequest(entity="odd", query=f"SELECT id, CAST(v AS text) AS v FROM {table}")
    got = pa.Table.from_batches(list(home(pg).read(as_text))).sort_by("id")
    assert got.column("v").to_pylist() == [
        None,
        pg.query(f"SELECT v::text FROM {table} WHERE id = 2")[0][0],
    ]


def test_numeric_nan_in_a_constrained_column_is_refused_not_changed(
    pg: PgServer, pg_schema: str
) -> None:
    table = f"{q(pg_schema)}.nan"
    pg.execute(f"CREATE TABLE {table} (v numeric(5,2))", f"INSERT INTO {table} VALUES ('NaN')")
    with pytest.raises(HomeError, match=r"column 'v' holds a value that is not decimal128"):
        list(home(pg).read(ReadRequest(entity="nan", table=f"{pg_schema}.nan")))


def test_money_follows_the_servers_monetary_scale(pg: PgServer, pg_schema: str) -> None:
    # the raw int64 is in minor units; which scale they have is the session's lc_monetary
    table = f"{q(pg_schema)}.cash"
    pg.execute(f"CREATE TABLE {table} (v money)", f"INSERT INTO {table} VALUES ('12.34')")
    got = pa.Table.from_batches(
        list(home(pg).read(ReadRequest(entity="c", table=f"{pg_schema}.cash")))
    )
    assert got.schema.field("v").type == pa.decimal128(19, 2)
    assert [format(v, "f") for v in got.column("v").to_pylist()] == ["12.34"]


def test_a_partitioned_read_sees_one_snapshot_while_a_writer_moves_rows(
    pg: PgServer, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"{q(pg_schema)}.moving"
    pg.execute(
        f"CREATE TABLE {table} AS SELECT g AS k, g AS p FROM generate_series(1, 4000) g",
    )
    # one range waits before its query; the others read at once, so without a shared
    # snapshot the late one would see the writer's moves
    monkeypatch.setenv("HYGGE_FAULT", "postgres.before_read@2:sleep3")
    h = home(pg, partition_column="p", partitions=4, max_connections=4)
    reader = h.read(ReadRequest(entity="moving", table=f"{pg_schema}.moving", batch_size=100))
    seen = [next(reader)]
    # mirror every row into the opposite range: 1 <-> 4000, 1000 <-> 3001, ...
    writer = threading.Thread(target=pg.execute, args=(f"UPDATE {table} SET p = 4001 - p",))
    writer.start()
    writer.join()
    seen.extend(reader)
    got = pa.Table.from_batches(seen)
    keys = got.column("k").to_pylist()
    assert len(keys) == 4000 and sorted(keys) == list(range(1, 4001))
    assert got.column("p").to_pylist() == keys  # every row as it was when the read began
    assert pg.query(f"SELECT p FROM {table} WHERE k = 1") == [(4000,)]

"""SQLite type matrix: every declared type the README lists, with edge values, moved by a real
flow run from a real SQLite file into the real Parquet Store and compared value by value with
what SQLite holds (exact decimals as text, floats bitwise, bytes as bytes)."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_flow
from tests.test_bad_inputs import assert_failed, failures

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
LONG = "hygge ✓ " * 20_000  # 160,000 characters
NON_ASCII = "Grüße, 東京, emoji 🧶, RTL שלום"

#: declared type -> (Arrow type in the lake, the values inserted)
MATRIX: dict[str, tuple[pa.DataType, list[Any]]] = {
    "INTEGER": (pa.int64(), [I64_MIN, I64_MAX, -1, 0, 2**53 + 1, None]),
    "BIGINT": (pa.int64(), [I64_MIN, I64_MAX, 7, None]),
    "REAL": (
        pa.float64(),
        [0.1, -0.0, 0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, None],
    ),
    "DOUBLE PRECISION": (pa.float64(), [-1.5, 1e-300, None]),
    "TEXT": (pa.string(), ["", LONG, NON_ASCII, "NULL", "\\N", "a\x00b", None]),
    "VARCHAR(10)": (pa.string(), ["longer than ten characters", "", None]),
    "BLOB": (pa.binary(), [b"", b"\x00\xff\x00", bytes(range(256)) * 400, None]),
    "BOOLEAN": (pa.bool_(), [0, 1, None]),
    "DATE": (pa.date32(), ["2024-05-01", "0001-01-01", "9999-12-31", None]),
    "DATETIME": (
        pa.timestamp("us"),
        [
            "2024-05-01 12:00:00",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00.123",
            "2024-05-01T12:00:00.123456",
            "2024-05-01 12:00",
            "2024-05-01",
            "1970-01-01 00:00:00",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59.999999",
            None,
        ],
    ),
    "TIMESTAMP": (pa.timestamp("us"), ["2024-02-29 23:59:59.5", None]),
    "DECIMAL(12,2)": (
        pa.decimal128(12, 2),
        ["12.34", 12.34, 0.1, -0.01, 0, -5, "1.00", 9999999999.99, -9999999999.99, None],
    ),
    "DECIMAL(38,0)": (pa.decimal128(38, 0), [I64_MAX, I64_MIN, 2**53 + 1, 1e22, 0, None]),
    "DECIMAL(38,10)": (pa.decimal128(38, 10), [1234567890.123456, 0.1, 2**53 + 1, None]),
    "NUMERIC(5)": (pa.decimal128(5, 0), [99999, -99999, 0, None]),
    "NUMERIC": (pa.int64(), [I64_MIN, I64_MAX, 2**53 + 1, 0, None]),
    "DECIMAL": (pa.float64(), [0.1, 3, -2.5e-10, 2**53, None]),
}


def column(decl: str) -> str:
    return "c_" + "".join(ch if ch.isalnum() else "_" for ch in decl.lower())


def make_matrix(path: Path) -> None:
    """One table, one column per declared type; row i holds each column's i-th value (or NULL)."""
    con = sqlite3.connect(path)
    cols = ", ".join(f"{column(d)} {d}" for d in MATRIX)
    con.execute(f"CREATE TABLE matrix (id INTEGER PRIMARY KEY, {cols})")
    rows = max(len(v) for _, v in MATRIX.values())
    for i in range(rows):
        values = [vals[i] if i < len(vals) else None for _, vals in MATRIX.values()]
        marks = ", ".join("?" * (len(values) + 1))
        con.execute(f"INSERT INTO matrix VALUES ({marks})", [i, *values])
    con.commit()
    con.close()


def plain(typ: pa.DataType) -> pa.DataType:
    """The Store may write text and bytes with 64-bit offsets: the same values."""
    return {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}.get(typ, typ)


def canonical_held(decl: str, typ: pa.DataType, held: Any) -> Any:
    """What SQLite holds, in the canonical form the lake's value is compared in."""
    if held is None:
        return None
    if pa.types.is_floating(typ):
        return struct.pack("<d", float(held))  # bitwise; an integer in NUMERIC: exact in a double
    if pa.types.is_decimal(typ):
        # a REAL is the shortest decimal that is the same double; INTEGER and TEXT their digits
        text = repr(held) if isinstance(held, float) else str(held)
        return str(Decimal(text).quantize(Decimal(1).scaleb(-typ.scale)))
    if pa.types.is_boolean(typ):
        return {0: False, 1: True}[held]
    if pa.types.is_timestamp(typ):
        return dt.datetime.fromisoformat(held)
    if pa.types.is_date32(typ):
        return dt.date.fromisoformat(held)
    return held  # int, str, bytes as they are


def canonical_lake(typ: pa.DataType, value: Any) -> Any:
    if value is None:
        return None
    if pa.types.is_floating(typ):
        return struct.pack("<d", value)
    if pa.types.is_decimal(typ):
        return str(value)
    return value


def test_every_sqlite_type_arrives_as_sqlite_holds_it(tmp_path: Path, spec_name: str) -> None:
    db = tmp_path / "types.sqlite"
    make_matrix(db)
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        # 3 rows a batch: batches where a decimal column holds only REALs, only INTEGERs or
        # only NULLs, each of which must carry the one schema
        "defaults": {"batch_size": 3},
        "entities": [{"name": "matrix", "table": "matrix"}],
    }
    state = run_flow(spec)
    assert state.is_completed(), state
    table = pq.read_table(sorted((lake / "matrix").glob("*.parquet"))).sort_by("id")

    con = sqlite3.connect(db)
    held = con.execute("SELECT * FROM matrix ORDER BY id").fetchall()
    classes = con.execute(
        f"SELECT {', '.join(f'typeof({column(d)})' for d in MATRIX)} FROM matrix ORDER BY id"
    ).fetchall()
    con.close()
    assert table.column("id").to_pylist() == [r[0] for r in held]
    for k, (decl, (typ, _)) in enumerate(MATRIX.items()):
        name = column(decl)
        assert plain(table.schema.field(name).type) == typ, decl
        got = [canonical_lake(typ, v) for v in table.column(name).to_pylist()]
        want = [canonical_held(decl, typ, r[k + 1]) for r in held]
        assert got == want, decl
        if pa.types.is_decimal(typ):
            # a REAL arrives as a decimal that reads back as the very double SQLite holds
            for value, row, cls in zip(table.column(name).to_pylist(), held, classes, strict=True):
                if cls[k] == "real":
                    assert float(value) == row[k + 1], (decl, value)
    # the edges SQLite itself changes at insert: NaN is stored as NULL, and text that looks
    # like a number in a NUMERIC column becomes that number; the lake follows SQLite
    assert table.column(column("REAL")).to_pylist()[5] is None
    assert classes[0][list(MATRIX).index("DECIMAL(12,2)")] == "real"  # '12.34' as text
    assert table.column(column("TEXT")).to_pylist()[1] == LONG


def bad_table(con: sqlite3.Connection, name: str, decl: str, value: Any) -> None:
    con.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, v {decl})")
    con.executemany(f"INSERT INTO {name} VALUES (?, ?)", [(1, None), (2, value), (3, None)])


BAD: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    # a REAL with more fraction digits than the scale: never rounded
    "scale": (
        "DECIMAL(12,2)",
        12.345,
        (
            "column 'v' holds the REAL 12.345",
            "decimal128(12, 2)",
            'CAST("v" AS REAL)',
            "DECIMAL(p,s)",
        ),
    ),
    "precision": ("DECIMAL(5,2)", 1234.5, ("holds the REAL 1234.5", "does not fit in precision 5")),
    "big_integer": ("DECIMAL(18,0)", I64_MAX, ("holds '9223372036854775807'", "precision 18")),
    "not_a_number": ("DECIMAL(10,2)", "12,50", ("holds '12,50'", 'CAST("v" AS TEXT)')),
    "empty_text": ("DECIMAL(10,2)", "", ("holds ''",)),
    "infinity": ("DECIMAL(10,2)", math.inf, ("holds the REAL inf",)),
    "blob": ("DECIMAL(10,2)", b"\x01", ("holds \"X'01'\"",)),
    "numeric_text": (
        "NUMERIC",
        "n/a",
        ("declared NUMERIC without precision and scale", "TEXT or BLOB", "DECIMAL(p,s)"),
    ),
    "numeric_mixed": ("NUMERIC", None, ("REAL values and integers beyond 2^53",)),
    "too_wide": ("DECIMAL(40,2)", 1, ("declared 'DECIMAL(40,2)'", "p at most 38")),
    "boolean": ("BOOLEAN", 2, ("declared BOOLEAN but holds 2", "neither 0 nor 1")),
    "storage_class": ("INTEGER", "abc", ("Type mismatch", "another storage class", "CAST")),
    "zone": (
        "DATETIME",
        "2024-05-01 12:00:00+05:30",
        ("'2024-05-01 12:00:00+05:30'", 'CAST("v" AS TEXT)'),
    ),
}


def test_values_without_an_exact_arrow_value_fail_their_entity(
    tmp_path: Path, spec_name: str
) -> None:
    db = tmp_path / "bad.sqlite"
    con = sqlite3.connect(db)
    for name, (decl, value, _) in BAD.items():
        bad_table(con, name, decl, value)
    con.executemany("INSERT INTO numeric_mixed VALUES (?, ?)", [(4, 0.5), (5, 2**53 + 1)])
    con.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v DECIMAL(12,2))")
    con.execute("INSERT INTO good VALUES (1, 12.34)")
    con.commit()
    con.close()
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        # 2 rows a batch (the first is the typed lead row): each bad value is in a later batch
        "defaults": {"batch_size": 2},
        "entities": [{"name": n, "table": n} for n in [*BAD, "good"]],
    }
    summary = failures(run_flow(spec), rf"{len(BAD)} of {len(BAD) + 1} entities failed")
    for name, (_, _, fragments) in BAD.items():
        assert_failed(summary, name, *fragments)
        assert not (lake / name).exists(), name
    good = pq.read_table(sorted((lake / "good").glob("*.parquet")))
    assert good.column("v").to_pylist() == [Decimal("12.34")]


def test_an_unread_column_of_no_exact_type_does_not_fail_the_entity(tmp_path: Path) -> None:
    from blocks import SqliteHome
    from blocks.base import ReadRequest

    db = tmp_path / "cols.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, wide DECIMAL(40,2), n NUMERIC)")
    con.execute("INSERT INTO t VALUES (1, 1, 'n/a')")
    con.commit()
    con.close()
    home = SqliteHome(path=str(db))
    read = ReadRequest(entity="e", table="t", columns=["id"])
    assert pa.Table.from_batches(list(home.read(read))).to_pydict() == {"id": [1]}
    with pytest.raises(Exception, match="declared NUMERIC without precision and scale"):
        list(home.read(ReadRequest(entity="e", table="t", columns=["id", "n"])))


@settings(max_examples=300, deadline=None)
@given(
    scale=st.integers(0, 12),
    units=st.lists(st.integers(-(2**52), 2**52) | st.none(), min_size=1, max_size=30),
    noise=st.lists(st.floats(allow_nan=False), max_size=3),
)
def test_decimals_by_arithmetic_are_the_shortest_digits(
    scale: int, units: list[int | None], noise: list[float]
) -> None:
    # the fast way (`reals_at_scale`) answers only where it gives exactly what the shortest
    # digits of each double give; any other batch takes that exact, slower way
    from blocks.homes._sqlite_values import reals_at_scale

    typ = pa.decimal128(38, scale)
    reals = pa.array([None if u is None else u / 10**scale for u in units] + noise, pa.float64())
    fast = reals_at_scale(reals, typ)
    try:
        exact = reals.cast(pa.string()).cast(typ)
    except pa.ArrowInvalid:
        assert fast is None  # a value of no decimal(38, s): only the exact way, which fails
        return
    if fast is not None:
        assert fast.to_pylist() == exact.to_pylist()

"""The polisher: column names, row-hash IDs, constants and load timestamps, unit and end to end."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import math
import sqlite3
import struct
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.spec import parse_spec
from hygge_core.errors import ConfigError
from hygge_tasks.polish import Polisher, PolishSpec, normalise_name, polish_names
from hygge_tasks.rowhash import encode_rows, row_hash, sha256_prefix
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import summary_row

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPOCH = dt.datetime(1970, 1, 1)


# -- a second, row-by-row implementation of the documented encoding ---------------------------


def reference_payload(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, bytes):
        return v
    if isinstance(v, bool):
        return b"true" if v else b"false"
    if isinstance(v, int):
        return str(v).encode()
    if isinstance(v, decimal.Decimal):
        if v == 0:
            return b"0"
        sign, digits, exp = v.normalize(decimal.Context(prec=100)).as_tuple()
        assert isinstance(exp, int)
        return f"{'-' if sign else ''}{''.join(map(str, digits))}e{exp}".encode()
    if isinstance(v, float):
        if math.isnan(v):
            return b"nan"
        return str(struct.unpack("<q", struct.pack("<d", v if v != 0 else 0.0))[0]).encode()
    if isinstance(v, dt.datetime):
        return str((v - EPOCH) // dt.timedelta(microseconds=1)).encode()
    if isinstance(v, dt.date):
        return str((v - EPOCH.date()).days).encode()
    raise AssertionError(type(v))


def reference_encoding(row: tuple[Any, ...]) -> bytes:
    out = b""
    for v in row:
        if v is None:
            out += b"-"
        else:
            p = reference_payload(v)
            out += str(len(p)).encode() + b":" + p
    return out


def reference_id(row: tuple[Any, ...]) -> str:
    return hashlib.sha256(reference_encoding(row)).hexdigest()[:32]


# -- column names -----------------------------------------------------------------------------


class NameCase(NamedTuple):
    name: str
    snake: str
    camel: str
    pascal: str


NAMES = [
    pytest.param(NameCase("Order Date", "order_date", "orderDate", "OrderDate"), id="spaces"),
    pytest.param(NameCase("orderDate", "order_date", "orderDate", "OrderDate"), id="camel"),
    pytest.param(NameCase("HTTPServer", "http_server", "httpServer", "HttpServer"), id="acronym"),
    pytest.param(NameCase("Amount (EUR)", "amount_eur", "amountEur", "AmountEur"), id="special"),
    pytest.param(NameCase("évènement ✓", "evenement", "evenement", "Evenement"), id="accents"),
    pytest.param(NameCase("e-mail", "e_mail", "eMail", "EMail"), id="dash"),
    pytest.param(NameCase("  a   b ", "a_b", "aB", "Ab"), id="collapse"),
    pytest.param(
        NameCase("version2Name", "version2_name", "version2Name", "Version2Name"), id="dig"
    ),
    pytest.param(NameCase("_loaded_at", "_loaded_at", "_loadedAt", "_LoadedAt"), id="leading_"),
]


@pytest.mark.parametrize("case", NAMES)
def test_normalise_name_converts_case_and_removes_specials(case: NameCase) -> None:
    assert normalise_name(case.name, "snake_case", True) == case.snake
    assert normalise_name(case.name, "camelCase", True) == case.camel
    assert normalise_name(case.name, "PascalCase", True) == case.pascal


def test_normalise_name_without_case_only_cleans() -> None:
    assert normalise_name("  Order   Date ") == "Order Date"
    assert normalise_name("Order Date (EUR)", remove_special=True) == "Order_Date_EUR"
    assert normalise_name("Straße") == "Straße"


def test_polish_names_collisions_get_stable_distinct_names() -> None:
    assert polish_names(["Name", "name"], "snake_case") == ["name_2", "name"]
    assert polish_names(["name", "Name"], "snake_case") == ["name", "name_2"]
    # a suffix never takes a name another column already has
    assert polish_names(["Name", "name", "name_2"], "snake_case") == ["name_3", "name", "name_2"]
    assert polish_names(["Name", "NAME"], "PascalCase") == ["Name", "Name2"]
    assert polish_names(["#", "$"], "snake_case", remove_special=True) == ["column", "column_2"]


names_lists = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12), max_size=8
)
cases = st.sampled_from([None, "snake_case", "camelCase", "PascalCase"])


@FAST
@given(names=names_lists, case=cases, remove_special=st.booleans())
def test_polish_names_is_idempotent_and_distinct(
    names: list[str], case: Any, remove_special: bool
) -> None:
    once = polish_names(names, case, remove_special)
    assert len(once) == len(names)
    assert len(set(once)) == len(once)
    assert all(once)
    assert polish_names(once, case, remove_special) == once


@FAST
@given(names=names_lists, case=cases, remove_special=st.booleans(), data=st.data())
def test_polish_names_does_not_depend_on_column_order(
    names: list[str], case: Any, remove_special: bool, data: st.DataObject
) -> None:
    names = list(dict.fromkeys(names))
    shuffled = data.draw(st.permutations(names))
    mapping = dict(zip(names, polish_names(names, case, remove_special), strict=True))
    assert polish_names(shuffled, case, remove_special) == [mapping[n] for n in shuffled]


# -- row hashes -------------------------------------------------------------------------------


def test_row_hash_fixed_values() -> None:
    # these IDs are a contract: a change here breaks every table that stores them
    cols = [
        pa.array(["a", None, "", "évè"], pa.string()),
        pa.array([1, 2, None, -7], pa.int64()),
        pa.array(
            [decimal.Decimal("12.50"), decimal.Decimal("0"), None, decimal.Decimal("-1200")],
            pa.decimal128(10, 2),
        ),
        pa.array([1.5, -0.0, float("nan"), None]),
        pa.array(
            [dt.datetime(2024, 5, 1, 12), None, dt.datetime(1969, 12, 31, 23, 59, 59), EPOCH],
            pa.timestamp("ms"),
        ),
        pa.array([True, False, None, True]),
        pa.array([dt.date(2024, 5, 1), None, dt.date(1970, 1, 2), dt.date(1969, 12, 31)]),
    ]
    assert encode_rows(cols).to_pylist() == [
        b"1:a1:16:125e-119:460943421861370265616:17145648000000004:true5:19844",
        b"-1:21:01:0-5:false-",
        b"0:--3:nan8:-1000000-1:1",
        b"5:\xc3\xa9v\xc3\xa82:-75:-12e2-1:04:true2:-1",
    ]
    assert row_hash(cols).to_pylist() == [
        "3d5d66e9153da559ff32d845ae7957b7",
        "047a1e137506d577fe09ccbaa78bb954",
        "0e4f06e3f3c891bdf95d1355ddfc177a",
        "f830b7378bca5f4075ae684bd31b2569",
    ]


def test_row_hash_null_is_not_empty_and_never_null() -> None:
    ids = row_hash([pa.array([None, "", "x", None]), pa.array(["x", "x", None, None])])
    assert ids.null_count == 0
    assert len(set(ids.to_pylist())) == 4
    # NULLs in every column still give a value
    assert row_hash([pa.nulls(2, pa.string()), pa.nulls(2, pa.int64())]).null_count == 0


def test_row_hash_of_a_slice_equals_the_slice_of_the_hash() -> None:
    col = pa.array([f"value {i}" * (i % 13) for i in range(300)])
    whole = row_hash([col]).to_pylist()
    assert row_hash([col.slice(17, 100)]).to_pylist() == whole[17:117]


@FAST
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_sha256_prefix_matches_hashlib(values: list[bytes]) -> None:
    got = sha256_prefix(pa.array(values, pa.binary())).to_pylist()
    assert got == [hashlib.sha256(v).hexdigest()[:32] for v in values]


row_values = st.tuples(
    st.none() | st.text(max_size=20),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.decimals(min_value=-(10**8), max_value=10**8, places=4, allow_nan=False),
    st.none() | st.floats(allow_infinity=True),
    st.none() | st.datetimes(min_value=dt.datetime(1000, 1, 1)),
    st.none() | st.booleans(),
    st.none() | st.dates(),
)
ROW_TYPES = [
    pa.string(),
    pa.int64(),
    pa.decimal128(14, 4),
    pa.float64(),
    pa.timestamp("us"),
    pa.bool_(),
    pa.date32(),
]


@FAST
@given(st.lists(row_values, min_size=1, max_size=20))
def test_row_hash_follows_the_documented_encoding(rows: list[tuple[Any, ...]]) -> None:
    cols = [pa.array([r[i] for r in rows], t) for i, t in enumerate(ROW_TYPES)]
    assert encode_rows(cols).to_pylist() == [reference_encoding(r) for r in rows]
    assert row_hash(cols).to_pylist() == [reference_id(r) for r in rows]


def test_row_hash_ignores_unit_and_scale_but_not_value() -> None:
    instant = dt.datetime(2024, 5, 1, 12, 30)
    by_unit = {
        unit: row_hash([pa.array([instant], pa.timestamp(unit))]).to_pylist()[0]
        for unit in ("s", "ms", "us", "ns")
    }
    assert len(set(by_unit.values())) == 1
    d = [decimal.Decimal("12.5")]
    assert row_hash([pa.array(d, pa.decimal128(5, 1))]) == row_hash(
        [pa.array(d, pa.decimal128(20, 6))]
    )
    assert row_hash([pa.array([1], pa.int8())]) == row_hash([pa.array([1], pa.uint64())])
    nanos = pa.array([1_000_000_001], pa.timestamp("ns"))
    assert encode_rows([nanos]).to_pylist() == [b"11:1000000001n"]


# -- the batch transformer --------------------------------------------------------------------


LOADED = dt.datetime(2024, 6, 1, 8, 0, tzinfo=dt.UTC)


def polisher(**spec: Any) -> Polisher:
    return Polisher("orders", PolishSpec.model_validate(spec), LOADED)


def test_polisher_output_schema_is_the_same_for_every_batch() -> None:
    p = polisher(
        case="snake_case",
        remove_special=True,
        hash_id={"name": "row_id", "columns": ["Order ID"]},
        constants={"source": "erp", "tenant": 7},
        load_timestamp="_loaded_at",
    )
    schema = pa.schema([("Order ID", pa.int64()), ("Customer Name", pa.string())])
    batches = [
        pa.RecordBatch.from_pylist([], schema=schema),
        pa.RecordBatch.from_pylist([{"Order ID": 1, "Customer Name": "Ann"}], schema=schema),
        pa.RecordBatch.from_pylist([{"Order ID": None, "Customer Name": None}] * 3, schema=schema),
    ]
    out = [p.apply(b) for b in batches]
    assert {str(o.schema) for o in out} == {str(out[0].schema)}
    assert out[0].schema.names == [
        "order_id",
        "customer_name",
        "row_id",
        "source",
        "tenant",
        "_loaded_at",
    ]
    assert out[0].schema.field("_loaded_at").type == pa.timestamp("us", "UTC")
    row = out[1].to_pylist()[0]
    assert row["row_id"] == reference_id((1,))
    assert (row["source"], row["tenant"], row["_loaded_at"]) == ("erp", 7, LOADED)
    assert out[2].column("row_id").to_pylist() == [reference_id((None,))] * 3


def test_polisher_hash_columns_may_be_named_as_polished() -> None:
    schema = pa.schema([("Order ID", pa.int64())])
    batch = pa.RecordBatch.from_pylist([{"Order ID": 5}], schema=schema)
    by_source = polisher(case="snake_case", hash_id={"name": "k", "columns": ["Order ID"]})
    by_polished = polisher(case="snake_case", hash_id={"name": "k", "columns": ["order_id"]})
    assert by_source.apply(batch).column("k") == by_polished.apply(batch).column("k")


class BadPolish(NamedTuple):
    spec: dict[str, Any]
    match: str


BAD_AT_RUN = [
    pytest.param(
        BadPolish({"hash_id": {"name": "k", "columns": ["nope"]}}, r"polish.hash_id 'k'.*'nope'"),
        id="missing-hash-column",
    ),
    pytest.param(
        BadPolish({"constants": {"b": 1}}, r"polish.constants.*'b'.*collide"), id="constant-clash"
    ),
    pytest.param(
        BadPolish({"case": "snake_case", "load_timestamp": "a_b"}, r"polish.load_timestamp.*'a_b'"),
        id="timestamp-clash",
    ),
    pytest.param(
        BadPolish(
            {"hash_id": {"name": "k", "columns": ["tags"]}}, r"polish.hash_id 'k': column 'tags'"
        ),
        id="nested-hash-column",
    ),
]


@pytest.mark.parametrize("bad", BAD_AT_RUN)
def test_polisher_refuses_what_the_source_cannot_give(bad: BadPolish) -> None:
    schema = pa.schema([("A B", pa.int64()), ("b", pa.string()), ("tags", pa.list_(pa.int64()))])
    with pytest.raises(ConfigError, match=r"entity 'orders': " + bad.match):
        polisher(**bad.spec).apply(pa.RecordBatch.from_pylist([], schema=schema))


@pytest.mark.parametrize(
    ("polish", "match"),
    [
        pytest.param({"case": "kebab"}, r"entity 'e', field polish.case", id="case"),
        pytest.param({"hash_id": {"name": "k"}}, r"field polish.hash_id.0.columns", id="cols"),
        pytest.param({"colour": 1}, r"field polish.colour: unknown key; valid keys", id="unknown"),
        pytest.param({"constants": {"k": 1}, "load_timestamp": "k"}, r"used twice: k", id="twice"),
    ],
)
def test_bad_polish_config_names_entity_and_field(polish: dict[str, Any], match: str) -> None:
    spec = {
        "name": "t",
        "home": "h/x",
        "store": "s/y",
        "entities": [{"name": "e", "polish": polish}],
    }
    with pytest.raises(ConfigError, match=match):
        parse_spec(spec)


def test_defaults_polish_merges_with_the_entity_polish() -> None:
    spec = parse_spec(
        {
            "name": "t",
            "home": "h/x",
            "store": "s/y",
            "defaults": {"polish": {"case": "snake_case", "load_timestamp": "_at"}},
            "entities": [
                {"name": "a", "polish": {"hash_id": {"name": "k", "columns": ["id"]}}},
                {"name": "b", "polish": None},
                {"name": "c"},
            ],
        }
    )
    a, b, c = spec.entities
    assert a.polish is not None and c.polish is not None
    assert (a.polish.case, a.polish.load_timestamp, a.polish.hash_id[0].name) == (
        "snake_case",
        "_at",
        "k",
    )
    assert b.polish is None
    assert c.polish.hash_id == []


# -- end to end -------------------------------------------------------------------------------

T0 = dt.datetime(2024, 5, 1, 12)


def messy_db(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    con = sqlite3.connect(path)
    con.execute(
        'CREATE TABLE IF NOT EXISTS orders ("Order ID" INTEGER PRIMARY KEY, "orderDate" DATETIME, '
        '"Customer-Name" TEXT, "customer name" TEXT, "Amount (EUR)" DECIMAL(10,2))'
    )
    con.executemany("INSERT INTO orders VALUES (?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return path


def messy_rows(start: int, count: int) -> list[tuple[Any, ...]]:
    return [
        (
            i,
            str(T0 + dt.timedelta(seconds=i // 3)),
            None if i % 4 == 0 else f"Cüstomer {i}",
            "" if i % 5 == 0 else f"alias {i}",
            f"{i}.50",
        )
        for i in range(start, start + count)
    ]


def test_polished_entity_end_to_end(tmp_path: Path, spec_name: str) -> None:
    db = messy_db(tmp_path / "src.sqlite", messy_rows(0, 200))
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "parquet", "path": str(lake)},
        "defaults": {
            "batch_size": 64,
            "polish": {
                "case": "snake_case",
                "remove_special": True,
                "load_timestamp": "_loaded_at",
            },
        },
        "entities": [
            {
                "name": "orders",
                "table": "orders",
                # watermark and hash inputs use the source's names
                "watermark": {"column": "orderDate", "keys": ["Order ID"]},
                "polish": {
                    "hash_id": {"name": "row_id", "columns": ["Order ID", "Customer-Name"]},
                    "constants": {"source": "erp"},
                },
            }
        ],
    }
    first = run_flow(spec)
    assert first.is_completed(), first.message
    messy_db(db, messy_rows(200, 50))
    second = run_flow(spec)
    assert summary_row(second, "orders")["rows"] == 50
    assert summary_row(second, "orders")["mode"] == "append"

    lake_df = read_lake(lake, "orders").sort("order_id")
    assert lake_df.columns == [
        "order_id",
        "order_date",
        "customer_name",
        "customer_name_2",
        "amount_eur",
        "row_id",
        "source",
        "_loaded_at",
    ]
    assert lake_df["order_id"].to_list() == list(range(250))
    want = [reference_id((i, None if i % 4 == 0 else f"Cüstomer {i}")) for i in range(250)]
    assert lake_df["row_id"].to_list() == want
    assert lake_df["customer_name_2"][5] == ""  # the empty string stays, NULLs stay NULL
    assert lake_df["customer_name"][4] is None
    assert set(lake_df["source"]) == {"erp"}
    # one load timestamp per run, in UTC
    stamps = lake_df.group_by("_loaded_at").len().sort("_loaded_at")
    assert stamps["len"].to_list() == [200, 50]
    assert lake_df.schema["_loaded_at"] == pl.Datetime("us", "UTC")
    assert ledger_of(spec)["orders"]["watermark"]["column"] == "orderDate"

"""The SQL text every SQL Home builds: quoting, table names, the watermark bound, ranges."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import NamedTuple

import pyarrow as pa
import pytest

from blocks.base import ReadRequest, Since
from blocks.homes import _sql
from blocks.homes._sql import POSTGRES, SQLITE, TSQL, Binder, qmark
from hygge_core.errors import ConfigError


class NameCase(NamedTuple):
    text: str
    parts: list[str]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(NameCase("orders", ["orders"]), id="bare"),
        pytest.param(NameCase("sales.orders", ["sales", "orders"]), id="schema"),
        pytest.param(NameCase(" sales . Order Lines ", ["sales", "Order Lines"]), id="spaces"),
        pytest.param(NameCase('"my.schema"."t ""x"""', ["my.schema", 't "x"']), id="double-quoted"),
        pytest.param(NameCase("[dbo].[a]]b]", ["dbo", "a]b"]), id="bracketed"),
        pytest.param(NameCase("ünï.✓", ["ünï", "✓"]), id="unicode"),
        pytest.param(NameCase("db.dbo.t", ["db", "dbo", "t"]), id="three-parts"),
    ],
)
def test_split_name_reads_every_legal_spelling(case: NameCase) -> None:
    assert _sql.split_name(case.text) == case.parts


@pytest.mark.parametrize("bad", ['"open', "a..b", "a.", '"x"y', ""])
def test_split_name_refuses_malformed_names(bad: str) -> None:
    with pytest.raises(ConfigError, match="table name"):
        _sql.split_name(bad)


def test_quoting_escapes_the_closing_quote_per_dialect() -> None:
    assert POSTGRES.quote('a "b"') == '"a ""b"""'
    assert SQLITE.quote("x.y") == '"x.y"'
    assert TSQL.quote("a]b[c") == "[a]]b[c]"
    assert TSQL.table('Sales "Q1".[Order]] Lines]') == '[Sales "Q1"].[Order]] Lines]'
    assert POSTGRES.table("[dbo].t") == '"dbo"."t"'
    with pytest.raises(ConfigError, match="NUL"):
        POSTGRES.quote("a\x00b")
    with pytest.raises(ConfigError, match="at most 3"):
        TSQL.table("srv.db.dbo.t")


def test_the_watermark_bound_is_a_typed_placeholder() -> None:
    binder = Binder(qmark)
    since = Since("upd at", dt.datetime(2024, 5, 1, 12, 0, 0, 123456))
    pred = _sql.since_predicate(TSQL, since, "timestamp", pa.timestamp("us"), binder)
    assert pred == "([upd at] >= CAST(? AS datetime2(7)) OR [upd at] IS NULL)"
    assert binder.values == ["2024-05-01T12:00:00.123456"]

    pg = Binder(lambda i: f"$${i}")
    pred = _sql.since_predicate(POSTGRES, Since("code", "B"), "text", pa.string(), pg)
    assert pred == '("code" COLLATE "C" >= CAST($$1 AS text) OR "code" IS NULL)'
    dec = _sql.since_predicate(
        TSQL, Since("amt", Decimal("1E+3")), "decimal", pa.decimal128(12, 2), binder
    )
    assert dec == "([amt] >= CAST(? AS decimal(12, 2)) OR [amt] IS NULL)"
    assert binder.values[-1] == "1000"  # never an exponent


def test_check_since_accepts_matching_kinds_and_refuses_the_rest() -> None:
    aware = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert _sql.check_since(Since("c", aware), pa.timestamp("us", "UTC"), "e") == "timestamptz"
    assert _sql.check_since(Since("c", 5), pa.int16(), "e") == "int"
    assert _sql.check_since(Since("c", dt.date(2024, 1, 1)), pa.date32(), "e") == "date"
    with pytest.raises(ConfigError, match="does not fit column 'c'"):
        _sql.check_since(Since("c", aware), pa.timestamp("us"), "e")
    with pytest.raises(ConfigError, match="does not fit"):
        _sql.check_since(Since("c", aware), pa.date32(), "e")
    with pytest.raises(ConfigError, match="does not fit"):
        _sql.check_since(Since("c", True), pa.int64(), "e")
    with pytest.raises(ConfigError, match="needs a datetime, date, integer"):
        _sql.check_since(Since("c", b"x"), pa.binary(), "e")


def test_selects_quote_columns_and_wrap_queries() -> None:
    req = ReadRequest(entity="e", table="s.t", columns=["a b", 'c"'], where="x > 1")
    assert _sql.base_select(POSTGRES, req) == 'SELECT "a b", "c""" FROM "s"."t" WHERE (x > 1)'
    req = ReadRequest(entity="e", query="SELECT 1 AS x;  ")
    assert _sql.final_select(TSQL, req, ["[x]"], ["([x] >= ? OR [x] IS NULL)"]) == (
        "SELECT [x] FROM (SELECT 1 AS x) AS hygge_q WHERE ([x] >= ? OR [x] IS NULL)"
    )
    with pytest.raises(ConfigError, match="exactly one of"):
        _sql.base_select(POSTGRES, ReadRequest(entity="e", table="t", query="SELECT 1"))


def test_ranges_cover_everything_once_with_nulls_in_the_first() -> None:
    assert _sql.split_points(0, 100, 4) == [25, 50, 75]
    assert _sql.split_points(5, 5, 4) == []
    assert _sql.split_points(None, None, 4) == []
    days = _sql.split_points(dt.date(2024, 1, 1), dt.date(2024, 1, 5), 2)
    assert days == [dt.date(2024, 1, 3)]
    preds = _sql.range_predicates(TSQL, "id", [10, 20], "bigint", lambda: Binder(qmark))
    assert [p for p, _ in preds] == [
        "([id] < CAST(? AS bigint) OR [id] IS NULL)",
        "([id] >= CAST(? AS bigint) AND [id] < CAST(? AS bigint))",
        "([id] >= CAST(? AS bigint))",
    ]
    assert [b.values for _, b in preds] == [["10"], ["10", "20"], ["20"]]

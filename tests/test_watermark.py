"""BoundaryFilter and Watermark on real Arrow batches: every expected value is a fixed literal."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from hygge_core.errors import ConfigError
from hygge_tasks.watermark import BoundaryFilter, NanoTimestamp, Watermark

UTC = dt.UTC


def rows(col_type: pa.DataType, ids: list[Any], values: list[Any], **extra: Any) -> pa.RecordBatch:
    """A batch with `id` (int64), `wm` of `col_type`, and any extra columns."""
    cols = {"id": pa.array(ids, pa.int64()), "wm": pa.array(values, col_type)}
    cols.update({k: pa.array(v) for k, v in extra.items()})
    return pa.record_batch(cols)


def run(f: BoundaryFilter, *batches: pa.RecordBatch) -> list[Any]:
    """Admit every batch; the ids that got through, in order."""
    out: list[Any] = []
    for b in batches:
        out += f.admit(b).column("id").to_pylist()
    return out


# -- first runs and ties ------------------------------------------------------------------------


def test_boundary_first_run_admits_all_and_keeps_ties_across_batches() -> None:
    f = BoundaryFilter("e", "wm", ["id"], None)
    admitted = run(
        f,
        rows(pa.int64(), [1, 2, 3], [10, 30, 20]),
        rows(pa.int64(), [4, 5], [30, 5]),
        rows(pa.int64(), [6, 7], [30, 29]),
    )
    assert admitted == [1, 2, 3, 4, 5, 6, 7]
    assert f.result() == Watermark("wm", 30, frozenset({"2", "4", "6"}))


def test_boundary_larger_value_in_later_batch_resets_the_tie_set() -> None:
    f = BoundaryFilter("e", "wm", ["id"], None)
    run(
        f,
        rows(pa.int64(), [1, 2], [30, 30]),
        rows(pa.int64(), [3, 4], [31, 31]),
        rows(pa.int64(), [5], [30]),
    )
    assert f.result() == Watermark("wm", 31, frozenset({"3", "4"}))


def test_boundary_next_run_drops_loaded_ties_and_admits_late_ties() -> None:
    previous = Watermark("wm", 30, frozenset({"2", "4", "6"}))
    f = BoundaryFilter("e", "wm", ["id"], previous)
    admitted = run(
        f,
        rows(pa.int64(), [1, 2, 3], [10, 30, 29]),  # below or already loaded
        rows(pa.int64(), [4, 8], [30, 30]),  # 8 arrived late with the boundary value
        rows(pa.int64(), [6, 9], [30, 30]),
    )
    assert admitted == [8, 9]
    # the watermark did not move: the boundary grows with the late ties
    assert f.result() == Watermark("wm", 30, frozenset({"2", "4", "6", "8", "9"}))


def test_boundary_next_run_moves_forward_and_starts_a_new_tie_set() -> None:
    f = BoundaryFilter("e", "wm", ["id"], Watermark("wm", 30, frozenset({"2"})))
    admitted = run(
        f,
        rows(pa.int64(), [2, 10, 11], [30, 40, 31]),
        rows(pa.int64(), [12, 13], [40, 12]),
    )
    assert admitted == [10, 11, 12]
    assert f.result() == Watermark("wm", 40, frozenset({"10", "12"}))


def test_boundary_nothing_new_returns_previous_watermark() -> None:
    previous = Watermark("wm", 30, frozenset({"1", "2"}))
    f = BoundaryFilter("e", "wm", ["id"], previous)
    assert run(f, rows(pa.int64(), [1, 2, 3], [30, 30, 29]), rows(pa.int64(), [], [])) == []
    assert f.result() is previous


def test_boundary_empty_first_run_has_no_watermark() -> None:
    f = BoundaryFilter("e", "wm", ["id"], None)
    assert run(f, rows(pa.int64(), [], [])) == []
    assert f.result() is None


# -- column types -------------------------------------------------------------------------------


def test_boundary_date_column() -> None:
    d = dt.date
    f = BoundaryFilter("e", "wm", ["id"], Watermark("wm", d(2024, 3, 1), frozenset({"1"})))
    admitted = run(
        f,
        rows(pa.date32(), [1, 2, 3], [d(2024, 3, 1), d(2024, 3, 1), d(2024, 2, 29)]),
        rows(pa.date32(), [4, 5], [d(2024, 3, 2), d(2024, 3, 2)]),
    )
    assert admitted == [2, 4, 5]
    assert f.result() == Watermark("wm", d(2024, 3, 2), frozenset({"4", "5"}))


def test_boundary_naive_datetime_column() -> None:
    t = dt.datetime
    previous = Watermark("wm", t(2024, 5, 1, 12, 0, 0), frozenset({"1"}))
    f = BoundaryFilter("e", "wm", ["id"], previous)
    admitted = run(
        f,
        rows(pa.timestamp("us"), [1, 2], [t(2024, 5, 1, 12), t(2024, 5, 1, 12)]),
        rows(pa.timestamp("us"), [3, 4], [t(2024, 5, 1, 11, 59, 59), t(2024, 5, 1, 12, 0, 0, 1)]),
    )
    assert admitted == [2, 4]
    result = f.result()
    assert result == Watermark("wm", t(2024, 5, 1, 12, 0, 0, 1), frozenset({"4"}))
    assert result is not None and result.value.tzinfo is None


def test_boundary_utc_datetime_column_and_offset_in_stored_value() -> None:
    t = dt.datetime
    typ = pa.timestamp("us", tz="UTC")
    # stored as 14:00+02:00, the same instant as 12:00 UTC
    stored = t(2024, 5, 1, 14, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    f = BoundaryFilter("e", "wm", ["id"], Watermark("wm", stored, frozenset({"1"})))
    admitted = run(
        f,
        rows(typ, [1, 2, 3], [t(2024, 5, 1, 12, tzinfo=UTC)] * 2 + [t(2024, 5, 1, 11, tzinfo=UTC)]),
        rows(typ, [4], [t(2024, 5, 1, 13, tzinfo=UTC)]),
    )
    assert admitted == [2, 4]
    result = f.result()
    assert result is not None
    assert result.value == t(2024, 5, 1, 13, tzinfo=UTC)
    assert result.value.utcoffset() == dt.timedelta(0)
    assert result.to_json()["value"] == "2024-05-01T13:00:00+00:00"


def test_boundary_string_column() -> None:
    previous = Watermark("wm", "2024-05-01", frozenset({"1"}))
    f = BoundaryFilter("e", "wm", ["id"], previous)
    admitted = run(
        f,
        rows(pa.large_string(), [1, 2, 3], ["2024-05-01", "2024-05-01", "2024-04-30"]),
        rows(pa.large_string(), [4, 5], ["2024-05-02", "2024-05-10"]),
    )
    assert admitted == [2, 4, 5]
    assert f.result() == Watermark("wm", "2024-05-10", frozenset({"5"}))


def test_boundary_decimal_column() -> None:
    typ = pa.decimal128(10, 2)
    previous = Watermark("wm", Decimal("1.50"), frozenset({"1"}))
    f = BoundaryFilter("e", "wm", ["id"], previous)
    admitted = run(
        f,
        rows(typ, [1, 2, 3], [Decimal("1.50"), Decimal("1.50"), Decimal("1.49")]),
        rows(typ, [4, 5], [Decimal("2.25"), Decimal("2.25")]),
    )
    assert admitted == [2, 4, 5]
    result = f.result()
    assert result == Watermark("wm", Decimal("2.25"), frozenset({"4", "5"}))
    assert result is not None and result.to_json()["value"] == "2.25"


# -- identity -----------------------------------------------------------------------------------


def digest(encoding: bytes) -> str:
    """A format-2 identity from its documented bytes (`hygge_tasks.boundary_keys`)."""
    return hashlib.sha256(encoding).hexdigest()[:32]


def test_boundary_composite_keys_identify_rows() -> None:
    f = BoundaryFilter("e", "wm", ["region", "id"], None)
    b = rows(pa.int64(), [1, 1, 2, 3], [7, 7, 7, 6], region=["eu", "us", None, "eu"])
    run(f, b)
    eu1, us1, null2 = (digest(e) for e in (b"str 2:euint 1:1", b"str 2:usint 1:1", b"-int 1:2"))
    assert f.result() == Watermark("wm", 7, frozenset({eu1, us1, null2}))

    # same id in another region is a different row; a NULL key matches its stored form
    previous = f.result()
    g = BoundaryFilter("e", "wm", ["region", "id"], previous)
    later = rows(pa.int64(), [1, 1, 2, 2], [7, 7, 7, 7], region=["eu", "asia", None, "eu"])
    out = g.admit(later)
    assert out.column("id").to_pylist() == [1, 2]
    assert out.column("region").to_pylist() == ["asia", "eu"]
    asia1, eu2 = digest(b"str 4:asiaint 1:1"), digest(b"str 2:euint 1:2")
    assert g.result() == Watermark("wm", 7, frozenset({eu1, us1, null2, asia1, eu2}))


def test_boundary_without_keys_uses_row_hashes() -> None:
    f = BoundaryFilter("e", "wm", [], None)
    b = rows(pa.int64(), [1, 2, None], [10, 10, 10], label=["a", "b", "é"])
    assert f.identities(b) == [
        # every column in name order, `<n>:<name>` then its typed field: stored in ledgers
        digest(b"2:idint 1:15:labelstr 1:a2:wmint 2:10"),
        digest(b"2:idint 1:25:labelstr 1:b2:wmint 2:10"),
        digest("2:id-5:labelstr 2:é2:wmint 2:10".encode()),
    ]
    run(f, b.slice(0, 2))
    previous = f.result()
    assert previous == Watermark("wm", 10, frozenset(f.identities(b.slice(0, 2))))

    g = BoundaryFilter("e", "wm", [], previous)
    # the same two rows come back, plus a third at the boundary that differs in one column
    again = rows(pa.int64(), [1, 2, 2], [10, 10, 10], label=["a", "b", "c"])
    assert g.admit(again).column("label").to_pylist() == ["c"]


def test_boundary_single_key_of_other_types_is_typed_and_canonical() -> None:
    f = BoundaryFilter("e", "wm", ["code"], None)
    b = pa.record_batch(
        {
            "code": pa.array([Decimal("1.50"), None], pa.decimal128(5, 2)),
            "wm": pa.array([3, 3], pa.int64()),
        }
    )
    assert f.admit(b).num_rows == 2
    # the decimal's scale does not matter: 1.50 is `15e-1`, as 1.5 read at another scale
    assert f.result() == Watermark("wm", 3, frozenset({digest(b"decimal 5:15e-1"), digest(b"-")}))


# -- NULL watermarks ----------------------------------------------------------------------------


def test_boundary_full_load_admits_null_watermarks() -> None:
    f = BoundaryFilter("e", "wm", ["id"], None)
    admitted = run(
        f,
        rows(pa.int64(), [1, 2, 3], [None, 5, None]),
        rows(pa.int64(), [4], [None]),
        rows(pa.int64(), [5], [4]),
    )
    assert admitted == [1, 2, 3, 4, 5]
    assert (f.null_rows, f.null_loaded) == (0, 3)
    assert f.result() == Watermark("wm", 5, frozenset({"2"}))


def test_boundary_full_load_of_only_nulls_has_no_watermark() -> None:
    f = BoundaryFilter("e", "wm", ["id"], None)
    assert run(f, rows(pa.int64(), [1, 2], [None, None])) == [1, 2]
    assert f.result() is None


def test_boundary_incremental_run_counts_null_watermarks_never_admits_them() -> None:
    f = BoundaryFilter("e", "wm", ["id"], Watermark("wm", 3, frozenset({"9"})))
    admitted = run(
        f,
        rows(pa.int64(), [1, 2, 3], [None, 5, None]),
        rows(pa.int64(), [4], [None]),
        rows(pa.int64(), [5], [4]),
    )
    assert admitted == [2, 5]
    assert (f.null_rows, f.null_loaded) == (3, 0)
    assert f.result() == Watermark("wm", 5, frozenset({"2"}))


def test_boundary_nulls_before_ties_do_not_shift_the_tie_check() -> None:
    # NULLs in the same batch as boundary ties: each tie must be matched to its own row
    f = BoundaryFilter("e", "wm", ["id"], Watermark("wm", 5, frozenset({"2", "4"})))
    admitted = run(f, rows(pa.int64(), [1, 2, 3, 4, 6, 7], [None, 5, None, 5, 5, 6]))
    assert admitted == [6, 7]
    assert f.null_rows == 2
    assert f.result() == Watermark("wm", 6, frozenset({"7"}))


# -- errors -------------------------------------------------------------------------------------


def test_boundary_missing_watermark_column_is_a_config_error() -> None:
    f = BoundaryFilter("orders", "updated_at", ["id"], None)
    with pytest.raises(ConfigError, match=r"entity 'orders': watermark column 'updated_at' is not"):
        f.admit(rows(pa.int64(), [1], [1]))


def test_boundary_missing_key_column_is_a_config_error() -> None:
    f = BoundaryFilter("orders", "wm", ["id", "line_no"], None)
    with pytest.raises(ConfigError, match=r"entity 'orders': watermark key column 'line_no'"):
        f.admit(rows(pa.int64(), [1], [1]))


@pytest.mark.parametrize(
    ("stored", "col_type", "values"),
    [
        ("2024-05-01", pa.int64(), [1]),  # was text, now a number
        (5, pa.string(), ["5"]),  # was a number, now text
        (dt.date(2024, 5, 1), pa.timestamp("us"), [dt.datetime(2024, 5, 1)]),
        (Decimal("1.234"), pa.decimal128(10, 2), [Decimal("1.23")]),  # scale shrank
        # lossy conversions Arrow would accept silently: truncating the bound repeats rows
        (1.5, pa.int64(), [1]),
        (dt.datetime(2024, 5, 1, 12), pa.date32(), [dt.date(2024, 5, 1)]),
        (dt.datetime(2024, 5, 1, 12, 0, 0, 5), pa.timestamp("ms"), [dt.datetime(2024, 5, 1)]),
    ],
)
def test_boundary_stored_value_that_no_longer_fits_the_column(
    stored: Any, col_type: pa.DataType, values: list[Any]
) -> None:
    f = BoundaryFilter("orders", "wm", ["id"], Watermark("wm", stored, frozenset({"1"})))
    with pytest.raises(ConfigError, match=r"^entity 'orders': the stored watermark") as e:
        f.admit(rows(col_type, [1], values))
    message = str(e.value)
    assert repr(stored) in message
    assert f"column 'wm' of type {col_type}" in message
    assert "--full-drop" in message
    assert e.value.__cause__ is not None


@pytest.mark.parametrize(
    ("stored", "col_type", "values", "admitted"),
    [
        (5, pa.float64(), [4.5, 5.0, 5.5], [1, 2]),  # int -> float is exact
        (Decimal("1.5"), pa.decimal128(10, 3), [Decimal("1.499"), Decimal("1.5")], [1]),
        ("b", pa.large_string(), ["a", "b", "c"], [1, 2]),  # string -> large_string
    ],
)
def test_boundary_stored_value_widening_is_accepted(
    stored: Any, col_type: pa.DataType, values: list[Any], admitted: list[int]
) -> None:
    f = BoundaryFilter("e", "wm", ["id"], Watermark("wm", stored, frozenset({"9"})))
    assert run(f, rows(col_type, list(range(len(values))), values)) == admitted


# -- the ledger form ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (42, "int", 42),
        (2.5, "float", 2.5),
        (True, "bool", True),
        ("2024-05-01", "str", "2024-05-01"),
        (dt.date(2024, 5, 1), "date", "2024-05-01"),
        (dt.datetime(2024, 5, 1, 12, 30, 1, 250), "datetime", "2024-05-01T12:30:01.000250"),
        (
            dt.datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
            "datetime",
            "2024-05-01T12:30:00+00:00",
        ),
        (Decimal("1234.50"), "decimal", "1234.50"),
    ],
)
def test_watermark_json_round_trip(value: Any, kind: str, text: Any) -> None:
    wm = Watermark("wm", value, frozenset({"b", "a"}))
    data = wm.to_json()
    assert data == {
        "column": "wm",
        "kind": kind,
        "value": text,
        "boundary": ["a", "b"],
        "boundary_format": 2,
    }
    back = Watermark.from_json(json.loads(json.dumps(data)))  # through real JSON text
    assert back == wm
    assert type(back.value) is type(value)
    if isinstance(value, dt.datetime):
        assert back.value.utcoffset() == value.utcoffset()
    if isinstance(value, Decimal):
        assert str(back.value) == "1234.50"  # the scale survives


def test_watermark_from_json_without_boundary() -> None:
    back = Watermark.from_json({"column": "n", "kind": "int", "value": 7})
    assert back == Watermark("n", 7, frozenset())


def test_watermark_unsupported_value_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"a watermark of type bytes is not supported"):
        Watermark("wm", b"\x00", frozenset()).to_json()


def test_watermark_round_trip_feeds_the_next_run() -> None:
    """The value as stored in the ledger works as the next run's bound."""
    t = dt.datetime
    typ = pa.timestamp("us", tz="UTC")
    first = BoundaryFilter("e", "wm", ["id"], None)
    run(first, rows(typ, [1, 2], [t(2024, 5, 1, 12, tzinfo=UTC)] * 2))
    result = first.result()
    assert result is not None
    stored = json.loads(json.dumps(result.to_json()))
    assert stored == {
        "column": "wm",
        "kind": "datetime",
        "value": "2024-05-01T12:00:00+00:00",
        "boundary": ["1", "2"],
        "boundary_format": 2,
    }
    second = BoundaryFilter("e", "wm", ["id"], Watermark.from_json(stored))
    admitted = run(second, rows(typ, [1, 2, 3], [t(2024, 5, 1, 12, tzinfo=UTC)] * 3))
    assert admitted == [3]


# -- nanoseconds ----------------------------------------------------------------------------

NS0 = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00 as ns since the epoch


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_boundary_nanosecond_column_ties_and_late_ties_are_exact(tz: str | None) -> None:
    typ = pa.timestamp("ns", tz=tz)
    first = BoundaryFilter("e", "wm", ["id"], None)
    b = NS0 + 123_456_789
    # 1 ns apart: a microsecond ledger would merge 2, 3 and 4 into one value
    admitted = run(first, rows(typ, [1, 2, 3, 4], [NS0, b - 1, b, b]))
    assert admitted == [1, 2, 3, 4]
    result = first.result()
    utc = tz is not None
    assert result == Watermark("wm", NanoTimestamp(b, utc), frozenset({"3", "4"}))
    stored = json.loads(json.dumps(result.to_json()))
    suffix = "+00:00" if utc else ""
    assert stored == {
        "column": "wm",
        "kind": "timestamp_ns",
        "value": "2024-05-01T12:00:00.123456789" + suffix,
        "boundary": ["3", "4"],
        "boundary_format": 2,
    }
    second = BoundaryFilter("e", "wm", ["id"], Watermark.from_json(stored))
    later = rows(
        typ,
        [2, 3, 4, 5, 6, 7],
        # 2: 1 ns before the bound; 3, 4: loaded ties; 5: a late tie; 6: 1 ns after; 7: NULL
        [b - 1, b, b, b, b + 1, None],
    )
    assert run(second, later) == [5, 6]
    assert second.null_rows == 1
    assert second.result() == Watermark("wm", NanoTimestamp(b + 1, utc), frozenset({"6"}))


def test_nanosecond_column_on_whole_microseconds_keeps_the_datetime_kind() -> None:
    f = BoundaryFilter("e", "wm", ["id"], None)
    run(f, rows(pa.timestamp("ns"), [1], [NS0 + 5_000]))
    result = f.result()
    assert result is not None
    assert result.to_json()["kind"] == "datetime"  # as every ledger before nanoseconds
    assert result.value == dt.datetime(2024, 5, 1, 12, 0, 0, 5)
    # an old microsecond ledger bounds a nanosecond column exactly
    g = BoundaryFilter("e", "wm", ["id"], Watermark.from_json(result.to_json()))
    assert run(g, rows(pa.timestamp("ns"), [1, 2, 3], [NS0 + 5_000, NS0 + 5_001, NS0 + 4_999])) == [
        2
    ]


def test_nanosecond_rows_without_keys_hash_exactly_and_as_before() -> None:
    f = BoundaryFilter("e", "wm", [], None)
    typ = pa.timestamp("ns")
    # whole microseconds hash as the microsecond value does; finer values by their nanoseconds
    same = f.identities(rows(pa.timestamp("us"), [1], [dt.datetime(2024, 5, 1, 12)]))
    assert f.identities(rows(typ, [1], [NS0])) == same
    a, b = f.identities(rows(typ, [1, 1], [NS0 + 1, NS0 + 2]))
    assert a != b
    run(f, rows(typ, [1, 1], [NS0 + 7, NS0 + 7]))
    g = BoundaryFilter("e", "wm", [], f.result())
    assert run(g, rows(typ, [1, 2], [NS0 + 7, NS0 + 7])) == [2]


def test_nanosecond_watermark_refuses_a_coarser_or_other_zone_column() -> None:
    stored = Watermark("wm", NanoTimestamp(NS0 + 1), frozenset({"1"}))
    for typ in (pa.timestamp("us"), pa.timestamp("ns", tz="UTC"), pa.int64()):
        f = BoundaryFilter("orders", "wm", ["id"], stored)
        with pytest.raises(ConfigError, match=r"the stored watermark .* --full-drop"):
            f.admit(rows(typ, [1], [0]))


def test_nano_timestamp_text_and_floors() -> None:
    v = NanoTimestamp(NS0 + 123_456_789)
    assert v.isoformat() == "2024-05-01T12:00:00.123456789"
    assert v.isoformat(7) == "2024-05-01T12:00:00.1234567"  # cut, never rounded up
    assert v.floor_datetime() == dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
    before = NanoTimestamp(-1)  # 1 ns before the epoch
    assert before.isoformat() == "1969-12-31T23:59:59.999999999"
    assert before.floor_datetime() == dt.datetime(1969, 12, 31, 23, 59, 59, 999999)
    for text in ("2024-05-01T12:00:00.123456789+00:00", "1969-12-31T23:59:59.999999999"):
        assert NanoTimestamp.fromisoformat(text).isoformat() == text
    with pytest.raises(ValueError, match="not a nanosecond timestamp"):
        NanoTimestamp.fromisoformat("2024-05-01T12:00:00.123456")

"""The file Homes' type matrix: every Parquet and CSV type, with edge values, through the flow.

Each source is written with pyarrow (or as CSV text), moved by the real flow into the real
Parquet Store, read back with pyarrow and compared value by value, canonically: decimals as
strings, instants as UTC nanoseconds, floats by their bits, bytes as bytes.
"""

from __future__ import annotations

import decimal
import math
import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks import CsvHome, ParquetHome
from blocks.base import ReadRequest
from blocks.stores._schema import comparable
from hygge_core.errors import FlowError, HomeError
from tests.conftest import run_flow
from tests.flow_helpers import file_spec_for as spec_for

D = decimal.Decimal
I64 = (-(2**63), 2**63 - 1)
NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
LONG_TEXT = "lang tekst ✓ " * 20_000  # 260 kB in one value
TEXT = ["", "a", "rød grød med fløde ✓ 𝄞 日本", LONG_TEXT, None, "\\N", 'line\nbreak, "q"']
BYTES = [b"", b"\x00", b"\xff\x00\xfe", bytes(range(256)) * 400, None]
FLOATS = [0.0, -0.0, 1.5, -2.25, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]
F32 = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1.401298464324817e-45, 3.4028234663852886e38]
F16 = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 6e-08, 65504.0]
DAYS = [0, -1, 1, -719162, 2932896, None]  # 1970-01-01, 1969-12-31, 0001-01-01, 9999-12-31
#: instants per unit: epoch, just before it, year 1 and 9999 (ns: the whole int64 range)
SECONDS = [0, -1, 1, -62135596800, 253402300799, None]
INSTANTS = {
    "s": SECONDS,
    "ms": [0, -1, 1, -62135596800000, 253402300799999, None],
    "us": [0, -1, 1, -62135596800000000, 253402300799999999, None],
    "ns": [0, -1, 1, I64[0] + 1, I64[1], None],
}
UNITS = ("s", "ms", "us", "ns")


def _ints(t: pa.DataType) -> list[Any]:
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 0, -1, 1, None]
    return [0, 1, 2**bits - 1, None]


def _dec(precision: int, scale: int) -> list[Any]:
    exact = decimal.Context(prec=100)
    top = D(10**precision - 1).scaleb(-scale, exact)
    tiny = D(1).scaleb(-scale, exact)
    return [top, top.copy_negate(), D(0).scaleb(-scale, exact), tiny, tiny.copy_negate(), None]


def carried_columns() -> dict[str, pa.Array]:
    """Every type a Parquet file can hold that the Parquet Home carries, with edge values."""
    cols: dict[str, pa.Array] = {}
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64()):
        cols[str(t)] = pa.array(_ints(t), t)
    for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()):
        cols[str(t)] = pa.array(_ints(t), t)
    cols["float16"] = pa.array([*F16, None], pa.float16())
    cols["float32"] = pa.array([*F32, None], pa.float32())
    cols["float64"] = pa.array([*FLOATS, None], pa.float64())
    cols["bool"] = pa.array([True, False, None], pa.bool_())
    for t in (pa.string(), pa.large_string(), pa.string_view()):
        cols[str(t)] = pa.array(TEXT, t)
    for t in (pa.binary(), pa.large_binary(), pa.binary_view()):
        cols[str(t)] = pa.array(BYTES, t)
    cols["fixed_size_binary"] = pa.array([b"\x00\x01\x02", b"\xff\xfe\xfd", None], pa.binary(3))
    cols["date32"] = pa.array(DAYS, pa.date32())
    cols["date64"] = pa.array([None if d is None else d * 86_400_000 for d in DAYS], pa.date64())
    for unit in UNITS:
        for zone in (None, "UTC", "Europe/Copenhagen", "+05:30", "-08:00"):
            cols[f"timestamp_{unit}_{zone}"] = pa.array(INSTANTS[unit], pa.timestamp(unit, zone))
    cols["time32_s"] = pa.array([0, 1, 86399, None], pa.time32("s"))
    cols["time32_ms"] = pa.array([0, 1, 86_399_999, None], pa.time32("ms"))
    cols["time64_us"] = pa.array([0, 1, 86_399_999_999, None], pa.time64("us"))
    cols["time64_ns"] = pa.array([0, 1, 86_399_999_999_999, None], pa.time64("ns"))
    # seconds travel as milliseconds: the widest that fit (wider ones are refused, below)
    cols["duration_s"] = pa.array(
        [0, -1, 1, I64[0] // 1000 + 1, I64[1] // 1000, None], "duration[s]"
    )
    for unit in UNITS[1:]:
        cols[f"duration_{unit}"] = pa.array([0, -1, 1, *I64, None], pa.duration(unit))
    for p, s in ((1, 0), (5, 2), (18, 0), (38, 0), (38, 10), (38, 38)):
        cols[f"decimal128_{p}_{s}"] = pa.array(_dec(p, s), pa.decimal128(p, s))
    cols["decimal32_9_2"] = pa.array(_dec(9, 2), pa.decimal32(9, 2))
    cols["decimal64_18_4"] = pa.array(_dec(18, 4), pa.decimal64(18, 4))
    cols["decimal256_38_6"] = pa.array(_dec(38, 6), pa.decimal256(38, 6))
    cols["null"] = pa.array([None, None], pa.null())
    cols["list_int64"] = pa.array([[1, None, I64[1]], [], None], pa.list_(pa.int64()))
    cols["large_list_text"] = pa.array([["", "ø", None], [], None], pa.large_list(pa.string()))
    cols["fixed_list_f64"] = pa.array([[math.nan, -0.0], None], pa.list_(pa.float64(), 2))
    cols["list_list_int32"] = pa.array(
        [[[1, 2], [3, 4]], [[], None], None], pa.list_(pa.list_(pa.int32()))
    )
    point = pa.struct([("x", pa.int32()), ("label", pa.string()), ("vals", pa.list_(pa.float64()))])
    cols["struct"] = pa.array(
        [
            {"x": 1, "label": "æ", "vals": [1.5, math.inf]},
            {"x": None, "label": None, "vals": None},
            None,
        ],
        point,
    )
    cols["list_struct"] = pa.array(
        [[{"x": -1, "label": "", "vals": []}], [], None], pa.list_(point)
    )
    cols["map"] = pa.array([[("a", 1), ("ø", None)], [], None], pa.map_(pa.string(), pa.int32()))
    cols["dictionary"] = pa.array(["a", "ø", None, "a"]).dictionary_encode()
    return cols


# -- canonical values ---------------------------------------------------------------------------


def canon(arr: pa.Array) -> list[Any]:
    """Each value in one spelling whatever its Arrow type: what 'the same value' means here."""
    t = arr.type
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(t):
        return canon(arr.dictionary_decode())
    if isinstance(t, pa.ExtensionType):
        return canon(arr.storage)
    if pa.types.is_timestamp(t) or pa.types.is_time(t) or pa.types.is_duration(t):
        factor = NS[t.unit]
        raw = arr.cast(pa.int32() if t.bit_width == 32 else pa.int64()).to_pylist()
        return [None if v is None else v * factor for v in raw]
    if pa.types.is_date32(t):
        return arr.cast(pa.int32()).to_pylist()
    if pa.types.is_date64(t):
        return [
            None if v is None else ("days", *divmod(v, 86_400_000))
            for v in arr.cast(pa.int64()).to_pylist()
        ]
    if pa.types.is_floating(t):
        fmt = {16: "<e", 32: "<f", 64: "<d"}[t.bit_width]
        return [None if v is None else struct.pack(fmt, v).hex() for v in arr.to_pylist()]
    if pa.types.is_decimal(t):
        return [None if v is None else str(v) for v in arr.to_pylist()]
    if pa.types.is_struct(t):
        fields = {t.field(i).name: canon(arr.field(i)) for i in range(t.num_fields)}
        valid = arr.is_valid().to_pylist()
        return [
            {name: vals[i] for name, vals in fields.items()} if valid[i] else None
            for i in range(len(arr))
        ]
    if pa.types.is_map(t):
        return arr.to_pylist()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [None if not s.is_valid else canon(s.values) for s in arr]
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return canon(arr.cast(pa.large_list(t.value_type)))
    return arr.to_pylist()


def date_canon(arr: pa.Array) -> list[Any]:
    """A date64 column as days, the form a date32 column has."""
    out = []
    for v in canon(arr):
        if v is None:
            out.append(None)
        else:
            assert v[2] == 0
            out.append(v[1])
    return out


def small(t: pa.DataType) -> pa.DataType:
    """`t` as a reader sees it: small text and lists, no field names inside lists and maps."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(small(t.value_type))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(small(t.value_type), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(small(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(small(t.key_type), small(t.item_type))
    return comparable(pa.schema([pa.field("x", t)])).field(0).type


def lake_table(lake: Path, entity: str) -> pa.Table:
    files = sorted((lake / entity).glob("*.parquet"))
    assert files, f"no files for {entity}"
    return pa.concat_tables([pq.read_table(f) for f in files])


# -- the types a lake column has, for each source type -------------------------------------------


def expected_type(name: str, t: pa.DataType) -> pa.DataType:
    """What the lake holds for a source column of type `t` (the README's table says the same)."""
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_timestamp(t):
        unit = "ms" if t.unit == "s" else t.unit  # Parquet has no seconds unit
        # an offset Polars knows by name keeps it (Etc/GMT+8 is -08:00); others become UTC
        zone = {"+05:30": "UTC", "-08:00": "Etc/GMT+8"}.get(t.tz or "", t.tz)
        return pa.timestamp(unit, zone)
    if pa.types.is_time(t):
        return pa.time64("ns")
    if pa.types.is_duration(t):
        return pa.duration("ms") if t.unit == "s" else t
    if pa.types.is_decimal(t):
        return pa.decimal128(t.precision, t.scale)
    if t == pa.binary(3):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return pa.dictionary(pa.uint32(), pa.string())
    return small(t)


def test_every_parquet_type_arrives_exactly(tmp_path: Path, spec_name: str) -> None:
    cols = carried_columns()
    src = tmp_path / "src"
    src.mkdir()
    # one file with every column too: one column's type must not fail the others
    width = max(len(a) for a in cols.values())
    padded = {n: pa.concat_arrays([a, pa.nulls(width - len(a), a.type)]) for n, a in cols.items()}
    pq.write_table(pa.table(padded), src / "all.parquet")
    entities = [{"name": "all", "path": str(src / "all.parquet")}]
    for name, arr in cols.items():
        pq.write_table(pa.table({name: arr}), src / f"{_safe(name)}.parquet")
        entities.append({"name": _safe(name), "path": str(src / f"{_safe(name)}.parquet")})
    lake = tmp_path / "lake"
    state = run_flow(spec_for(spec_name, {"type": "parquet"}, lake, entities))
    assert state.is_completed(), state.message
    everything = lake_table(lake, "all")
    problems = []
    for name, arr in cols.items():
        want = date_canon(arr) if pa.types.is_date64(arr.type) else canon(arr)
        for got in (lake_table(lake, _safe(name)).column(name), everything.column(name)):
            if canon(got)[: len(arr)] != want:
                problems.append(f"{name}: values {canon(got)[:6]} != {want[:6]}")
            if small(got.type) != small(expected_type(name, arr.type)):
                problems.append(f"{name}: {got.type}, expected {expected_type(name, arr.type)}")
    assert not problems, "\n".join(problems)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def failed_summary(state: Any) -> dict[str, dict[str, Any]]:
    assert state.is_failed()
    with pytest.raises(FlowError) as info:
        state.result()
    assert info.value.summary is not None
    return {r["entity"]: r for r in info.value.summary}


def test_parquet_values_without_an_exact_form_are_refused_naming_the_column(
    tmp_path: Path, spec_name: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    wide = src / "wide.parquet"
    big = D("1" * 38 + ".25")
    pq.write_table(
        pa.table({"id": [1, 2], "big": pa.array([big, None], pa.decimal256(40, 2))}), wide
    )
    # seconds beyond what milliseconds hold (about 292 million years)
    far = src / "far.parquet"
    pq.write_table(pa.table({"id": [1], "span": pa.array([2**62], pa.duration("s"))}), far)
    lake = tmp_path / "lake"
    entities = [
        {"name": "wide", "path": str(wide)},
        {"name": "narrowed", "path": str(wide), "columns": ["id"]},
        {"name": "far", "path": str(far)},
    ]
    summary = failed_summary(run_flow(spec_for(spec_name, {"type": "parquet"}, lake, entities)))

    detail = summary["wide"]["detail"]
    assert summary["wide"]["status"] == "FAILED"
    assert "column 'big'" in detail and "decimal256(40, 2)" in detail, detail
    assert "`columns`" in detail and "at most 38 digits" in detail, detail
    detail = summary["far"]["detail"]
    assert summary["far"]["status"] == "FAILED"
    assert "column 'span'" in detail and "duration[ms]" in detail, detail
    # nothing of a refused entity is written; leaving the column out loads the rest
    assert not (lake / "wide").exists() and not (lake / "far").exists()
    assert (summary["narrowed"]["status"], summary["narrowed"]["rows"]) == ("ok", 2)
    assert lake_table(lake, "narrowed").column_names == ["id"]


# -- CSV ----------------------------------------------------------------------------------------

#: each CSV column: its text (one field per row, None = an empty field) and what it must read as
CSV_COLUMNS: dict[str, tuple[list[str | None], pa.DataType, list[Any]]] = {
    "int": (
        ["-9223372036854775808", "9223372036854775807", "0", "-1", None],
        pa.int64(),
        [I64[0], I64[1], 0, -1, None],
    ),
    "huge": (
        ["99999999999999999999999999999999999999", "-1", None, "0", "9223372036854775808"],
        pa.decimal128(38, 0),
        ["99999999999999999999999999999999999999", "-1", None, "0", "9223372036854775808"],
    ),
    "float": (
        ["0.0", "-0.0", "NaN", "inf", "-inf"],
        pa.float64(),
        [struct.pack("<d", v).hex() for v in (0.0, -0.0, math.nan, math.inf, -math.inf)],
    ),
    "float_edges": (
        ["1.7976931348623157e308", "5e-324", "0.1", "-2.5", None],
        pa.float64(),
        [
            *(struct.pack("<d", v).hex() for v in (1.7976931348623157e308, 5e-324, 0.1, -2.5)),
            None,
        ],
    ),
    "flag": (
        ["true", "false", None, "true", "false"],
        pa.bool_(),
        [True, False, None, True, False],
    ),
    "text": (
        ['""', "a", '"rød grød ✓ 𝄞 日本"', f'"{LONG_TEXT}"', None],
        pa.string(),
        ["", "a", "rød grød ✓ 𝄞 日本", LONG_TEXT, None],
    ),
    "quoted": (
        ['"line\nbreak"', '"q""q"', '"a,b"', "\\N", '"  pad  "'],
        pa.string(),
        ["line\nbreak", 'q"q', "a,b", "\\N", "  pad  "],
    ),
    "day": (
        ["2024-01-31", "0001-01-01", "9999-12-31", "1969-12-31", None],
        pa.date32(),
        [19753, -719162, 2932896, -1, None],
    ),
    "naive": (
        ["2024-01-31 12:00:00", "2024-01-31T12:00:00.123456", "1969-12-31 23:59:59", None, None],
        pa.timestamp("us"),
        [1706702400 * NS["s"], 1706702400123456000, -NS["s"], None, None],
    ),
    "zoned": (
        [
            "2024-01-31T12:00:00Z",
            "2024-01-31T12:00:00+05:30",
            "2024-01-31T12:00:00-08:00",
            None,
            None,
        ],
        pa.timestamp("us", "UTC"),
        [
            1706702400 * NS["s"],
            (1706702400 - 19800) * NS["s"],
            (1706702400 + 28800) * NS["s"],
            None,
            None,
        ],
    ),
    "clock": (
        ["00:00:00", "23:59:59.999999", "12:30:00", None, None],
        pa.time64("ns"),
        [0, 86_399_999_999_000, 45_000 * NS["s"], None, None],
    ),
}


def test_every_csv_type_arrives_exactly(tmp_path: Path, spec_name: str) -> None:
    names = list(CSV_COLUMNS)
    lines = [",".join(names)]
    for i in range(5):
        lines.append(",".join(CSV_COLUMNS[n][0][i] or "" for n in names))
    path = tmp_path / "types.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lake = tmp_path / "lake"
    entities = [{"name": "types", "path": str(path)}]
    state = run_flow(spec_for(spec_name, {"type": "csv"}, lake, entities))
    assert state.is_completed(), state.message

    table = lake_table(lake, "types")
    problems = []
    for name, (_, want_type, want) in CSV_COLUMNS.items():
        got = table.column(name)
        if small(got.type) != want_type:
            problems.append(f"{name}: {got.type}, expected {want_type}")
        if canon(got) != want:
            problems.append(f"{name}: {canon(got)} != {want}")
    assert not problems, "\n".join(problems)


def test_parquet_files_read_through_pyarrow_still_share_one_schema(tmp_path: Path) -> None:
    # the pyarrow path compares the files' schemas as Polars' own scan does
    zone = pa.timestamp("us", "+05:30")
    pq.write_table(pa.table({"at": pa.array([0], zone)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"at": pa.array([1], zone), "n": [1]}), tmp_path / "b.parquet")
    with pytest.raises(HomeError, match=r"b\.parquet' does not share the schema .*\+n int64"):
        list(ParquetHome().read(ReadRequest(entity="e", path=str(tmp_path))))
    (tmp_path / "b.parquet").unlink()
    pq.write_table(pa.table({"at": pa.array([1, None], zone)}), tmp_path / "b.parquet")
    batches = ParquetHome().read(
        ReadRequest(entity="e", path=str(tmp_path), where="at IS NOT NULL")
    )
    table = pa.Table.from_batches(list(batches))
    assert table.schema.field("at").type == pa.timestamp("us", "UTC")
    assert table.column("at").cast(pa.int64()).to_pylist() == [0, 1]
    # `hygge check` plans the same scan without reading rows, and refuses what a run refuses
    ParquetHome().check(ReadRequest(entity="e", path=str(tmp_path)))
    wide = tmp_path / "wide" / "w.parquet"
    wide.parent.mkdir()
    pq.write_table(pa.table({"big": pa.array([D(1)], pa.decimal256(39, 0))}), wide)
    with pytest.raises(HomeError, match=r"column 'big' .* is decimal256"):
        ParquetHome().check(ReadRequest(entity="e", path=str(wide)))


def test_parquet_incremental_on_a_fixed_offset_watermark(tmp_path: Path, spec_name: str) -> None:
    # the bound is pushed into the pyarrow scan: the second run loads only the newer rows
    zone = pa.timestamp("us", "+05:30")
    events = tmp_path / "events"
    events.mkdir()
    day = 86_400 * 10**6
    pq.write_table(
        pa.table({"id": [1, 2, 3], "at": pa.array([0, day, day], zone)}), events / "a.parquet"
    )
    lake = tmp_path / "lake"
    entity = {"name": "events", "path": str(events), "watermark": {"column": "at", "keys": ["id"]}}
    spec = spec_for(spec_name, {"type": "parquet"}, lake, [entity])
    first = run_flow(spec)
    assert first.is_completed() and [r["rows"] for r in first.result()] == [3]
    # a tie with the watermark (a new id) and a later row
    pq.write_table(
        pa.table({"id": [4, 5], "at": pa.array([day, 2 * day], zone)}), events / "b.parquet"
    )
    second = run_flow(spec)
    assert second.is_completed() and [r["rows"] for r in second.result()] == [2]
    got = lake_table(lake, "events").sort_by("id")
    assert got.column("id").to_pylist() == [1, 2, 3, 4, 5]
    assert got.column("at").cast(pa.int64()).to_pylist() == [0, day, day, day, 2 * day]


def test_csv_integer_past_38_digits_fails_naming_the_column(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text("id,huge\n1,170141183460469231731687303715884105727\n2,1\n", encoding="utf-8")
    with pytest.raises(HomeError, match=r"column 'huge'.*`schema_overrides`"):
        list(CsvHome().read(ReadRequest(entity="e", path=str(path))))
    # pinned as text, the digits arrive as written
    [batch] = CsvHome(schema_overrides={"huge": "String"}).read(
        ReadRequest(entity="e", path=str(path))
    )
    assert batch.column("huge").to_pylist() == ["170141183460469231731687303715884105727", "1"]


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _read_csv(path: Path, **home: Any) -> pa.Table:
    return pa.Table.from_batches(
        list(CsvHome(**home).read(ReadRequest(entity="e", path=str(path))))
    )


def test_csv_leading_zeros_and_nanoseconds_in_the_sample_are_kept(tmp_path: Path) -> None:
    rows = [
        f"{i},{i:05d},2024-01-31 12:00:00.{i:09d},2024-01-31 12:00:0{i % 10}" for i in range(1, 6)
    ]
    table = _read_csv(_csv(tmp_path / "a.csv", "id,zip,fine,plain", rows))
    assert table.schema.field("id").type == pa.int64()  # plain integers stay integers
    assert small(table.schema.field("zip").type) == pa.string()
    assert table.column("zip").to_pylist() == ["00001", "00002", "00003", "00004", "00005"]
    assert table.schema.field("fine").type == pa.timestamp("ns")
    assert table.column("fine").cast(pa.int64()).to_pylist() == [
        1706702400 * NS["s"] + i for i in range(1, 6)
    ]
    assert table.schema.field("plain").type == pa.timestamp("us")  # no finer digits: as before


def test_csv_values_past_the_sample_that_the_type_would_change_fail_the_entity(
    tmp_path: Path,
) -> None:
    ints = [f"{i},{i}" for i in range(1, 20)] + ["20,007"]
    with pytest.raises(HomeError) as err:
        _read_csv(_csv(tmp_path / "z.csv", "id,code", ints), infer_schema_length=10)
    assert "column 'code'" in err.value.msg and "007 (a leading zero" in err.value.msg
    assert "schema_overrides: {column: String}" in err.value.msg
    pinned = _read_csv(
        tmp_path / "z.csv", infer_schema_length=10, schema_overrides={"code": "String"}
    )
    assert pinned.column("code").to_pylist()[-1] == "007"

    stamps = [f"{i},2024-01-31 12:00:00.{i:06d}" for i in range(1, 20)]
    stamps.append("20,2024-01-31 12:00:00.000001500")
    with pytest.raises(HomeError) as err:
        _read_csv(_csv(tmp_path / "t.csv", "id,at", stamps), infer_schema_length=10)
    assert "column 'at'" in err.value.msg and "digits past microseconds" in err.value.msg
    # trailing zeros past the sixth digit change nothing: they read as microseconds
    zeros = [*stamps[:-1], "20,2024-01-31 12:00:00.000001000"]
    table = _read_csv(_csv(tmp_path / "t0.csv", "id,at", zeros), infer_schema_length=10)
    assert table.column("at").cast(pa.int64()).to_pylist()[-1] == 1706702400 * 10**6 + 1

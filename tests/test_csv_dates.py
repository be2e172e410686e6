"""CSV dates parsed once (issue 20, part 4): the sample's format, the same values as before.

Each file is read by `CsvHome` twice, the old way (`fast_dates=False`: Polars' per-value
inference) and the new one (one explicit format per column), and the Arrow tables must be
identical, types and values; a file the old way fails must fail the same way.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from blocks import CsvHome
from blocks.base import ReadRequest
from blocks.homes._csv_dates import find_format, reader_parse
from hygge_core.errors import HomeError

#: rows enough for several of the engine's batches (`batch_size` below), so that the format
#: found in the sample meets later batches
ROWS = 3_000


def read(path: Path, *, fast: bool, **options: object) -> pa.Table:
    home = CsvHome(fast_dates=fast, **options)  # type: ignore[arg-type]
    request = ReadRequest(entity="dates", path=str(path), batch_size=500)
    return pa.Table.from_batches(list(home.read(request)))


def both(path: Path, **options: object) -> pa.Table:
    """The file read both ways; they must agree exactly."""
    old = read(path, fast=False, **options)
    new = read(path, fast=True, **options)
    assert new.schema == old.schema
    assert new.equals(old), f"{path.name}: {new.to_pylist()[:3]} != {old.to_pylist()[:3]}"
    return new


def same_outcome(path: Path, **options: object) -> str | None:
    """Both ways load the same table, or fail with the same message (returned)."""
    outcomes: list[pa.Table | str] = []
    for fast in (False, True):
        try:
            outcomes.append(read(path, fast=fast, **options))
        except HomeError as exc:
            outcomes.append(str(exc))
    old, new = outcomes
    if isinstance(old, str):
        assert new == old
        return old
    assert isinstance(new, pa.Table), new
    assert new.schema == old.schema
    assert new.equals(old)
    return None


def csv(tmp: Path, name: str, columns: dict[str, list[str]]) -> Path:
    lines = [",".join(columns)]
    lines += [",".join(row) for row in zip(*columns.values(), strict=True)]
    path = tmp / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def cycle(values: list[str], n: int = ROWS) -> list[str]:
    return [values[i % len(values)] for i in range(n)]


def with_tail(values: list[str], tail: list[str], n: int = ROWS) -> list[str]:
    """`values` repeated, the last rows replaced by `tail` (past any sample of 1,000 rows)."""
    return cycle(values, n - len(tail)) + tail


SPELLINGS: dict[str, list[str]] = {
    "iso_date": ["2024-01-31", "1999-12-31", "2024-02-29"],
    "slash_date": ["2024/01/31", "1999/12/31", ""],
    "dmy_date": ["31-01-2024", "01-12-1999", "29/02/2024"],
    "dotted_dmy": ["31.01.2024", "01.12.1999", "15.06.2020"],
    "t_seconds": ["2024-01-31T10:00:00", "2024-01-31T23:59:59", "2000-01-01T00:00:00"],
    "space_seconds": ["2024-01-31 10:00:00", "", "2000-01-01 00:00:00"],
    "minutes": ["2024-01-31 10:00", "2024-01-31T23:59", "2000-01-01 00:00"],
    "millis": ["2024-01-31T10:00:00.123", "2024-01-31T10:00:00.000", "2024-01-31T10:00:00.999"],
    "micros": ["2024-01-31 10:00:00.123456", "2024-01-31 10:00:00.000001", ""],
    "nanos": ["2024-01-31T10:00:00.123456789", "2024-01-31T10:00:00.000000001", ""],
    "mixed_fraction": ["2024-01-31T10:00:00.1", "2024-01-31T10:00:00.12345", "2024-01-31T10:00:00"],
    "zulu": ["2024-01-31T10:00:00Z", "2024-01-31T10:00:00.5Z", "1970-01-01T00:00:00Z"],
    "offsets": ["2024-01-31T10:00:00+01:00", "2024-01-31T10:00:00-05:30", "2024-01-31T10:00:00Z"],
    "offsets_space": ["2024-01-31 10:00:00+0100", "2024-01-31 10:00:00.25+00:00", ""],
    "times": ["10:00:00", "23:59:59", "00:00:00"],
    "times_fraction": ["10:00:00.5", "23:59:59.123456", ""],
    "not_a_date": ["2024-01-31", "soon", "2024-02-01"],
    "number": ["20240131", "19991231", "20000101"],
}


def test_every_spelling_loads_to_the_old_values(tmp_path: Path) -> None:
    path = csv(tmp_path, "all", {name: cycle(v) for name, v in SPELLINGS.items()})
    table = both(path)
    types = dict(zip(table.schema.names, table.schema.types, strict=True))
    # the dates are typed, so the new path parsed them (not a text column on both sides)
    assert types["iso_date"] == pa.date32()
    assert types["dmy_date"] == pa.date32()
    assert types["t_seconds"] == pa.timestamp("us")
    assert types["nanos"] == pa.timestamp("ns")
    assert types["zulu"] == pa.timestamp("us", tz="UTC")
    assert types["times"] == pa.time64("ns")
    assert table.column("offsets")[1].as_py().isoformat() == "2024-01-31T15:30:00+00:00"
    assert table.column("micros")[2].as_py() is None
    assert table.num_rows == ROWS


def test_the_format_is_one_of_fixed_width_when_the_sample_allows() -> None:
    text = pl.Series("c", ["2024-01-31T10:00:00.123456", None, "2024-01-31T10:00:01.000000"])
    expected = text.str.to_datetime(time_unit="us", strict=True)
    assert find_format(text, expected, pl.Datetime("us")) == "%Y-%m-%dT%H:%M:%S.%6f"
    mixed = pl.Series("c", ["2024-01-31 10:00:00.1", "2024-01-31 10:00:00.123"])
    assert find_format(mixed, mixed.str.to_datetime(time_unit="us"), pl.Datetime("us")) == (
        "%Y-%m-%d %H:%M:%S%.f"
    )
    days = pl.Series("d", ["31/01/2024", "01/12/1999"])
    assert find_format(days, reader_parse("d", pl.Date())(days), pl.Date()) == "%d/%m/%Y"


@pytest.mark.parametrize(
    ("sample", "later", "outcome"),
    [
        # another spelling the old inference takes: the batch falls back, same values
        (["2024-01-31", "2024-02-01"], ["2024/03/05", "2024.3.5"], None),
        (["2024-01-31 10:00:00.123456"], ["2024-01-31 10:00:00", "2024-01-31T10:00:00.5"], None),
        (["2024-01-31T10:00:00"], ["2024-01-31 10:00", "2024-01-31T10:00:00.123"], None),
        (
            ["2024-01-31T10:00:00Z"],
            ["2024-01-31T10:00:00+02:00", "2024-01-31T10:00:00.1-01:00"],
            None,
        ),
        (["10:00:00"], ["10:00:00.5", "9:05:00"], None),
        # empty fields (NULL) and a quoted empty string, later
        (["2024-01-31"], ["", '""', ""], None),
        (["2024-01-31 10:00:00"], [""], None),
        (["2024-01-31 10:00:00"], ['""'], 'for 1 out of 3000 values: [""]'),
        # a spelling of another family, a non-date: failed before, fails alike
        (
            ["2024-01-31"],
            ["05-03-2024"],
            "could not parse `05-03-2024` as dtype `date` at column 'c'",
        ),
        (["2024-01-31"], ["hello"], "could not parse `hello` as dtype `date` at column 'c'"),
        (["2024-01-31 10:00:00"], ["hello"], "failed in column 'c' for 1 out of 3000 values"),
        (["10:00:00"], ["noon"], "noon"),
        # looks like a date in the sample, another kind of value later
        (["2024-01-31"], ["2024-01-31 10:00:00"], "could not parse `2024-01-31 10:00:00`"),
        # finer digits than the sample's microseconds: the guard, as before
        (["2024-01-31 10:00:00.123456"], ["2024-01-31 10:00:00.1234567"], "past microseconds"),
        (["2024-01-31 10:00:00.1"], ["2024-01-31 10:00:00.1234567"], "past microseconds"),
    ],
)
def test_a_later_value_loads_or_fails_as_before(
    tmp_path: Path, sample: list[str], later: list[str], outcome: str | None
) -> None:
    ids = [str(i) for i in range(ROWS)]
    path = csv(tmp_path, "later", {"id": ids, "c": with_tail(sample, later)})
    error = same_outcome(path, infer_schema_length=1_000)
    if outcome is None:
        assert error is None
    else:
        assert error is not None and outcome in error
        assert "entity 'dates'" in error and "later.csv" in error


def test_pinned_and_text_columns_are_left_alone(tmp_path: Path) -> None:
    columns = {"d": cycle(["2024-01-31"]), "e": cycle(["2024-01-31"])}
    path = csv(tmp_path, "pinned", columns)
    table = both(path, schema_overrides={"d": "String"})
    assert table.schema.field("d").type in (pa.string(), pa.large_string(), pa.string_view())
    assert table.schema.field("e").type == pa.date32()
    text = both(path, try_parse_dates=False)
    assert text.schema.field("e").type != pa.date32()
    both(path, infer_schema_length=0)


def test_a_column_of_only_nulls_in_the_sample(tmp_path: Path) -> None:
    path = csv(tmp_path, "nulls", {"id": cycle(["1"]), "c": with_tail([""], ["2024-01-31"])})
    both(path, infer_schema_length=100)

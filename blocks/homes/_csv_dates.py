"""CSV dates parsed once: a column's date or time format is found in the sample, not per row.

With `try_parse_dates`, Polars' CSV reader infers a pattern for each date-like column in each
chunk and tries every spelling of that pattern on each value; that takes most of a read (5.4
of 6.9 s for the 10M-row bench file). So the Home finds, in the inference sample, the one
explicit format that gives every sample value exactly the value Polars gives it, reads the
column as text and parses each batch with that format (`str.to_date(format)` and kin).

A batch where the format misses a value (another spelling, a non-date, an empty string) is
parsed again the old way, the whole batch, so it loads to the same values or fails with the
same error as before. A column no format fits keeps the old parse. `CsvHome(fast_dates=False)`
reads every date column the old way.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Literal

import polars as pl

_DAYS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d-%m-%Y", "%d/%m/%Y", "%d.%m.%Y")
#: fixed widths first: Polars parses those several times faster than `%.f`, which takes any
#: number of fraction digits (or none); `%#z` takes `Z`, `+01`, `+01:00` and `+0100`
_TIMES = (
    "%H:%M:%S",
    "%H:%M:%S.%3f",
    "%H:%M:%S.%6f",
    "%H:%M:%S.%9f",
    "%H:%M:%S%.f",
    "%H:%M",
)
_ZONES = ("%#z",)

_COLUMN_NUMBER = re.compile(r" \(column number [0-9]+\)")

Kind = Literal["date", "datetime", "time"]


def date_kind(dtype: pl.DataType) -> Kind | None:
    """Which of the reader's date parses gave this column its type, if any."""
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.Date):
        return "date"
    if isinstance(dtype, pl.Time):
        return "time"
    return None


def candidates(dtype: pl.DataType) -> list[str]:
    """The explicit formats tried on a column's sample, most common first."""
    kind = date_kind(dtype)
    if kind == "date":
        return list(_DAYS)
    if kind == "time":
        return list(_TIMES)
    zones = _ZONES if isinstance(dtype, pl.Datetime) and dtype.time_zone else ("",)
    return [f"{d}{sep}{t}{z}" for d in _DAYS for sep in ("T", " ") for t in _TIMES for z in zones]


def parse_with(text: pl.Series, fmt: str, dtype: pl.DataType) -> pl.Series:
    """`text` parsed with one explicit format; a value it misses becomes NULL."""
    if isinstance(dtype, pl.Datetime):
        return text.str.to_datetime(
            fmt, time_unit=dtype.time_unit, time_zone=dtype.time_zone, strict=False
        )
    if isinstance(dtype, pl.Date):
        return text.str.to_date(fmt, strict=False)
    return text.str.to_time(fmt, strict=False)


def find_format(
    text: pl.Series, expected: pl.Series, dtype: pl.DataType, limit: int = 100_000
) -> str | None:
    """The first candidate format giving every sample value the value Polars gave it."""
    text, expected = text.head(limit), expected.head(limit)
    if text.null_count() == text.len():
        return None  # nothing to learn a format from
    for fmt in candidates(dtype):
        try:
            got = parse_with(text, fmt, dtype)
        except pl.exceptions.PolarsError:
            continue
        if got.cast(expected.dtype).equals(expected):
            return fmt
    return None


def batch_parser(
    name: str,
    fmt: str,
    dtype: pl.DataType,
    old: Callable[[pl.Series], pl.Series],
    suspect: Callable[[pl.Series], bool] | None = None,
) -> Callable[[pl.Series], pl.Series]:
    """Parse a batch with `fmt`; a batch it misses a value of goes through `old` whole.

    So does a batch `suspect` flags: one whose values `fmt` would read differently from `old`.
    """

    def parse(text: pl.Series) -> pl.Series:
        got = parse_with(text, fmt, dtype)
        if got.null_count() == text.null_count() and not (suspect and suspect(text)):
            return got.alias(name)
        return old(text).alias(name)

    return parse


def reader_parse(
    name: str, dtype: pl.DataType, number: int = 1
) -> Callable[[pl.Series], pl.Series]:
    """The CSV reader's own parse of a column of text as `dtype` (today's Date and Time)."""

    def parse(text: pl.Series) -> pl.Series:
        frame = text.alias(name).to_frame()
        # written back as CSV so that the reader sees each value as the file spelled it
        data = frame.write_csv(include_header=False, quote_style="necessary").encode()
        if not data:
            return pl.Series(name, [], dtype)
        try:
            read = pl.read_csv(
                io.BytesIO(data), has_header=False, new_columns=[name], schema={name: dtype}
            )
        except pl.exceptions.ComputeError as exc:
            # the column is the first here: say its `number` in the file, as the reader would
            msg = _COLUMN_NUMBER.sub(f" (column number {number})", str(exc).split("\n", 1)[0])
            raise pl.exceptions.ComputeError(msg) from exc
        return read.get_column(name)

    return parse

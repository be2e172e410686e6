"""Exact CSV types: inference may choose a type, never change a value.

Polars infers a column's type from the first `infer_schema_length` rows and then parses every
row as that type. Two of its choices change values silently: an integer column drops leading
zeros (`007` becomes 7: postal codes, account numbers), and a timestamp column keeps
microseconds (`…00.123456789` becomes `…00.123456`). So:

- in the inference sample, a column with a leading zero stays text, and a timestamp with
  digits past microseconds reads as nanoseconds;
- past the sample, such columns are read as text and cast by the engine with a guard: a value
  the inferred type would change fails the entity, naming the column and the value, and the
  fix is to pin the column's type (`schema_overrides`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import polars as pl
from polars.io.plugins import register_io_source

from blocks.homes._csv_dates import batch_parser, find_format

#: an integer spelled with a leading zero (`007`, `-01`): its text is not its number's
LEADING_ZERO = r"^[+-]?0[0-9]"
#: a nonzero digit past the sixth fraction digit: microseconds would cut it
PAST_MICROS = r"[.,][0-9]{6}[0-9]*[1-9]"
#: what a failed guard says after the value (the reader's error then carries it)
INT_GUARD = " (a leading zero, which an integer would drop)"
TIME_GUARD = " (digits past microseconds, which this timestamp column would cut)"


def exact_reads(
    inferred: pl.Schema, sample: pl.DataFrame, pinned: set[str], *, fast_dates: bool = False
) -> tuple[dict[str, pl.DataType], list[pl.Expr]]:
    """Columns to read as text, and the guarded casts that give them their inferred type.

    `inferred` is Polars' schema, `sample` the same rows read as text, `pinned` the columns the
    user typed with `schema_overrides` (left alone). With `fast_dates`, a timestamp column
    whose format the sample shows is parsed with it (`_csv_dates`), to the same values.
    """
    as_text: dict[str, pl.DataType] = {}
    casts: list[pl.Expr] = []
    for name, dtype in inferred.items():
        if name in pinned or name not in sample.columns:
            continue
        raw = sample.get_column(name)
        col = pl.col(name)
        if dtype.is_integer():
            as_text[name] = pl.String()
            if raw.str.contains(LEADING_ZERO).any():
                continue  # the sample shows codes, not numbers: the column stays text
            guarded = pl.when(col.str.contains(LEADING_ZERO)).then(col + INT_GUARD).otherwise(col)
            casts.append(guarded.cast(dtype, strict=True).alias(name))
        elif isinstance(dtype, pl.Datetime):
            as_text[name] = pl.String()
            fine = bool(raw.str.contains(r"[.,][0-9]{7}").any())
            unit: Literal["ns", "us"] = "ns" if fine else "us"
            zone = dtype.time_zone
            guard = pl.when(col.str.contains(PAST_MICROS)).then(col + TIME_GUARD).otherwise(col)
            if not fine:
                col = guard
            fmt = _sample_format(raw, unit, zone) if fast_dates else None
            if fmt is None:
                casts.append(
                    col.str.to_datetime(time_unit=unit, time_zone=zone, strict=True).alias(name)
                )
                continue
            typed = pl.Datetime(unit, zone)
            casts.append(
                pl.col(name).map_batches(
                    _fast_timestamps(name, fmt, typed, None if fine else guard),
                    return_dtype=typed,
                    is_elementwise=True,
                )
            )
    return as_text, casts


def _fast_timestamps(
    name: str, fmt: str, typed: pl.Datetime, guard: pl.Expr | None
) -> Callable[[pl.Series], pl.Series]:
    """A batch parsed with `fmt`, else as before: guarded, with the format inferred."""
    unit, zone = typed.time_unit, typed.time_zone

    def old(text: pl.Series) -> pl.Series:
        if guard is not None:
            text = text.to_frame().select(guard).to_series()
        return text.str.to_datetime(time_unit=unit, time_zone=zone, strict=True)

    # a format of at most six fraction digits cannot take the digits the guard looks for
    fixed = "%.f" not in fmt and "%9f" not in fmt
    if guard is None or fixed:
        return batch_parser(name, fmt, typed, old)
    return batch_parser(name, fmt, typed, old, lambda t: bool(t.str.contains(PAST_MICROS).any()))


def _sample_format(raw: pl.Series, unit: Literal["ns", "us"], zone: str | None) -> str | None:
    """The timestamp format giving the sample the values `str.to_datetime` gives it."""
    try:
        expected = raw.str.to_datetime(time_unit=unit, time_zone=zone, strict=True)
    except pl.exceptions.PolarsError:
        return None  # the sample holds finer digits than the unit: the guard reports them
    return find_format(raw, expected, pl.Datetime(unit, zone))


def guard_hint(text: str) -> str:
    """The fix, when a reader's error is one of the guards above."""
    # the first line lists the failing values; later lines print the expression, guard and all
    text = text.split("\n", 1)[0]
    if INT_GUARD in text:
        return (
            "; a column inferred as an integer from the first `infer_schema_length` rows holds "
            "this value later, which the integer would change: keep it as text with "
            "`schema_overrides: {column: String}`"
        )
    if TIME_GUARD in text:
        return (
            "; a timestamp column inferred from the first `infer_schema_length` rows holds "
            "finer digits later: read every row with `schema_overrides: {column: String}` (or "
            "raise `infer_schema_length` so the sample shows them and nanoseconds are kept)"
        )
    return ""


def cast_batches(text: pl.LazyFrame, casts: list[pl.Expr]) -> pl.LazyFrame:
    """`text` with the guarded casts applied batch by batch, as a scan Polars shapes further.

    Left in the lazy plan, the casts let Polars' streaming CSV reader run ahead of them and
    hold what it read: the peak grew with the file (1.3 GB at 10M rows, 1.9 GB at 30M; issue
    20). Pulled one batch at a time, the reader waits for the casts.
    """
    schema = text.with_columns(casts).collect_schema()
    named = {c.meta.output_name(): c for c in casts}

    def source(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        if n_rows == 0:
            return
        scan = text if with_columns is None else text.select(with_columns)
        if n_rows is not None and predicate is None:
            scan = scan.head(n_rows)  # read no further than asked: a later value cannot fail
        wanted = [c for n, c in named.items() if with_columns is None or n in with_columns]
        left = n_rows
        try:
            for frame in scan.collect_batches(chunk_size=batch_size):
                frame = frame.with_columns(wanted)
                if predicate is not None:
                    frame = frame.filter(predicate)
                if left is not None:
                    frame = frame.head(left)
                    left -= frame.height
                yield frame
                if left == 0:
                    return
        except pl.exceptions.PanicException as exc:
            # Polars drops a panic raised in a Python source and ends the scan as if it were
            # done: as an error it surfaces, and no row goes missing unnoticed
            raise pl.exceptions.ComputeError(str(exc)) from exc

    return register_io_source(source, schema=schema, explain_name="hygge-csv-casts")

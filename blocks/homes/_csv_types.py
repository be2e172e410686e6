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

from collections.abc import Iterator
from typing import Literal

import polars as pl
from polars.io.plugins import register_io_source

#: an integer spelled with a leading zero (`007`, `-01`): its text is not its number's
LEADING_ZERO = r"^[+-]?0[0-9]"
#: a nonzero digit past the sixth fraction digit: microseconds would cut it
PAST_MICROS = r"[.,][0-9]{6}[0-9]*[1-9]"
#: what a failed guard says after the value (the reader's error then carries it)
INT_GUARD = " (a leading zero, which an integer would drop)"
TIME_GUARD = " (digits past microseconds, which this timestamp column would cut)"


def exact_reads(
    inferred: pl.Schema, sample: pl.DataFrame, pinned: set[str]
) -> tuple[dict[str, pl.DataType], list[pl.Expr]]:
    """Columns to read as text, and the guarded casts that give them their inferred type.

    `inferred` is Polars' schema, `sample` the same rows read as text, `pinned` the columns the
    user typed with `schema_overrides` (left alone).
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
            if not fine:
                col = pl.when(col.str.contains(PAST_MICROS)).then(col + TIME_GUARD).otherwise(col)
            casts.append(
                col.str.to_datetime(time_unit=unit, time_zone=zone, strict=True).alias(name)
            )
    return as_text, casts


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

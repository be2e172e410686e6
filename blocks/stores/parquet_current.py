"""The current state of a Parquet Store table, which keeps a log of loads.

A Parquet lake cannot change a file once published, so it keeps every loaded version of a
row, and a run with `deletes: detect` writes the keys the source no longer has as tombstones:

    <entity>/part-<run_id>-00000.parquet              the rows each run loaded
    <entity>/_deletes/part-<run_id>-00000.parquet     the keys each run deleted (key columns)

Run ids begin with their UTC start time, so file names sort in load order. The table's
current state is, per key, the row of the latest run that loaded it, unless a run as late or
later deleted the key (a run's deletes come after its own rows). Readers of
`<entity>/*.parquet` never see the tombstones (a `_` folder), and see every version.

    from blocks.stores.parquet_current import current_view
    current_view("lake/orders", keys=["id"]).collect()
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from blocks.stores.parquet import TOMBSTONES

_RUN = "__hygge_run"
_GONE = "__hygge_gone_run"
_WHEN = "__hygge_gone_at"


def current_view(
    table: str | Path, keys: list[str], soft_column: str | None = None
) -> pl.LazyFrame:
    """One row per key, as the source held it at the last run: later versions replace
    earlier ones and deleted keys are left out, or, with `soft_column` (`deletes: soft`),
    kept with that column set to when the source lost them."""
    folder = Path(table)
    data = sorted(folder.glob("*.parquet"))
    if not data:
        msg = f"{str(folder)!r} holds no Parquet files of a hygge table"
        raise FileNotFoundError(msg)
    rows = _with_run(pl.scan_parquet(data, include_file_paths=_RUN))
    latest = rows.sort(_RUN, maintain_order=True).unique(subset=keys, keep="last")
    tombstones = sorted((folder / TOMBSTONES).glob("*.parquet"))
    if not tombstones:
        return latest.drop(_RUN)
    marks = _with_run(pl.scan_parquet(tombstones, include_file_paths=_RUN))
    if soft_column is None:
        gone = marks.group_by(keys).agg(pl.col(_RUN).max().alias(_GONE))
        latest = latest.join(gone, on=keys, how="left", nulls_equal=True)
        return latest.filter(pl.col(_GONE).is_null() | (pl.col(_GONE) < pl.col(_RUN))).drop(
            _GONE, _RUN
        )
    # soft: the latest tombstone per key, applied when it is as late as the row or later
    gone = (
        marks.sort(_RUN)
        .group_by(keys)
        .agg(pl.col(_RUN).last().alias(_GONE), pl.col(soft_column).last().alias(_WHEN))
    )
    deleted = pl.col(_GONE).is_not_null() & (pl.col(_GONE) >= pl.col(_RUN))
    latest = latest.join(gone, on=keys, how="left", nulls_equal=True).with_columns(
        pl.when(deleted).then(pl.col(_WHEN)).otherwise(pl.col(soft_column)).alias(soft_column)
    )
    return latest.drop(_GONE, _WHEN, _RUN)


def _with_run(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The run id of each row, from its file's name (`part-<run_id>-<n>.parquet`)."""
    name = pl.col(_RUN).str.extract(r"part-(.+)-\d{5}\.parquet$")
    return frame.with_columns(name.alias(_RUN))

"""A run's upserts and deletes as one Delta MERGE, kept to the table files that can hold them.

The source is the run's batch after de-duplication by key (the version with the highest
watermark wins, ties going to the row staged last), which Polars computes over the staged
files; it is bounded by the run, never by the table. Deletes arrive as staged Parquet files of
the key columns only. They join the source as rows carrying a hidden flag (`_FLAG`): a matched
flagged row deletes, a matched plain row updates, an unmatched plain row inserts, an unmatched
flagged row does nothing. A key both changed and deleted in one run is deleted (the delete
wins), so the run's upserts and deletes are one commit.

Memory: delta-rs's merge joins the source with every target file its predicate cannot rule out,
and rewrites each file that holds a matched key; its memory grows with the files it rewrites,
so the Store writes files of 1M rows (`max_rows_per_file`). The predicate carries the source's
key range (`t.k >= low AND t.k <= high` for integer and text keys) when the table's `add`
statistics show that range rules out a file: delta-rs then skips those files before it reads
any, and a run whose keys sit in a few files reads and rewrites those only. A range that rules
out nothing is left out, as it slows the merge down (`bench/RESULTS.md` has the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, WriterProperties

_ROW = "__hygge_row"
#: the source's delete flag: never a table column (`except_cols`)
_FLAG = "__hygge_delete"


def latest_per_key(files: Sequence[Path], keys: list[str], order: list[str]) -> pa.Table:
    """The run's rows with one row per key: the highest `order` (a COALESCE of the watermark
    columns) wins; equal or NULL watermarks go to the row staged last, so reruns agree."""
    schema = ds.dataset([str(f) for f in files], format="parquet").schema
    lf = pl.scan_parquet([str(f) for f in files]).with_row_index(_ROW)
    rank = [pl.coalesce([pl.col(c) for c in order]), pl.col(_ROW)] if order else [pl.col(_ROW)]
    lf = lf.sort(rank, nulls_last=False).unique(subset=keys, keep="last", maintain_order=True)
    table = lf.drop(_ROW).collect().to_arrow()
    return table.cast(schema)


def delete_keys(
    files: Sequence[Path], keys: list[str], schema: pa.Schema, soft: str | None = None
) -> pa.Table:
    """The distinct keys of the run's delete files, in the types of the changed rows; with
    `soft`, each with the time the source lost it (the soft-delete column)."""
    names = [*keys, soft] if soft else keys
    types = pa.schema([schema.field(k) for k in names])
    if not files:
        return types.empty_table()
    lf = pl.scan_parquet([str(f) for f in files]).select(names)
    frame = lf.unique(subset=keys, keep="last", maintain_order=True).collect()
    return frame.to_arrow().select(names).cast(types)


def merge_source(changes: pa.Table, deletes: pa.Table, keys: list[str]) -> pa.Table:
    """Changes not deleted (flag false), then the delete keys (flag true), as one table."""
    upserts = _without(changes, deletes, keys)
    upserts = upserts.append_column(_FLAG, pa.repeat(False, upserts.num_rows))
    columns = {
        f.name: deletes.column(f.name)
        if f.name in deletes.column_names
        else pa.nulls(deletes.num_rows, f.type)
        for f in changes.schema
    }
    flagged = pa.table({**columns, _FLAG: pa.repeat(True, deletes.num_rows)})
    return pa.concat_tables([upserts, flagged.cast(upserts.schema)])


def surviving(
    changes: pa.Table, deletes: pa.Table, keys: list[str], soft: str | None = None
) -> pa.Table:
    """A new table's first rows: the changes whose keys are not deleted, or with `soft` every
    change, those whose keys were deleted marked with when."""
    if not deletes.num_rows:
        return changes
    if soft is None:
        return _without(changes, deletes, keys)
    marked = pl.DataFrame(changes).drop(soft).join(pl.DataFrame(deletes), on=keys, how="left")
    return marked.to_arrow().select(changes.column_names).cast(changes.schema)


def _without(changes: pa.Table, deletes: pa.Table, keys: list[str]) -> pa.Table:
    rows, gone = pl.DataFrame(changes), pl.DataFrame(deletes)
    return rows.join(gone, on=keys, how="anti").to_arrow().cast(changes.schema)


def merge_predicate(
    keys: list[str], source: pa.Table | None = None, files: pa.Table | None = None
) -> str:
    """`t.k = s.k` for each key, and the source's range of each integer or text key, so the
    merge reads only the table files whose statistics can hold the run's keys.

    Given the table's `files` (`get_add_actions(flatten=True)`), a range is added only when
    it rules out at least one of them: a range that prunes nothing still costs the merge
    (10M rows, keys spread over every file: 25 s and 0.8 GB with it, 15 s and 0.6 GB without).
    """
    predicate = " AND ".join(f"t.{_quoted(k)} = s.{_quoted(k)}" for k in keys)
    if source is None or not source.num_rows:
        return predicate
    ranges = []
    for key in keys:
        bounds = _bounds(source.column(key))
        if bounds is not None and (files is None or _prunes(files, key, source.column(key))):
            target = f"t.{_quoted(key)}"
            ranges.append(f"{target} >= {bounds[0]} AND {target} <= {bounds[1]}")
    return " AND ".join([*ranges, predicate])


def _prunes(files: pa.Table, key: str, column: pa.ChunkedArray) -> bool:
    """Whether some file's statistics put all its `key` values outside the column's range."""
    names = files.column_names
    if f"min.{key}" not in names or f"max.{key}" not in names:
        return False  # no statistics: delta-rs could skip nothing by the range either
    found = pc.min_max(column)
    low, high = found["min"], found["max"]
    try:
        below = pc.less(files.column(f"max.{key}"), low)
        above = pc.greater(files.column(f"min.{key}"), high)
    except pa.ArrowNotImplementedError:
        return True  # bounds of another type than the column's: leave the range in
    outside = pc.fill_null(pc.or_(below, above), False)
    return bool(pc.any(outside).as_py())


def _bounds(column: pa.ChunkedArray) -> tuple[str, str] | None:
    if column.null_count == len(column):
        return None
    kind = column.type
    if pa.types.is_integer(kind):
        found = pc.min_max(column)
        return str(int(found["min"].as_py())), str(int(found["max"].as_py()))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        found = pc.min_max(column)
        return _text(found["min"].as_py()), _text(found["max"].as_py())
    return None


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def merge_run(
    table: DeltaTable,
    changes: pa.Table,
    deletes: pa.Table,
    keys: list[str],
    *,
    add_columns: bool,
    props: CommitProperties,
    writer: WriterProperties,
    soft: str | None = None,
) -> dict[str, Any]:
    """Upsert `changes` and delete `deletes` by `keys`, in one commit; the merge's metrics.
    With `soft`, a deleted key's row stays, with that column set to when it went."""
    # without deletes, the plain upsert: no flag column at all
    source = merge_source(changes, deletes, keys) if deletes.num_rows else changes
    files = pa.table(table.get_add_actions(flatten=True))
    merger = table.merge(
        source,
        predicate=merge_predicate(keys, source, files),
        source_alias="s",
        target_alias="t",
        merge_schema=add_columns,
        writer_properties=writer,
        commit_properties=props,
    )
    if deletes.num_rows:
        flag, hidden = f"s.{_FLAG}", [_FLAG]
        if soft:
            when = {_quoted(soft): f"s.{_quoted(soft)}"}
            merger = merger.when_matched_update(updates=when, predicate=flag)
        else:
            merger = merger.when_matched_delete(predicate=flag)
        merger = merger.when_matched_update_all(
            predicate=f"NOT {flag}", except_cols=hidden
        ).when_not_matched_insert_all(predicate=f"NOT {flag}", except_cols=hidden)
    else:
        merger = merger.when_matched_update_all().when_not_matched_insert_all()
    metrics: dict[str, Any] = merger.execute()
    return metrics

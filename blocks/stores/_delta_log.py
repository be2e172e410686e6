"""One run as one Delta commit: overwrite, append or merge from the run's staged Parquet files.

Every commit carries the run in two places: an application transaction
(`Transaction("hygge", n)`, the table's n-th hygge commit, read back with
`DeltaTable.transaction_version`) and the commit's custom metadata (`hygge.run_id`,
`hygge.txn`). A manifest records the `n` its run was prepared with; `committed` answers
whether that commit exists, so a publish repeated after a crash is recognised and skipped.

The staged files are read as a stream (`pyarrow.dataset`), never the whole table at once. A
merge's source is the run's batch after de-duplication by key (the version with the highest
watermark wins, ties going to the row read last), which Polars computes over the staged files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake

#: the application id of hygge's transactions in every table it writes
APP_ID = "hygge"
RUN_KEY = "hygge.run_id"
TXN_KEY = "hygge.txn"
_ROW = "__hygge_row"
_GONE = "__hygge_deleted"

DeltaKind = Literal["overwrite", "append", "merge"]


def next_txn(uri: str, options: dict[str, str] | None) -> int:
    """The transaction number the table's next hygge commit takes."""
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return 1
    return (DeltaTable(uri, storage_options=options).transaction_version(APP_ID) or 0) + 1


def committed(uri: str, options: dict[str, str] | None, run_id: str, txn: int) -> bool:
    """Whether the table holds the commit of run `run_id`, prepared as transaction `txn`."""
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return False
    table = DeltaTable(uri, storage_options=options)
    latest = table.transaction_version(APP_ID)
    if latest is None or latest < txn:
        return False  # the common case, read from the snapshot: no commit history is read
    # transaction `txn` exists: it is this run's unless a run prepared after this one took it
    for commit in table.history():
        if str(commit.get(TXN_KEY)) == str(txn):
            return commit.get(RUN_KEY) == run_id
    # the commit's log entry has expired: only this run can have taken its number, since runs
    # are serialised by the Store lock and recovery settles a prepared run before the next
    return True


def commit_properties(run_id: str, txn: int, entity: str) -> CommitProperties:
    meta = {RUN_KEY: run_id, TXN_KEY: str(txn), "hygge.entity": entity}
    return CommitProperties(custom_metadata=meta, app_transactions=[Transaction(APP_ID, txn)])


def staged_reader(files: Sequence[Path], batch_rows: int = 131_072) -> pa.RecordBatchReader:
    """The staged files as one stream of batches, in staging order."""
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    return dataset.scanner(batch_size=batch_rows).to_reader()


def latest_per_key(files: Sequence[Path], keys: list[str], order: list[str]) -> pa.Table:
    """The run's rows with one row per key: the highest `order` (a COALESCE of the watermark
    columns) wins; equal or NULL watermarks go to the row staged last, so reruns agree."""
    schema = ds.dataset([str(f) for f in files], format="parquet").schema
    lf = pl.scan_parquet([str(f) for f in files]).with_row_index(_ROW)
    rank = [pl.coalesce([pl.col(c) for c in order]), pl.col(_ROW)] if order else [pl.col(_ROW)]
    lf = lf.sort(rank, nulls_last=False).unique(subset=keys, keep="last", maintain_order=True)
    # the merge source is the run's changed rows (bounded by the run), not the table
    table = lf.drop(_ROW).collect().to_arrow()
    return table.cast(schema)


def merge_predicate(keys: list[str], source: pa.Table | None = None) -> str:
    """`t.k = s.k` for each key; with one integer key, also the source's key range, so the
    merge reads only the table files whose statistics can hold the run's keys."""
    predicate = " AND ".join(f"t.{_quoted(k)} = s.{_quoted(k)}" for k in keys)
    if source is None or len(keys) != 1 or not source.num_rows:
        return predicate
    column = source.column(keys[0])
    if not pa.types.is_integer(column.type) or column.null_count == source.num_rows:
        return predicate
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    key = f"t.{_quoted(keys[0])}"
    return f"{key} >= {int(low)} AND {key} <= {int(high)} AND {predicate}"


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def write_run(
    uri: str,
    options: dict[str, str] | None,
    kind: DeltaKind,
    files: Sequence[Path],
    *,
    deletes: Sequence[Path] = (),
    add_columns: bool,
    keys: list[str],
    order: list[str],
    props: CommitProperties,
    writer: WriterProperties,
    name: str,
    description: str,
) -> dict[str, Any]:
    """Apply one staged run to the table in one commit; the commit's metrics."""
    exists = DeltaTable.is_deltatable(uri, storage_options=options)
    if kind == "merge" and exists:
        table = DeltaTable(uri, storage_options=options)
        target = pa.schema(table.schema().to_arrow())
        parts = []
        if files:
            changed = latest_per_key(files, keys, order)
            parts.append(changed.append_column(_GONE, pa.repeat(False, changed.num_rows)))
        if deletes:
            gone = ds.dataset([str(f) for f in deletes], format="parquet").to_table()
            cols = {
                f.name: (gone.column(f.name) if f.name in keys else pa.nulls(gone.num_rows, f.type))
                for f in (parts[0].schema if parts else target)
                if f.name != _GONE
            }
            gone = pa.table(cols).append_column(_GONE, pa.repeat(True, gone.num_rows))
            if parts:
                gone = gone.cast(parts[0].schema)
            parts.append(gone)
        source = pa.concat_tables(parts).combine_chunks()
        merger = table.merge(
            source,
            predicate=merge_predicate(keys, source),
            source_alias="s",
            target_alias="t",
            merge_schema=add_columns,
            writer_properties=writer,
            commit_properties=props,
        )
        flag = f"s.{_quoted(_GONE)}"
        metrics: dict[str, Any] = (
            merger.when_matched_delete(predicate=flag)
            .when_matched_update_all(predicate=f"NOT {flag}", except_cols=[_GONE])
            .when_not_matched_insert_all(predicate=f"NOT {flag}", except_cols=[_GONE])
            .execute()
        )
        return metrics
    if kind == "merge":
        # a table's first rows: the de-duplicated batch, written as the new table
        data: Any = latest_per_key(files, keys, order)
    else:
        data = staged_reader(files)
    common: dict[str, Any] = {
        "name": name,
        "description": description,
        "storage_options": options,
        "writer_properties": writer,
        "commit_properties": props,
    }
    if kind == "append" and exists:
        write_deltalake(
            uri, data, mode="append", schema_mode="merge" if add_columns else None, **common
        )
    else:
        # a replace takes the source's schema as it is now (full_drop, drift evolve)
        schema_mode: Literal["overwrite"] | None = "overwrite" if exists else None
        write_deltalake(uri, data, mode="overwrite", schema_mode=schema_mode, **common)
    return {}

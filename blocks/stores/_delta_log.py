"""One run as one Delta commit: overwrite, append or merge from the run's staged Parquet files.

Every commit carries the run in two places: an application transaction
(`Transaction("hygge", n)`, the table's n-th hygge commit, read back with
`DeltaTable.transaction_version`) and the commit's custom metadata (`hygge.run_id`,
`hygge.txn`). A manifest records the `n` its run was prepared with; `committed` answers
whether that commit exists, so a publish repeated after a crash is recognised and skipped.

An append or an overwrite commits the run's files where they lie in the table's folder
(`_delta_files`): they were encoded once, by the Store's writer, and are invisible to every
reader until this commit names them. A merge reads the staged files as its source
(`_delta_merge`); so does an append that adds columns, rewritten by `write_deltalake` with a
schema merge (`create_write_transaction` does not change a table's schema on append).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import (
    CommitProperties,
    DeltaTable,
    Schema,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from blocks.stores._delta_files import add_actions, file_schema
from blocks.stores._delta_merge import delete_keys, latest_per_key, merge_run, surviving

#: the application id of hygge's transactions in every table it writes
APP_ID = "hygge"
RUN_KEY = "hygge.run_id"
TXN_KEY = "hygge.txn"

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


def in_place(kind: DeltaKind, add_columns: bool) -> bool:
    """Whether a run's files are committed where they lie in the table's folder (an append or
    an overwrite), rather than read as a merge's source or rewritten by a schema merge."""
    return kind == "overwrite" or (kind == "append" and not add_columns)


def staged_reader(files: Sequence[Path], batch_rows: int = 131_072) -> pa.RecordBatchReader:
    """The staged files as one stream of batches, in staging order."""
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    return dataset.scanner(batch_size=batch_rows).to_reader()


def write_run(
    uri: str,
    options: dict[str, str] | None,
    kind: DeltaKind,
    files: Sequence[Path],
    *,
    add_columns: bool,
    keys: list[str],
    order: list[str],
    props: CommitProperties,
    writer: WriterProperties,
    name: str,
    description: str,
    deletes: Sequence[Path] = (),
    soft: str | None = None,
    local: bool = True,
) -> dict[str, Any]:
    """Apply one run to the table in one commit; the commit's metrics (a merge's).

    `files` are the run's data files: for an `in_place` run they lie in the table's folder
    (under names no commit has used), otherwise anywhere. `deletes` (a merge's only) are
    Parquet files of the key columns whose rows the same commit deletes; a key both changed
    and deleted in the run is deleted. With `soft` (the soft-delete column, which `deletes`
    then carry beside the keys) the rows stay, that column set to when they went. `local`:
    the table is on local disk, where the run's files can be moved into its folder; a remote
    table is written from the files (`files` then lie in the local spool).
    """
    if deletes and kind != "merge":
        msg = f"deletes by key need a merge (keys), not a Delta {kind}"
        raise ValueError(msg)
    exists = DeltaTable.is_deltatable(uri, storage_options=options)
    if kind == "merge":
        if files:
            changes = latest_per_key(files, keys, order)
        elif exists:  # a run of deletes only
            table_schema = DeltaTable(uri, storage_options=options).schema().to_arrow()
            changes = pa.schema(table_schema).empty_table()  # type: ignore[arg-type]
        else:
            return {}  # nothing to delete from, nothing to write
        gone = delete_keys(deletes, keys, changes.schema, soft)
        if exists:
            table = DeltaTable(uri, storage_options=options)
            return merge_run(
                table,
                changes,
                gone,
                keys,
                add_columns=add_columns,
                props=props,
                writer=writer,
                soft=soft,
            )
        # a table's first rows: the de-duplicated batch, less its deletes, as the new table
        data: Any = surviving(changes, gone, keys, soft)
    elif (
        local
        and files
        and in_place(kind, add_columns)
        and _fits_protocol(uri, options, files[0], exists)
    ):
        commit_in_place(uri, options, kind, files, exists, props, name, description)
        return {}
    else:
        # delta-rs's writer also raises the protocol in the same commit when the new schema
        # needs it (naive timestamps on a table without `timestampNtz`)
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
    if local and kind != "merge" and in_place(kind, add_columns):
        for placed in files:  # rewritten above: no version names the run's own files
            placed.unlink(missing_ok=True)
    return {}


def _fits_protocol(uri: str, options: dict[str, str] | None, sample: Path, exists: bool) -> bool:
    """Whether the table's protocol takes the run's files as they are: a commit of `add`
    actions does not add the `timestampNtz` feature that naive timestamps need."""
    naive = any(pa.types.is_timestamp(f.type) and f.type.tz is None for f in file_schema(sample))
    if not naive or not exists:
        return True  # a new table gets the features its schema needs
    protocol = DeltaTable(uri, storage_options=options).protocol()
    return "timestampNtz" in (protocol.writer_features or [])


def commit_in_place(
    uri: str,
    options: dict[str, str] | None,
    kind: DeltaKind,
    files: Sequence[Path],
    exists: bool,
    props: CommitProperties,
    name: str,
    description: str,
) -> None:
    """Commit files already in the table's folder: an append, or an overwrite that removes
    every file of the current version (and takes the files' schema)."""
    actions = add_actions(files)
    schema = Schema.from_arrow(file_schema(files[0]))
    if exists:
        mode = "overwrite" if kind == "overwrite" else "append"
        table = DeltaTable(uri, storage_options=options)
        both: list[AddAction | RemoveAction] = [*actions]
        table.create_write_transaction(both, mode, schema, commit_properties=props)
        return
    create_table_with_add_actions(
        uri,
        schema,
        actions,
        mode="error",
        name=name,
        description=description,
        storage_options=options,
        commit_properties=props,
    )

"""New files only (`incremental: files`): each run loads the files no run has loaded yet.

A folder that receives a new export every night is a file Home's usual shape. The ledger entry
remembers the files loaded so far (`files`: each file's path, size and modification time), and
each run lists the entity's files and reads only those not in it. A file counts as loaded
only once its rows are committed: the set moves with the ledger entry, so a run killed before
its commit loads the same files again, once.

A file that is in the set but has changed since (another size or modification time, or
another ETag where the object store gives one) is
refused by default (`changed_files: fail`), since loading it again would repeat its rows in a
Store that appends; `changed_files: reload` reads it again, for a Store that merges by key.
Files gone from the folder drop out of the set, so it stays as large as the folder.

The set is kept inline in the ledger up to `INLINE_LIMIT` files; a larger one is a Parquet
object in the Store's state area (`<run_id>.files.parquet`, swept with its run like the
boundary sets of `hygge_tasks.boundary_spill`), and the ledger keeps its name, count and
SHA-256, checked before it is trusted.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from blocks.base import SourceFile, StoreBlock
from blocks.stores.protocol import PublishingStore
from hygge_core.errors import ConfigError, HomeError, LedgerError

#: files kept in the ledger itself; more go to the Store's state area
INLINE_LIMIT = 1_000
_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("etag", pa.string())]
)


@dataclass(frozen=True)
class Selection:
    """What a run reads and what the ledger holds after it commits."""

    #: the files to read, in name order (empty: nothing new)
    read: list[SourceFile]
    #: the set after this run: the files still present that were or are now loaded
    loaded: list[SourceFile]
    #: files read again because they changed (`changed_files: reload`)
    reloaded: int = 0


def select(
    entity: str,
    listing: list[SourceFile] | None,
    previous: list[SourceFile] | None,
    changed_files: str,
) -> Selection:
    """The files to read this run, from the folder's listing and the set loaded before."""
    if listing is None:
        msg = (
            "`incremental: files` loads only the files no run has loaded yet, which only file "
            "Homes (parquet, csv, json) have; use a `watermark` for a database table"
        )
        raise ConfigError(msg, entity=entity)
    if previous is None:
        return Selection(read=listing, loaded=listing)  # a first load reads every file
    known = {f.path: f for f in previous}
    new = [f for f in listing if f.path not in known]
    changed = [f for f in listing if f.path in known and _differs(f, known[f.path])]
    if changed and changed_files != "reload":
        first = changed[0]
        was = known[first.path]
        msg = (
            f"{len(changed):,} file(s) changed since they were loaded, e.g. {first.path!r} "
            f"({was.size:,} bytes then, {first.size:,} now); loading them again would repeat "
            "their rows, so nothing was loaded. Restore the file, set `changed_files: reload` "
            "(for a Store that merges by key), or run the entity with --full-drop"
        )
        raise HomeError(msg, entity=entity)
    read = sorted([*new, *changed], key=lambda f: f.path)
    return Selection(read=read, loaded=listing, reloaded=len(changed))


def _differs(now: SourceFile, then: SourceFile) -> bool:
    if now.etag is not None and then.etag is not None:
        return now.size != then.size or now.etag != then.etag
    return now.size != then.size or now.mtime_ns != then.mtime_ns


# -- the ledger's form ---------------------------------------------------------------------------


def state_name(run_id: str) -> str:
    return f"{run_id}.files.parquet"


def to_ledger(
    store: StoreBlock, entity: str, run_id: str, files: list[SourceFile]
) -> dict[str, Any]:
    """The set as the ledger keeps it: inline when small, else a checked state object."""
    if len(files) <= INLINE_LIMIT or not isinstance(store, PublishingStore):
        # an object's ETag rides as a fourth item; a local file's entry stays three long
        return {"loaded": [_entry(f) for f in files]}
    table = pa.table(
        {
            "path": [f.path for f in files],
            "size": [f.size for f in files],
            "mtime_ns": [f.mtime_ns for f in files],
            "etag": [f.etag for f in files],
        },
        schema=_SCHEMA,
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    name = state_name(run_id)
    store.put_state(entity, name, data)
    return {"ref": {"name": name, "count": len(files), "sha256": hashlib.sha256(data).hexdigest()}}


def from_ledger(
    store: StoreBlock, entity: str, files: dict[str, Any] | None
) -> list[SourceFile] | None:
    """The set the ledger holds (None: no run has recorded one)."""
    if files is None:
        return None
    if "loaded" in files:
        return [
            SourceFile(str(e[0]), int(e[1]), int(e[2]), str(e[3]) if len(e) > 3 else None)
            for e in files["loaded"]
        ]
    ref = files["ref"]
    fix = "run this entity with --full-drop to load every file again and start a new set"
    data = store.get_state(entity, ref["name"]) if isinstance(store, PublishingStore) else None
    if data is None:
        msg = (
            f"the ledger's set of loaded files is kept in the Store as {ref['name']!r}, "
            f"which is missing; {fix}"
        )
        raise LedgerError(msg, entity=entity)
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        msg = (
            f"the Store's set of loaded files {ref['name']!r} is not the one the ledger "
            f"recorded; {fix}"
        )
        raise LedgerError(msg, entity=entity)
    table = pq.read_table(io.BytesIO(data))
    etags = table["etag"].to_pylist() if "etag" in table.column_names else [None] * len(table)
    return [
        SourceFile(p, s, m, e)
        for p, s, m, e in zip(
            table["path"].to_pylist(),
            table["size"].to_pylist(),
            table["mtime_ns"].to_pylist(),
            etags,
            strict=True,
        )
    ]


def _entry(f: SourceFile) -> list[Any]:
    return [f.path, f.size, f.mtime_ns] if f.etag is None else [f.path, f.size, f.mtime_ns, f.etag]

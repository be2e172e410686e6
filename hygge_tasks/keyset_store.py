"""A run's key set in the Store's state area, streamed in and out and checked on the way back.

The key set `hygge_tasks.keyset.diff_keys` writes (one Parquet file, 100+ MB at 10M keys) is
kept as the state object `<run_id>.keys.parquet` (`PublishingStore.put_state_file`: a copy and
an atomic rename on local Stores, a block-list commit on blob Stores), and the ledger entry
keeps its ref, `{name, count, sha256}`, like `boundary_spill`'s. Named after its run, the
object is kept or removed with that run's manifest by recovery's state sweep, so the set the
ledger points at (the newest committed run's) is always there.

`fetch_keyset` copies it back into a local work folder and checks its SHA-256 before a single
key is trusted: a missing or changed set cannot tell which rows the destination holds, so it
fails the entity with the fix (`--full-drop`, which reloads the table and starts a new set)
rather than deleting on a guess.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from blocks.base import StoreBlock
from blocks.stores.protocol import PublishingStore
from hygge_core.errors import ConfigError, LedgerError

_CHUNK = 1 << 20
_FIX = (
    "it lists the keys the destination holds, without which deletes at the source cannot be "
    "found; run this entity with --full-drop to reload it and start a new key set"
)


def state_name(run_id: str) -> str:
    """The state object of a run's key set (`<run_id>.` prefix: recovery's sweep key)."""
    return f"{run_id}.keys.parquet"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _state_store(store: StoreBlock, entity: str) -> PublishingStore:
    if not isinstance(store, PublishingStore):
        msg = (
            f"`deletes: detect` keeps the destination's key set in the Store's state area, and "
            f"{type(store).__name__} has none; use a Store that publishes through run manifests "
            "(every hygge Store does) or drop `deletes` for this entity"
        )
        raise ConfigError(msg, entity=entity)
    return store


def store_keyset(store: StoreBlock, entity: str, run_id: str, path: Path) -> dict[str, Any]:
    """Keep the key-set file `path` as this run's state object; its ref for the ledger."""
    target = _state_store(store, entity)
    name = state_name(run_id)
    ref = {
        "name": name,
        "count": pq.ParquetFile(path).metadata.num_rows,
        "sha256": file_sha256(path),
    }
    with target.translated("cannot keep the key set in the Store", entity):
        target.put_state_file(entity, name, path)
    return ref


def fetch_keyset(store: StoreBlock, entity: str, ref: dict[str, Any], workdir: Path) -> Path:
    """The key set `ref` names, copied into `workdir` and checked against its SHA-256."""
    target = _state_store(store, entity)
    name = ref["name"]
    workdir.mkdir(parents=True, exist_ok=True)
    dest = workdir / Path(name).name
    with target.translated("cannot read the key set from the Store", entity):
        found = target.get_state_file(entity, name, dest)
    if not found:
        msg = (
            f"the ledger's key set ({ref['count']:,} keys) is kept in the Store as {name!r}, "
            f"which is missing; {_FIX}"
        )
        raise LedgerError(msg, entity=entity)
    if file_sha256(dest) != ref["sha256"]:
        dest.unlink(missing_ok=True)
        msg = (
            f"the Store's key set {name!r} is not the one the ledger recorded (its SHA-256 "
            f"differs: changed or damaged since); {_FIX}"
        )
        raise LedgerError(msg, entity=entity)
    return dest

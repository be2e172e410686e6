"""PROVISIONAL stand-in (replaced by the keyset branch): key sets in the Store's state area."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from blocks.base import StoreBlock
from blocks.stores.protocol import PublishingStore
from hygge_core.errors import LedgerError


def state_name(run_id: str) -> str:
    return f"{run_id}.keys.parquet"


def store_keyset(store: StoreBlock, entity: str, run_id: str, path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    count = pq.read_metadata(path).num_rows
    assert isinstance(store, PublishingStore)
    data = path.read_bytes()
    name = state_name(run_id)
    store.put_state(entity, name, data)
    return {"name": name, "count": count, "sha256": hashlib.sha256(data).hexdigest()}


def fetch_keyset(store: StoreBlock, entity: str, ref: dict[str, Any], workdir: Path) -> Path:
    assert isinstance(store, PublishingStore)
    data = store.get_state(entity, ref["name"])
    if data is None or hashlib.sha256(data).hexdigest() != ref["sha256"]:
        msg = f"key set {ref['name']!r} missing or changed; run --full-drop"
        raise LedgerError(msg, entity=entity)
    path = workdir / "previous.keys.parquet"
    path.write_bytes(data)
    return path

"""Large boundary sets live beside the data, with only a digest in the ledger.

A date-granular watermark with a million rows per day would otherwise put a million identities
into the ledger block on every run (dlt#4030 and #2580 show such state taking down every
pipeline that shares it). Above `INLINE_LIMIT` identities the set is written as a small Parquet
object into the Store's state area (`PublishingStore.put_state`, named after the run that wrote
it), and the ledger keeps `boundary_ref`: the object's name, the identity count and the SHA-256
of its bytes. The next run reads it back and checks both before it trusts a single identity.

The object is written before the run's manifest is prepared, so it exists whenever the ledger
can point at it; recovery deletes the objects of runs that no kept manifest names
(`blocks.stores.protocol`), and the newest committed manifest, whose entry the ledger holds, is
always kept.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from blocks.base import StoreBlock
from blocks.stores.protocol import PublishingStore
from hygge_core.errors import LedgerError

#: identities kept in the ledger itself; a larger set is spilled to the Store
INLINE_LIMIT = 1_000
_COLUMN = "identity"


def state_name(run_id: str) -> str:
    """The state object of a run's boundary set (`<run_id>.` prefix: recovery's sweep key)."""
    return f"{run_id}.boundary.parquet"


def spill(
    store: StoreBlock, entity: str, run_id: str, watermark: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The ledger form of `watermark`: a large boundary set moves to the Store's state area."""
    if watermark is None or len(watermark.get("boundary", [])) <= INLINE_LIMIT:
        return watermark
    if not isinstance(store, PublishingStore):
        return watermark  # a Store without a state area keeps the set inline, as before
    identities = sorted(watermark["boundary"])
    buf = io.BytesIO()
    table = pa.table({_COLUMN: pa.array(identities, pa.large_string())})
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    name = state_name(run_id)
    store.put_state(entity, name, data)
    ref = {"name": name, "count": len(identities), "sha256": hashlib.sha256(data).hexdigest()}
    return {**watermark, "boundary": [], "boundary_ref": ref}


def restore(
    store: StoreBlock, entity: str, watermark: dict[str, Any] | None
) -> dict[str, Any] | None:
    """`watermark` with a spilled boundary set read back from the Store, checked."""
    if watermark is None or "boundary_ref" not in watermark:
        return watermark
    ref = watermark["boundary_ref"]
    fix = (
        "it holds the rows already loaded at the watermark, without which they would load "
        "again; run this entity with --full-drop to reload it and start a new watermark"
    )
    data = store.get_state(entity, ref["name"]) if isinstance(store, PublishingStore) else None
    if data is None:
        msg = (
            f"the ledger's boundary set ({ref['count']:,} rows at the watermark) is kept in the "
            f"Store as {ref['name']!r}, which is missing; {fix}"
        )
        raise LedgerError(msg, entity=entity)
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        msg = (
            f"the Store's boundary set {ref['name']!r} is not the one the ledger recorded (its "
            f"SHA-256 differs: changed or damaged since); {fix}"
        )
        raise LedgerError(msg, entity=entity)
    identities = pq.read_table(io.BytesIO(data)).column(_COLUMN).to_pylist()
    restored = {k: v for k, v in watermark.items() if k != "boundary_ref"}
    return {**restored, "boundary": identities}

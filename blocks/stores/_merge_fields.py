"""The settings of a Store that upserts by key (Delta, SQLite): which columns, which version.

One definition for both Stores, so their blocks describe the two settings alike.
"""

from __future__ import annotations

from pydantic import Field

MERGE_KEYS = Field(
    default=None,
    description="Columns an incremental load merges by; empty takes the entity's "
    "watermark `keys` (no keys: incremental loads append).",
)
MERGE_ORDER = Field(
    default=None,
    description="Columns whose highest value (first non-NULL) wins when a run holds "
    "several versions of a key; empty takes the entity's watermark column(s).",
)


def merges_by(merge_keys: list[str] | None, keys: list[str]) -> bool:
    """Whether a Store with `merge_keys` upserts an entity whose watermark keys are `keys`."""
    return bool(keys) and (merge_keys or keys) == keys

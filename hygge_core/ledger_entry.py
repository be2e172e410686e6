"""One entity's entry in the watermark ledger, typed.

The move builds an entry, the Store's manifest carries it as JSON until the data is
published, and the parent flow saves it in the ledger block; planning, recovery, the journal
and the dry run read it back. The ledger block keeps entries as JSON (`to_json`), so a ledger
saved by any earlier hygge reads as it always did:

- `watermark` is the watermark's own JSON (`hygge_tasks.watermark.Watermark.to_json`): column,
  kind, value and boundary keys. It is opaque here, so the watermark's format can grow without
  this file knowing; only its `column` and `value` are read for reports.
- `schema` (`hygge_tasks.drift.remember`), `identity` (`flows.plan.identity`), `keyset` and
  `deleted` (`deletes: detect`), `files` (`incremental: files`) and `changes` (`changes:
  change_tracking`) came later: an entry written before them has none of them, and reads
  with `None`.
- keys this version does not know are kept as read (`extra`) and written back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from hygge_core.errors import LedgerError

#: the keys an entry holds, in the order the move writes them
_OPTIONAL = (
    "run_id",
    "rows",
    "mode",
    "committed_at",
    "schema",
    "identity",
    "keyset",
    "deleted",
    "files",
    "changes",
)


@dataclass(frozen=True)
class LedgerEntry:
    """How far one entity has been loaded, and by which run, from which source."""

    #: `Watermark.to_json()`, or None for an entity loaded without a watermark
    watermark: dict[str, Any] | None = None
    #: the attempt that committed it (`<flow run id>-<4 hex>`)
    run_id: str | None = None
    #: the rows that run read
    rows: int | None = None
    #: `append` or `replace`: what that run did to the table
    mode: str | None = None
    #: when the move finished (UTC ISO time)
    committed_at: str | None = None
    #: the schema the table was written with (`hygge_tasks.drift`)
    schema: dict[str, Any] | None = None
    #: which source and destination the entry belongs to (`flows.plan.identity`)
    identity: dict[str, str] | None = None
    #: where the Store keeps the keys the destination holds (`deletes: detect`): the state
    #: object's name, its key count and SHA-256 (`hygge_tasks.keyset_store`)
    keyset: dict[str, Any] | None = None
    #: the rows that run deleted at the destination
    deleted: int | None = None
    #: the files loaded so far (`incremental: files`): inline, or a reference to the Store's
    #: state (`hygge_tasks.new_files`)
    files: dict[str, Any] | None = None
    #: the source's change-tracking version the data reached (`changes: change_tracking`):
    #: `{"kind": "change_tracking", "version": <int>}` (`hygge_tasks.changes`)
    changes: dict[str, Any] | None = None
    #: keys written by another version of hygge, kept as they were
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def watermark_column(self) -> str | None:
        return self.watermark.get("column") if self.watermark else None

    @property
    def watermark_value(self) -> Any:
        return self.watermark.get("value") if self.watermark else None

    def to_json(self) -> dict[str, Any]:
        """The entry as the ledger block and the manifest keep it.

        `watermark` is always written (`None` for an entity without one); the other keys only
        when they have a value, as entries written before them never had them.
        """
        out: dict[str, Any] = {"watermark": self.watermark}
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], entity: str | None = None) -> LedgerEntry:
        """Read an entry of any form a ledger or manifest holds."""
        if not isinstance(data, Mapping):
            msg = (
                f"the ledger entry is {type(data).__name__} {data!r}, not a JSON object; "
                "run the entity once with --full-drop to start its entry over"
            )
            raise LedgerError(msg, entity=entity)
        for key in ("watermark", "schema", "identity", "keyset", "files", "changes"):
            value = data.get(key)
            if value is not None and not isinstance(value, Mapping):
                msg = (
                    f"the ledger entry's {key!r} is {value!r}, not a JSON object; run the "
                    "entity once with --full-drop to start its entry over"
                )
                raise LedgerError(msg, entity=entity)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            watermark=_dict(data.get("watermark")),
            run_id=data.get("run_id"),
            rows=data.get("rows"),
            mode=data.get("mode"),
            committed_at=data.get("committed_at"),
            schema=_dict(data.get("schema")),
            identity=_dict(data.get("identity")),
            keyset=_dict(data.get("keyset")),
            deleted=data.get("deleted"),
            files=_dict(data.get("files")),
            changes=_dict(data.get("changes")),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)

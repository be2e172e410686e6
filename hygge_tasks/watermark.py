"""Boundary-exact incremental loading: no row lost, no row loaded twice.

Semantics (the one place they are defined):

- start bound: closed. A run reads `column >= last_value` and drops the rows whose identity is
  in the ledger's boundary set: the rows already loaded at exactly `last_value`. A plain
  `column > last_value` would lose rows that arrive later with the same value (common with
  second- or day-granular timestamps); a plain `>=` would repeat the rows already loaded.
- identity: the `keys` columns when the spec names them, else a hash of the whole row.
- end bound: none. Everything present at read time is loaded; the new watermark is the largest
  value admitted and the new boundary set holds the identities of the rows at that value
  (joined with the old set when the value did not move).
- NULLs: rows whose watermark is NULL cannot be placed; they are never loaded by an
  incremental entity, and every run counts and reports them.
- order: none required; the maximum is computed over everything admitted.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hygge_tasks.errors import ConfigError

_KEY_SEP = "\x1f"


@dataclass(frozen=True)
class Watermark:
    """The ledger's record of how far an entity has been loaded."""

    column: str
    value: Any
    boundary: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict[str, Any]:
        kind, text = _encode(self.value)
        return {
            "column": self.column,
            "kind": kind,
            "value": text,
            "boundary": sorted(self.boundary),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Watermark:
        return cls(
            column=data["column"],
            value=_decode(data["kind"], data["value"]),
            boundary=frozenset(data.get("boundary", [])),
        )


def _encode(value: Any) -> tuple[str, Any]:
    # order matters: datetime is a subclass of date, bool of int
    if isinstance(value, dt.datetime):
        return "datetime", value.isoformat()
    if isinstance(value, dt.date):
        return "date", value.isoformat()
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, decimal.Decimal):
        return "decimal", str(value)
    if isinstance(value, str):
        return "str", value
    msg = f"a watermark of type {type(value).__name__} is not supported"
    raise ConfigError(msg)


def _decode(kind: str, value: Any) -> Any:
    decoders: dict[str, Callable[[Any], Any]] = {
        "datetime": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "decimal": decimal.Decimal,
    }
    decode = decoders.get(kind)
    return decode(value) if decode else value


class BoundaryFilter:
    """Applies the semantics above to a stream of batches and tracks the next watermark."""

    def __init__(
        self, entity: str, column: str, keys: list[str], previous: Watermark | None
    ) -> None:
        self.entity = entity
        self.column = column
        self.keys = keys
        self.previous = previous
        self.null_rows = 0
        self._max: pa.Scalar | None = None
        self._boundary: set[str] = set()
        self._prev_scalar: pa.Scalar | None = None

    def admit(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Return the rows of `batch` that belong to this run, and remember the new boundary."""
        if self.column not in batch.schema.names:
            msg = (
                f"watermark column {self.column!r} is not in the source "
                f"(columns: {', '.join(batch.schema.names[:20])})"
            )
            raise ConfigError(msg, entity=self.entity)
        for key in self.keys:
            if key not in batch.schema.names:
                msg = f"watermark key column {key!r} is not in the source"
                raise ConfigError(msg, entity=self.entity)
        col = batch.column(self.column)
        self.null_rows += col.null_count
        keep = pc.is_valid(col)
        if self.previous is not None:
            prev = self._previous_scalar(col.type)
            keep = pc.and_(keep, pc.greater_equal(col, prev))
            if self.previous.boundary:
                at_prev = pc.and_(keep, pc.equal(col, prev))
                keep = pc.and_(keep, pc.invert(self._already_loaded(batch, at_prev)))
        admitted = batch.filter(keep)
        self._track(admitted)
        return admitted

    def _already_loaded(self, batch: pa.RecordBatch, at_prev: pa.Array) -> pa.Array:
        """Mask of the rows tied with the previous watermark that the last run loaded."""
        flags = [False] * batch.num_rows
        if pc.any(at_prev).as_py():
            assert self.previous is not None
            positions = pc.indices_nonzero(at_prev).to_pylist()
            for pos, ident in zip(positions, self.identities(batch.filter(at_prev)), strict=True):
                flags[pos] = ident in self.previous.boundary
        return pa.array(flags, type=pa.bool_())

    def identities(self, rows: pa.RecordBatch) -> list[str]:
        """Stable identities of `rows`: joined key values, or a hash of the whole row."""
        if self.keys:
            parts = [pc.fill_null(rows.column(k).cast(pa.string()), "\\N") for k in self.keys]
            if len(parts) == 1:
                return parts[0].to_pylist()
            return pc.binary_join_element_wise(*parts, _KEY_SEP).to_pylist()
        return [
            hashlib.sha256(
                json.dumps(row, default=str, sort_keys=True, ensure_ascii=False).encode()
            ).hexdigest()[:32]
            for row in rows.to_pylist()
        ]

    def result(self) -> Watermark | None:
        """The watermark after this run: unchanged when nothing new was admitted."""
        if self._max is None:
            return self.previous
        try:
            value = self._max.as_py()
        except ValueError as exc:  # nanoseconds that a Python datetime cannot hold
            msg = (
                f"watermark column {self.column!r} holds {self._max.type} values with "
                "sub-microsecond parts, which the ledger cannot store exactly; cast the column "
                "to microseconds in the source (or a `query`), or use another watermark column"
            )
            raise ConfigError(msg, entity=self.entity) from exc
        if self.previous is not None and self._max_equals_previous():
            return Watermark(self.column, value, self.previous.boundary | self._boundary)
        return Watermark(self.column, value, frozenset(self._boundary))

    def _track(self, admitted: pa.RecordBatch) -> None:
        if admitted.num_rows == 0:
            return
        col = admitted.column(self.column)
        batch_max = pc.max(col)
        if self._max is None or pc.greater(batch_max, self._max).as_py():
            self._max = batch_max
            self._boundary = set()
        if pc.equal(batch_max, self._max).as_py():
            at_max = admitted.filter(pc.equal(col, self._max))
            self._boundary.update(self.identities(at_max))

    def _max_equals_previous(self) -> bool:
        assert self._max is not None
        prev = self._previous_scalar(self._max.type)
        return bool(pc.equal(self._max, prev).as_py())

    def _previous_scalar(self, typ: pa.DataType) -> pa.Scalar:
        if self._prev_scalar is not None and self._prev_scalar.type == typ:
            return self._prev_scalar
        assert self.previous is not None
        try:
            scalar = pa.scalar(self.previous.value, type=typ)
            # Arrow converts some values lossily (1.5 -> int64 1, a datetime -> date32): a
            # truncated bound would load rows twice, so the value must survive the trip
            if scalar.as_py() != self.previous.value:
                msg = f"{self.previous.value!r} becomes {scalar.as_py()!r} as {typ}"
                raise ValueError(msg)
            self._prev_scalar = scalar
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            msg = (
                f"the stored watermark {self.previous.value!r} does not fit column "
                f"{self.column!r} of type {typ}; the column's type changed since the last run. "
                "Run this entity with --full-drop to reload it and reset the watermark"
            )
            raise ConfigError(msg, entity=self.entity) from exc
        return self._prev_scalar

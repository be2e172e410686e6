"""Boundary-exact incremental loading: no row lost, no row loaded twice.

Semantics (the one place they are defined):

- start bound: closed. A run reads `column >= last_value` and drops the rows whose identity is
  in the ledger's boundary set: the rows already loaded at exactly `last_value`. A plain
  `column > last_value` would lose rows that arrive later with the same value (common with
  second- or day-granular timestamps); a plain `>=` would repeat the rows already loaded.
- identity: the `keys` columns when the spec names them, else the whole row, in a typed,
  length-prefixed encoding digested to 128 bits (`hygge_tasks.boundary_keys`): NULL, the text
  `\\N` and the empty text are three identities, and no key value can pass for two. The ledger
  marks the format (`boundary_format`); an entry written before the mark keeps its old meaning
  (keys joined with `\\x1f`, NULL as `\\N`, or JSON row hashes) and still excludes exactly the
  rows it excluded; when the value does not move, the next commit names the rows it excluded
  in the current format (its identities that matched no row are dropped), else the new value
  starts a set in the current format.
- end bound: none. Everything present at read time is loaded; the new watermark is the largest
  value admitted and the new boundary set holds the identities of the rows at that value
  (joined with the old set when the value did not move).
- NULLs: a full load (no previous watermark: a first load, `--full-drop`) loads every row,
  NULL watermarks included. An incremental run cannot place a NULL-watermark row: it counts
  them (`null_rows`) and the entity's `watermark.nulls` policy decides (`hygge_tasks.move`):
  `fail` (the default) fails the entity, `skip` skips and reports them, `include` admits
  them again on every run (for a Store that merges by the keys).
- lag: with `watermark.lag` the run reads from `lagged(last value)` with no boundary set, so
  the window is read again and merged by key; the watermark never moves back (`not_behind`).
- columns: one, or a list compared as `COALESCE(a, b, ...)` (one type); the ledger keeps the
  coalesced value under the label `COALESCE(a, b)` (`watermark_label`).
- order: none required; the maximum is computed over everything admitted.
- precision: exact. A timestamp with sub-microsecond digits (SQL Server `datetime2(7)`, Arrow
  `timestamp[ns]` from files), which a Python datetime cannot hold, is kept as a
  `NanoTimestamp` (ledger kind `timestamp_ns`, a 9-digit ISO string); every other value keeps
  its kind, so ledgers written before read as they always did.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hygge_core.errors import ConfigError, LedgerError
from hygge_core.timestamps import NanoTimestamp
from hygge_tasks.boundary_keys import BOUNDARY_FORMAT, identities, legacy_identities


@dataclass(frozen=True)
class Watermark:
    """The ledger's record of how far an entity has been loaded."""

    column: str
    value: Any
    boundary: frozenset[str] = field(default_factory=frozenset)
    #: how `boundary` names rows (`hygge_tasks.boundary_keys`); an empty set means the same in
    #: every format, so it always reads as the current one
    boundary_format: int = BOUNDARY_FORMAT

    def to_json(self) -> dict[str, Any]:
        kind, text = _encode(self.value)
        return {
            "column": self.column,
            "kind": kind,
            "value": text,
            "boundary": sorted(self.boundary),
            "boundary_format": self.boundary_format,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Watermark:
        boundary = frozenset(data.get("boundary", []))
        # entries written before the mark are format 1
        fmt = int(data.get("boundary_format", 1)) if boundary else BOUNDARY_FORMAT
        if fmt not in (1, BOUNDARY_FORMAT):
            msg = (
                f"the ledger's watermark on {data['column']!r} names its boundary rows in "
                f"format {fmt}, which this hygge does not know (it reads formats 1 and "
                f"{BOUNDARY_FORMAT}); run this entity with the hygge that wrote the ledger, or "
                "upgrade hygge"
            )
            raise LedgerError(msg)
        return cls(
            column=data["column"],
            value=_decode(data["kind"], data["value"]),
            boundary=boundary,
            boundary_format=fmt,
        )


def _encode(value: Any) -> tuple[str, Any]:
    # order matters: datetime is a subclass of date, bool of int
    if isinstance(value, NanoTimestamp):
        return "timestamp_ns", value.isoformat()
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
        "timestamp_ns": NanoTimestamp.fromisoformat,
    }
    decode = decoders.get(kind)
    return decode(value) if decode else value


class BoundaryFilter:
    """Applies the semantics above to a stream of batches and tracks the next watermark."""

    def __init__(
        self,
        entity: str,
        column: str | list[str],
        keys: list[str],
        previous: Watermark | None,
        include_nulls: bool = False,
    ) -> None:
        self.entity = entity
        #: `watermark.nulls: include`: NULL-watermark rows are read again on every run
        self.include_nulls = include_nulls
        #: the source columns; a list is compared as COALESCE(a, b, ...) (`label` names it)
        self.sources = [column] if isinstance(column, str) else list(column)
        self.column = watermark_label(self.sources)
        self.keys = keys
        self.previous = previous
        #: NULL-watermark rows an incremental run left out; a full load admits them
        self.null_rows = 0
        self.null_loaded = 0
        self._max: pa.Scalar | None = None
        self._boundary: set[str] = set()
        #: current-format identities of the rows an older-format boundary excluded
        self._carried: set[str] = set()
        self._prev_scalar: pa.Scalar | None = None
        self._prev_ids: pa.Array | None = None

    def admit(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Return the rows of `batch` that belong to this run, and remember the new boundary."""
        for name in self.sources:
            if name not in batch.schema.names:
                msg = (
                    f"watermark column {name!r} is not in the source "
                    f"(columns: {', '.join(batch.schema.names[:20])})"
                )
                raise ConfigError(msg, entity=self.entity)
        for key in self.keys:
            if key not in batch.schema.names:
                msg = f"watermark key column {key!r} is not in the source"
                raise ConfigError(msg, entity=self.entity)
        col = self._values(batch)
        if self.previous is None:  # a full load: every row, NULLs included
            self.null_loaded += col.null_count
            self._track(batch)
            return batch
        prev = self._previous_scalar(col.type)
        keep = pc.and_(pc.is_valid(col), pc.greater_equal(col, prev))
        if self.previous.boundary:
            at_prev = pc.and_(keep, pc.equal(col, prev))
            keep = pc.and_(keep, pc.invert(self._already_loaded(batch, at_prev)))
        if self.include_nulls:
            self.null_loaded += col.null_count
            # `keep` is NULL where the watermark is (non-Kleene logic): those rows come in
            keep = pc.or_(pc.fill_null(keep, False), pc.is_null(col))
        else:
            self.null_rows += col.null_count
        admitted = batch.filter(keep)
        self._track(admitted)
        return admitted

    def _values(self, batch: pa.RecordBatch) -> pa.Array:
        """The watermark of each row: its column, or the first non-NULL of the columns."""
        if len(self.sources) == 1:
            return batch.column(self.sources[0])
        cols = [batch.column(n) for n in self.sources]
        types = {str(c.type) for c in cols}
        if len(types) > 1:
            listed = ", ".join(f"{n} {c.type}" for n, c in zip(self.sources, cols, strict=True))
            msg = (
                f"the watermark columns must have one type to be coalesced ({listed}); cast "
                "them to one type in a `query`, or name one column"
            )
            raise ConfigError(msg, entity=self.entity)
        return pc.coalesce(*cols)

    def _already_loaded(self, batch: pa.RecordBatch, at_prev: pa.Array) -> pa.Array:
        """Mask of the rows tied with the previous watermark that the last run loaded."""
        flags = np.zeros(batch.num_rows, dtype=bool)
        if pc.any(at_prev).as_py():
            assert self.previous is not None
            tied = batch.filter(at_prev)
            legacy = self.previous.boundary_format != BOUNDARY_FORMAT
            ids = legacy_identities(tied, self.keys) if legacy else self.identities(tied)
            hits = pc.is_in(pa.array(ids, pa.string()), value_set=self._previous_ids())
            hit = hits.to_numpy(zero_copy_only=False)
            flags[pc.indices_nonzero(at_prev).to_numpy()[hit]] = True
            if legacy and hit.any():
                # the next commit names these rows in the current format
                self._carried.update(self.identities(tied.filter(hits)))
        return pa.array(flags, type=pa.bool_())

    def _previous_ids(self) -> pa.Array:
        if self._prev_ids is None:
            assert self.previous is not None
            self._prev_ids = pa.array(sorted(self.previous.boundary), pa.string())
        return self._prev_ids

    def identities(self, rows: pa.RecordBatch) -> list[str]:
        """Stable identities of `rows` (`hygge_tasks.boundary_keys`): by keys, or whole rows."""
        return identities(rows, self.keys)

    def result(self) -> Watermark | None:
        """The watermark after this run: unchanged when nothing new was admitted."""
        if self._max is None:
            return self.previous
        value = _py_value(self._max)
        if self.previous is not None and self._max_equals_previous():
            if self.previous.boundary_format == BOUNDARY_FORMAT:
                kept = self.previous.boundary
            else:  # an older format: the rows it excluded, named anew
                kept = frozenset(self._carried)
            return Watermark(self.column, value, kept | self._boundary)
        return Watermark(self.column, value, frozenset(self._boundary))

    def _track(self, admitted: pa.RecordBatch) -> None:
        if admitted.num_rows == 0:
            return
        col = self._values(admitted)
        batch_max = pc.max(col)
        if not batch_max.is_valid:  # every row's watermark is NULL
            return
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
        value = self.previous.value
        try:
            if isinstance(value, NanoTimestamp):
                if not pa.types.is_timestamp(typ) or (typ.tz is not None) != value.utc:
                    msg = f"{value} is a {value.arrow_type} value, not {typ}"
                    raise TypeError(msg)
                scalar = value.scalar().cast(typ)  # a safe cast: refuses to drop digits
            else:
                scalar = pa.scalar(value, type=typ)
            # Arrow converts some values lossily (1.5 -> int64 1, a datetime -> date32): a
            # truncated bound would load rows twice, so the value must survive the trip
            if _py_value(scalar) != value:
                msg = f"{value!r} becomes {_py_value(scalar)!r} as {typ}"
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


def watermark_label(columns: list[str]) -> str:
    """How the ledger names a watermark: its column, or `COALESCE(a, b)` for a list."""
    return columns[0] if len(columns) == 1 else f"COALESCE({', '.join(columns)})"


def _py_value(scalar: pa.Scalar) -> Any:
    """A scalar as a Python value; a timestamp with sub-microsecond digits as a NanoTimestamp."""
    typ = scalar.type
    if pa.types.is_timestamp(typ) and typ.unit == "ns" and scalar.is_valid:
        exact = NanoTimestamp.from_scalar(scalar)
        if exact.ns % 1000:
            return exact
    return scalar.as_py()


_LAG = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_LAG_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def lag_seconds(lag: str) -> float:
    """`10m` as seconds; ValueError for anything else (`ms`, `s`, `m`, `h`, `d`)."""
    m = _LAG.match(lag)
    if m is None:
        msg = f"{lag!r} is no duration: write a number and a unit (ms, s, m, h or d), e.g. `10m`"
        raise ValueError(msg)
    return float(m.group(1)) * _LAG_UNITS[m.group(2)]


def lagged(value: Any, lag: str | int | float, entity: str) -> Any:
    """The watermark `value` moved back by `lag`: where a run with `watermark.lag` reads from."""
    try:
        if isinstance(lag, str):
            seconds = lag_seconds(lag)
            if isinstance(value, NanoTimestamp):
                return NanoTimestamp(value.ns - round(seconds * 1e9), value.utc)
            if isinstance(value, dt.datetime):
                return value - dt.timedelta(seconds=seconds)
            if isinstance(value, dt.date):
                # whole days before, never less than asked
                return value - dt.timedelta(days=math.ceil(seconds / 86400))
        elif not isinstance(value, bool):
            if isinstance(value, int):
                return value - math.ceil(lag)
            if isinstance(value, decimal.Decimal):
                return value - decimal.Decimal(str(lag))
            if isinstance(value, float):
                return value - float(lag)
    except (ValueError, OverflowError) as exc:
        msg = f"watermark.lag: {exc}"
        raise ConfigError(msg, entity=entity) from exc
    kind = "a duration like `10m`" if isinstance(lag, str) else "a number"
    msg = (
        f"watermark.lag {lag!r} ({kind}) cannot be taken from the watermark {value!r}: a "
        "timestamp or date watermark takes a duration (`10m`), a numeric one a number; a text "
        "watermark takes no lag"
    )
    raise ConfigError(msg, entity=entity)


def not_behind(reached: Watermark | None, previous: Watermark) -> Watermark:
    """A run that re-read a lag window never moves the watermark back (rows at the old value
    may be gone from the source): the later of the two, with its boundary."""
    if reached is None or reached.value < previous.value:
        return previous
    return reached

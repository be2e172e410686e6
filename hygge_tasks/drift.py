"""Schema drift: notice when a source's columns change, and do what the entity's policy says.

After every successful run the ledger entry keeps the entity's schema: the columns (names,
Arrow types, nullability) that hygge hands to the polisher and the Store, plus the columns the
source has dropped that the table keeps. The next run compares the source's schema with it
before writing anything, and applies `schema: {on_drift: ...}`:

- `fail` (the default): the entity stops with a diff of old and new and writes nothing. A
  changed source needs a decision; a silent change breaks whoever reads the table.
- `warn`: log the diff and keep loading the old columns: new columns are left out, dropped
  ones arrive as NULL, values are cast to the old types (a value that does not fit fails). The
  remembered schema stays the old one, so every run warns until someone acts.
- `evolve`: the table follows the source without losing anything already loaded. New columns
  are added (rows loaded before get NULL); a dropped column stays, NULL from now on; a type
  that widens (int32 -> int64, float32 -> float64, a larger decimal, a finer timestamp) widens
  the column; a narrowing keeps the wider type; a NOT NULL column that starts allowing NULLs
  becomes nullable. Anything else (string -> int) fails with the reason.

When evolving changes the published table's schema (added columns, wider types, nullability)
an incremental run rewrites the table once: it stages the published rows, widened, together
with the new rows and publishes them as a replace, through the same crash-safe swap as a full
drop. The table therefore always has one schema and reads with a plain
`scan_parquet("<entity>/*.parquet")`, and the Store's own check (an append must match the
published files) stays a safety net rather than an error users meet. The cost is one copy of
the table on the run that evolves it. A Store that cannot change a column's type in place
(Fabric Open Mirroring stops replicating such a table) says so in `type_change_refusal`, and
evolve refuses type changes there with that explanation. A Store that adds columns as it
writes (`evolves_in_place`, Delta's schema merge) is not rewritten: the run's own commit adds
them.

A full drop (or a table that is gone) rebuilds the table from the source, so it takes the new
schema whatever the policy: that is the way out of `fail`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from blocks.base import EntityWriter, StoreBlock
from hygge_core.arrow_types import SMALL, unviewed
from hygge_core.errors import HyggeError, first_line

DriftPolicy = Literal["fail", "warn", "evolve"]
_INT_DIGITS = {8: 3, 16: 5, 32: 10, 64: 20}
# the widest integer each float width holds exactly (its mantissa: 11, 24, 53 bits)
_EXACT_INT_BITS = {16: 8, 32: 16, 64: 32}
_UNITS = ["s", "ms", "us", "ns"]


class SchemaSpec(BaseModel):
    """An entity's `schema:` settings."""

    model_config = ConfigDict(extra="forbid")
    on_drift: DriftPolicy = "fail"


class SchemaDriftError(HyggeError):
    """The source's columns changed in a way the entity's `schema.on_drift` does not allow."""


# -- remembering a schema in the ledger -------------------------------------------------------


def remember(schema: pa.Schema, absent: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON-able record of `schema`: exact (Arrow IPC) and readable (names, types)."""
    # the large types stand for the views: a ledger reads the same whichever a Home handed over
    schema = unviewed(_plain(schema))
    return {
        "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
        "columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "absent": sorted(absent),
    }


def recall(entry: dict[str, Any]) -> tuple[pa.Schema, set[str]]:
    # IPC, not the type strings: Arrow's spelling of types changes between versions
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(entry["arrow"])))
    return schema, set(entry.get("absent") or ())


def _plain(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema])


# -- what changed -----------------------------------------------------------------------------


@dataclass
class Drift:
    """The differences between the remembered schema and the source's."""

    added: list[pa.Field] = field(default_factory=list)
    removed: list[pa.Field] = field(default_factory=list)
    retyped: list[tuple[pa.Field, pa.Field]] = field(default_factory=list)
    nullability: list[tuple[pa.Field, pa.Field]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.retyped or self.nullability)

    def lines(self) -> list[str]:
        out = [f"  + added     {f.name}: {f.type}" for f in self.added]
        out += [f"  - removed   {f.name}: {f.type}" for f in self.removed]
        out += [f"  ~ type      {o.name}: {o.type} -> {n.type}" for o, n in self.retyped]
        out += [f"  ~ NULLs     {o.name}: {_nulls(o)} -> {_nulls(n)}" for o, n in self.nullability]
        return out

    def short(self) -> str:
        parts = [f"+{f.name} {f.type}" for f in self.added]
        parts += [f"-{f.name}" for f in self.removed]
        parts += [f"{o.name} {o.type}->{n.type}" for o, n in self.retyped]
        parts += [f"{o.name} {_nulls(n)}" for o, n in self.nullability]
        return "; ".join(parts)


def _nulls(f: pa.Field) -> str:
    return "nullable" if f.nullable else "NOT NULL"


def diff(old: pa.Schema, absent: set[str], new: pa.Schema) -> Drift:
    """What changed from `old` (with its `absent` columns) to `new`; column order is ignored."""
    drift = Drift()
    before = {f.name: f for f in old}
    after = {f.name: f for f in new}
    drift.added = [f for f in new if f.name not in before]
    drift.removed = [f for f in old if f.name not in after and f.name not in absent]
    for name, o in before.items():
        n = after.get(name)
        if n is None:
            continue
        if _logical(o.type) != _logical(n.type):
            drift.retyped.append((o, n))
        elif o.nullable != n.nullable and name not in absent:
            drift.nullability.append((o, n))
    return drift


def _logical(t: pa.DataType) -> pa.DataType:
    """One flavour of text and binary: small, large and view types are one column to readers."""
    return SMALL.get(t, t)


def _flavoured(target: pa.Schema, source: pa.Schema) -> pa.Schema:
    """`target` with the source's own type where the two differ only in flavour (small, large
    or view text), so batches pass through without a cast."""
    given = {f.name: f.type for f in source}

    def same(f: pa.Field) -> bool:
        return f.name in given and _logical(given[f.name]) == _logical(f.type)

    return pa.schema([f.with_type(given[f.name]) if same(f) else f for f in target])


def widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether every value of `old` is a value of `new` (so a column can turn into `new`)."""
    t = pa.types
    if old == new:
        return True
    if t.is_integer(old) and t.is_integer(new):
        if t.is_signed_integer(old) == t.is_signed_integer(new):
            return bool(new.bit_width >= old.bit_width)
        return t.is_unsigned_integer(old) and bool(new.bit_width > old.bit_width)
    if t.is_integer(old) and t.is_floating(new):
        return bool(old.bit_width <= _EXACT_INT_BITS[new.bit_width])
    if t.is_floating(old) and t.is_floating(new):
        return bool(new.bit_width >= old.bit_width)
    if t.is_integer(old) and t.is_decimal(new):
        return bool(new.precision - new.scale >= _INT_DIGITS[old.bit_width])
    if t.is_decimal(old) and t.is_decimal(new):
        return new.scale >= old.scale and new.precision - new.scale >= old.precision - old.scale
    if t.is_timestamp(old) and t.is_timestamp(new):
        # a finer unit, short of nanoseconds (which end in the year 2262)
        finer = _UNITS.index(new.unit) >= _UNITS.index(old.unit)
        return old.tz == new.tz and finer and new.unit != "ns"
    pairs = {
        (pa.string(), pa.large_string()),
        (pa.binary(), pa.large_binary()),
        (pa.date32(), pa.date64()),
        (pa.float16(), pa.float64()),
    }
    return (old, new) in pairs


# -- the guard the engine runs ----------------------------------------------------------------


class SchemaGuard:
    """Decides, from the first batch's schema, which schema this run writes, and conforms
    every batch to it."""

    def __init__(
        self,
        entity: str,
        policy: DriftPolicy,
        previous: dict[str, Any] | None,
        *,
        reset: bool = False,
        protected: dict[str, str] | None = None,
        type_change_refusal: str | None = None,
        logger: Any = None,
    ) -> None:
        self.entity = entity
        self.policy = policy
        self.previous = previous
        self.reset = reset
        self.protected = protected or {}
        self.refusal = type_change_refusal
        self.logger = logger
        self.target: pa.Schema | None = None
        #: the published table's schema must change: an append rewrites the table
        self.rewrite = False
        #: what happened, for the summary and the journal
        self.note: str | None = None
        #: the ledger's schema record after this run
        self.remembered: dict[str, Any] | None = None

    def check(self, source: pa.Schema) -> None:
        """Compare the source with the remembered schema; raise or decide per the policy."""
        source = _plain(source)
        self._decide(source)
        assert self.target is not None
        self.target = _flavoured(self.target, source)

    def _decide(self, source: pa.Schema) -> None:
        if self.previous is None or "arrow" not in self.previous:
            self.target, self.remembered = source, remember(source)
            return
        old, absent = recall(self.previous)
        drift = diff(old, absent, source)
        if self.reset:
            self.target, self.remembered = source, remember(source)
            self.note = f"new schema taken (full reload): {drift.short()}" if drift else None
            return
        if not drift:
            back = {f.name for f in source} & absent
            self.target, self.remembered = old, remember(old, absent - back)
            return
        if self.policy == "fail":
            msg = (
                "the source schema changed since the last run:\n"
                + "\n".join(drift.lines())
                + "\nnothing was written (schema.on_drift is `fail`). Set `schema: {on_drift: "
                "evolve}` to add new columns and keep the old ones, `warn` to keep loading the "
                "old columns, or run the entity once with --full-drop to rebuild the table with "
                "the new schema"
            )
            raise SchemaDriftError(msg, entity=self.entity)
        self._refuse_protected(drift)
        if self.policy == "warn":
            self.target, self.remembered = old, self.previous
            self.note = f"schema drift ignored (on_drift: warn): {drift.short()}"
            if self.logger is not None:
                self.logger.warning(
                    "%s: the source schema changed; loading the old columns "
                    "(schema.on_drift is `warn`):\n%s",
                    self.entity,
                    "\n".join(drift.lines()),
                )
            return
        self._evolve(old, absent, drift)
        self.note = f"schema evolved: {drift.short()}"
        if self.logger is not None:
            self.logger.warning(
                "%s: the source schema changed; evolving the table:\n%s",
                self.entity,
                "\n".join(drift.lines()),
            )

    def _refuse_protected(self, drift: Drift) -> None:
        for f in drift.removed:
            role = self.protected.get(f.name)
            if role:
                msg = (
                    f"column {f.name!r} is gone from the source, but it is the entity's {role}: "
                    "restore it at the source, or change the spec and run the entity once with "
                    "--full-drop"
                )
                raise SchemaDriftError(msg, entity=self.entity)

    def _evolve(self, old: pa.Schema, absent: set[str], drift: Drift) -> None:
        fields = {f.name: f for f in old}
        absent = set(absent) | {f.name for f in drift.removed}
        for f in drift.removed:
            if not f.nullable:
                fields[f.name] = f.with_nullable(True)
                self.rewrite = True
        for o, n in drift.retyped:
            absent.discard(o.name)
            if widens(o.type, n.type):
                if self.refusal:
                    msg = (
                        f"column {o.name!r} changed type ({o.type} -> {n.type}) and "
                        f"{self.refusal}; run the entity once with --full-drop"
                    )
                    raise SchemaDriftError(msg, entity=self.entity)
                fields[o.name] = o.with_type(n.type).with_nullable(o.nullable or n.nullable)
                self.rewrite = True
            elif not widens(n.type, o.type):
                msg = (
                    f"cannot evolve column {o.name!r} from {o.type} to {n.type}: neither type "
                    "holds every value of the other; run the entity once with --full-drop to "
                    "rebuild the table"
                )
                raise SchemaDriftError(msg, entity=self.entity)
        for o, n in drift.nullability:
            if n.nullable and not o.nullable:
                fields[o.name] = o.with_nullable(True)
                self.rewrite = True
        added = [f.with_nullable(True) for f in drift.added]
        self.rewrite = self.rewrite or bool(added)
        self.target = pa.schema([*fields.values(), *added])
        self.remembered = remember(self.target, absent)

    def unchanged(self, source: pa.Schema) -> bool:
        """After `check`: whether the run takes this schema as it is (no column added, dropped,
        reordered or cast, no rewrite), so that files of it may be stored byte for byte."""
        return self.target is not None and not self.rewrite and _plain(source).equals(self.target)

    def conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`batch` with the run's columns, in the run's order and types."""
        assert self.target is not None, "check() first"
        if batch.schema.equals(self.target):
            return batch
        return _conform(batch, self.target, self.entity, self.policy)


def _conform(batch: pa.RecordBatch, schema: pa.Schema, entity: str, policy: str) -> pa.RecordBatch:
    names = set(batch.schema.names)
    arrays = []
    for f in schema:
        if f.name not in names:
            if not f.nullable and batch.num_rows:
                msg = (
                    f"column {f.name!r} is gone from the source but the table declares it NOT "
                    "NULL; set `schema: {on_drift: evolve}` to keep it as a nullable column, or "
                    "run the entity once with --full-drop"
                )
                raise SchemaDriftError(msg, entity=entity)
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        col = batch.column(f.name)
        try:
            col = col.cast(f.type) if col.type != f.type else col
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            msg = (
                f"column {f.name!r} holds a value that does not fit the table's type {f.type} "
                f"({first_line(exc)}); schema.on_drift is `{policy}`: run the entity once with "
                "--full-drop to rebuild the table with the new type"
            )
            raise SchemaDriftError(msg, entity=entity) from exc
        if not f.nullable and col.null_count:
            msg = (
                f"column {f.name!r} now holds NULLs but the table declares it NOT NULL; set "
                "`schema: {on_drift: evolve}` to make it nullable, or run --full-drop"
            )
            raise SchemaDriftError(msg, entity=entity)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def carry_over(store: StoreBlock, entity: str, writer: EntityWriter, schema: pa.Schema) -> int:
    """Stage the published table's rows in `schema` (the evolved one); returns the row count."""
    rows = 0
    for batch in store.read_table(entity):
        extra = sorted(set(batch.schema.names) - set(schema.names))
        if extra:
            msg = (
                f"the published table has column(s) {', '.join(extra)} that this run does not "
                "write (did the polish or column settings change?); run the entity once with "
                "--full-drop"
            )
            raise SchemaDriftError(msg, entity=entity)
        batch = _conform(batch, schema, entity, "evolve")
        writer.write(batch)
        rows += batch.num_rows
    return rows

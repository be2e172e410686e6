"""The polisher: last-mile finishing of each batch before it reaches the Store.

Configured per entity (or for all in the spec's `defaults`) as `polish:`

    polish:
      case: snake_case                 # or camelCase, PascalCase; omit to keep the case
      remove_special: true             # keep letters, digits and `_` only (accents folded)
      hash_id: {name: row_id, columns: [order_id, line_no]}   # or a list of them
      constants: {source: erp}
      load_timestamp: _loaded_at       # one UTC value per run

It runs after the watermark filter, so the watermark column and keys (and the `hash_id`
columns) are the source's names. Source columns keep their order and types under their new
names; the added columns follow them in the order above. Added columns are named exactly as
given. Every batch of a run gets the same output schema, and polished names are a fixed point
(polishing them again changes nothing), so a polisher applied once is applied for good.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hygge_core.errors import ConfigError
from hygge_tasks.rowhash import encode_column, row_hash

Case = Literal["snake_case", "camelCase", "PascalCase"]
Constant = bool | int | float | str | dt.datetime | dt.date

_SEPARATORS = re.compile(r"[\s_.\-]+")
_SPACES = re.compile(r"\s+")
_UNDERSCORES = re.compile(r"_+")
_MAX_PASSES = 8


class HashIdSpec(BaseModel):
    """A deterministic ID column: a hash of the listed columns' values (see `rowhash`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, description="Name of the added ID column.")
    columns: list[str] = Field(min_length=1, description="Source columns the ID is made of.")


class PolishSpec(BaseModel):
    """What the polisher does to an entity's batches."""

    model_config = ConfigDict(extra="forbid")
    case: Case | None = None
    remove_special: bool = False
    hash_id: list[HashIdSpec] = Field(default_factory=list)
    constants: dict[str, Constant] = Field(default_factory=dict)
    load_timestamp: str | None = Field(default=None, min_length=1)

    @field_validator("hash_id", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _distinct_added(self) -> PolishSpec:
        names = self.added_names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            msg = f"added column name(s) used twice: {', '.join(twice)}"
            raise ValueError(msg)
        return self

    @property
    def added_names(self) -> list[str]:
        names = [h.name for h in self.hash_id] + list(self.constants)
        return names + ([self.load_timestamp] if self.load_timestamp else [])

    @property
    def renames(self) -> bool:
        return self.case is not None or self.remove_special


# -- column names -----------------------------------------------------------------------------


def normalise_name(name: str, case: Case | None = None, remove_special: bool = False) -> str:
    """One column name in normal form; `""` when nothing usable is left.

    The normal form is the fixed point of `_normalise_once`, which makes polishing idempotent
    even for letters whose case mapping changes length (`ß` -> `SS`).
    """
    for _ in range(_MAX_PASSES):
        again = _normalise_once(name, case, remove_special)
        if again == name:
            return name
        name = again
    return name


def _normalise_once(name: str, case: Case | None, remove_special: bool) -> str:
    if remove_special:
        folded = unicodedata.normalize("NFKD", name)
        name = "".join(
            c if c.isalnum() or c == "_" else " " for c in folded if not unicodedata.combining(c)
        )
    # leading underscores mark system columns (`_id`): keep them
    stripped = name.strip()
    body = stripped.lstrip("_")
    prefix = stripped[: len(stripped) - len(body)]
    if case is None:
        body = _SPACES.sub(" ", body).strip()
        if remove_special:
            body = _UNDERSCORES.sub("_", body.replace(" ", "_")).strip("_")
        return prefix + body if body else ""
    words = [w for chunk in _SEPARATORS.split(body) for w in _camel_words(chunk)]
    if not words:
        return ""
    if case == "snake_case":
        return prefix + "_".join(w.lower() for w in words)
    head = words[0].lower() if case == "camelCase" else _capital(words[0])
    return prefix + head + "".join(_capital(w) for w in words[1:])


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:].lower()


def _camel_words(chunk: str) -> list[str]:
    """Split `orderDate`, `HTTPServer`, `version2Name` at their case changes."""
    words: list[str] = []
    start = 0
    for i in range(1, len(chunk)):
        prev, cur = chunk[i - 1], chunk[i]
        nxt = chunk[i + 1] if i + 1 < len(chunk) else ""
        lower_to_upper = cur.isupper() and not prev.isupper()
        acronym_end = cur.isupper() and prev.isupper() and nxt.islower()
        if lower_to_upper or acronym_end:
            words.append(chunk[start:i])
            start = i
    if chunk:
        words.append(chunk[start:])
    return words


def polish_names(
    names: list[str], case: Case | None = None, remove_special: bool = False
) -> list[str]:
    """Normal forms of `names`, made distinct in a way that does not depend on column order.

    When several names share a normal form, the one already spelled that way keeps it (else
    the smallest original name); the others get `_2`, `_3`, ... (`2`, `3` in camelCase and
    PascalCase), skipping any name another column has. Names with nothing usable become
    `column`. So `Name` and `name` become `name` and `name_2` on every run, whatever the order
    of the columns.
    """
    fallback = normalise_name("column", case, remove_special)
    targets = [normalise_name(n, case, remove_special) or fallback for n in names]
    out: list[str | None] = [None] * len(names)
    groups: dict[str, list[int]] = {}
    for i, target in enumerate(targets):
        groups.setdefault(target, []).append(i)
    losers: list[int] = []
    for target, members in groups.items():
        ranked = sorted(members, key=lambda i: (names[i] != target, names[i], i))
        out[ranked[0]] = target
        losers += ranked[1:]
    used = set(targets)
    glue = "_" if case in (None, "snake_case") else ""
    for i in sorted(losers, key=lambda i: (targets[i], names[i], i)):
        k = 2
        while (candidate := normalise_name(f"{targets[i]}{glue}{k}", case, remove_special)) in used:
            k += 1
        used.add(candidate)
        out[i] = candidate
    return [n for n in out if n is not None]


# -- the batch transformer --------------------------------------------------------------------


class Polisher:
    """Applies one entity's `PolishSpec` to every batch of one run."""

    def __init__(self, entity: str, spec: PolishSpec, loaded_at: dt.datetime) -> None:
        self.entity = entity
        self.spec = spec
        self.loaded_at = loaded_at.astimezone(dt.UTC)
        self._source: pa.Schema | None = None
        self._schema: pa.Schema | None = None
        self._hash_columns: list[list[int]] = []

    @property
    def schema(self) -> pa.Schema | None:
        """The output schema, once the first batch has been seen."""
        return self._schema

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self._source is None or not batch.schema.equals(self._source):
            self._plan(batch.schema)
        assert self._schema is not None
        n = batch.num_rows
        columns = list(batch.columns)
        columns += [row_hash([batch.column(i) for i in idx]) for idx in self._hash_columns]
        columns += [pa.repeat(pa.scalar(v), n) for v in self.spec.constants.values()]
        if self.spec.load_timestamp:
            columns.append(pa.repeat(pa.scalar(self.loaded_at, pa.timestamp("us", "UTC")), n))
        return pa.RecordBatch.from_arrays(columns, schema=self._schema)

    def names_of(self, columns: list[str]) -> list[str]:
        """The polished names of these source columns: as the run's batches name them once
        one has been seen (renames depend on every column), else as the columns alone."""
        spec = self.spec
        if not spec.renames:
            return list(columns)
        if self._source is None or self._schema is None:
            return polish_names(columns, spec.case, spec.remove_special)
        mapping = dict(zip(self._source.names, self._schema.names, strict=False))
        return [mapping.get(c, c) for c in columns]

    def _plan(self, source: pa.Schema) -> None:
        spec = self.spec
        names = source.names
        polished = polish_names(names, spec.case, spec.remove_special) if spec.renames else names
        fields = [f.with_name(p) for f, p in zip(source, polished, strict=True)]
        taken = set(polished)
        for field, name in [("hash_id", h.name) for h in spec.hash_id] + [
            ("constants" if name in spec.constants else "load_timestamp", name)
            for name in spec.added_names[len(spec.hash_id) :]
        ]:
            if name in taken:
                msg = (
                    f"polish.{field}: the added column {name!r} would collide with a source "
                    "column of that (polished) name; choose another name"
                )
                raise ConfigError(msg, entity=self.entity)
        self._hash_columns = [self._resolve(h, names, polished, source) for h in spec.hash_id]
        fields += [pa.field(h.name, pa.string()) for h in spec.hash_id]
        fields += [pa.field(k, pa.scalar(v).type) for k, v in spec.constants.items()]
        if spec.load_timestamp:
            fields.append(pa.field(spec.load_timestamp, pa.timestamp("us", "UTC")))
        self._source = source
        self._schema = pa.schema(fields)

    def _resolve(
        self, spec: HashIdSpec, names: list[str], polished: list[str], source: pa.Schema
    ) -> list[int]:
        """Column positions of a hash ID's inputs: source names first, polished names second."""
        out = []
        for col in spec.columns:
            where = names if col in names else polished
            if col not in where:
                msg = (
                    f"polish.hash_id {spec.name!r}: column {col!r} is not in the source "
                    f"(columns: {', '.join(names[:30])})"
                )
                raise ConfigError(msg, entity=self.entity)
            i = where.index(col)
            typ = source.field(i).type
            try:
                encode_column(pa.nulls(0, typ))
            except (TypeError, pa.ArrowException) as exc:
                msg = (
                    f"polish.hash_id {spec.name!r}: column {col!r} is {typ}; an ID can only be "
                    "made of scalar columns (text, numbers, dates, times, booleans, binary)"
                )
                raise ConfigError(msg, entity=self.entity) from exc
            out.append(i)
        return out

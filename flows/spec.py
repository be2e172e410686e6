"""The flow spec: a YAML file (or a dict of Prefect parameters) describing one hygge job.

Loading validates everything up front and turns every mistake into a `ConfigError` that names
the file, the entity and the field. `${VAR}` and `${VAR:-default}` are expanded from the
environment. Precedence for an entity's settings: the entity's own fields, then `defaults`,
then the Home's and Store's own settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blocks import HOMES, STORES
from flows import change_tracking
from flows.keys import block_problems, model_at, unknown_key, valid_keys
from hygge_core.errors import ConfigError
from hygge_tasks.deletes import DeletesSpec
from hygge_tasks.drift import SchemaSpec
from hygge_tasks.polish import PolishSpec
from hygge_tasks.watermark import lag_seconds, watermark_label

RunType = Literal["incremental", "full_drop"]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENTITY_NAME = re.compile(r"^[^/\\\x00]+$")


NullPolicy = Literal["fail", "skip", "include"]


class WatermarkSpec(BaseModel):
    """Which column moves forward, and which columns identify a row at the boundary."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    column: str | list[str] = Field(
        description="The column that moves forward, or a list compared as COALESCE(a, b, ...): "
        "`[modified, created]` when `modified` stays NULL until a row's first update.",
    )
    keys: list[str] = Field(
        default_factory=list,
        description="Columns that identify a row; empty uses a hash of the whole row.",
    )
    nulls: NullPolicy = Field(
        default="fail",
        description="Rows whose watermark is NULL on an incremental run (a first load and "
        "--full-drop load every row): `fail` (the default) fails the entity naming the count, so "
        "no row is lost without an error; `skip` skips them and reports the count in the "
        "summary and the journal; `include` re-reads them every run, which needs `keys` and a "
        "Store that merges by them (Delta).",
    )
    lag: str | int | float | None = Field(
        default=None,
        description="Re-read this much before the last watermark each run (`10m`, or a number "
        "for numeric watermarks), for rows committed late. Needs `keys` and a Store that "
        "merges by them (Delta): an appending Store would load the re-read rows twice.",
    )

    @field_validator("column")
    @classmethod
    def _some_column(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            msg = "a list of watermark columns needs one or more distinct names"
            raise ValueError(msg)
        return v

    @property
    def columns(self) -> list[str]:
        """The source columns, first non-NULL wins."""
        return [self.column] if isinstance(self.column, str) else list(self.column)

    @property
    def label(self) -> str:
        """How the ledger and reports name the watermark (`COALESCE(a, b)` for a list)."""
        return watermark_label(self.columns)

    @model_validator(mode="after")
    def _rereads_need_keys(self) -> WatermarkSpec:
        # rows read again are only exact when a Store can merge them by an identity
        if (self.nulls == "include" or self.lag is not None) and not self.keys:
            what = "`nulls: include`" if self.nulls == "include" else "`lag`"
            msg = (
                f"{what} reads rows again on every run, so they need `keys` that identify a "
                "row, for a Store that merges by them (Delta)"
            )
            raise ValueError(msg)
        if isinstance(self.lag, str):
            lag_seconds(self.lag)
        elif self.lag is not None and (isinstance(self.lag, bool) or self.lag < 0):
            msg = "`lag` is a duration (`10m`) or a number of at least 0"
            raise ValueError(msg)
        return self

    def rereads(self) -> str | None:
        """What this watermark reads again each run, for the Store check; None: nothing."""
        if self.nulls == "include":
            return "`nulls: include` re-reads the NULL-watermark rows"
        if self.lag is not None:
            return "`lag` re-reads the rows of the lag window"
        return None


class EntitySpec(BaseModel):
    """One table or file set. Fields not listed here override the Home's or Store's settings."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)
    name: str
    table: str | None = None
    query: str | None = None
    path: str | None = None
    columns: list[str] | None = None
    where: str | None = None
    watermark: WatermarkSpec | None = None
    batch_size: int = Field(default=100_000, ge=1, le=10_000_000)
    run_type: RunType | None = None
    polish: PolishSpec | None = None
    drift: SchemaSpec = Field(default_factory=SchemaSpec, alias="schema")
    reencode: Literal["auto", "always"] = Field(
        default="auto",
        description="`auto`: Parquet files nothing would change (no polish, watermark, "
        "columns or where) are copied into the Store as they are; `always`: decode and "
        "re-encode them with the Store's codec and row groups.",
    )
    incremental: Literal["files"] | None = Field(
        default=None,
        description="`files`: each run loads only the files of the entity's `path` that no run "
        "has loaded yet (file Homes); the ledger remembers them.",
    )
    changed_files: Literal["fail", "reload"] = Field(
        default="fail",
        description="With `incremental: files`, a loaded file that has changed since: `fail` "
        "(loading it again would repeat its rows) or `reload` it (a Store that merges by key).",
    )
    deletes: DeletesSpec | None = Field(
        default=None,
        description="`deletes: detect` deletes at the destination the rows deleted at the "
        "source, found by comparing key sets; needs the watermark's `keys`.",
    )
    changes: Literal["change_tracking"] | None = Field(
        default=None,
        description="`change_tracking`: read SQL Server's Change Tracking (a `table` with "
        "`keys`): the whole table first, then the rows inserted, updated and deleted since the "
        "version the last run reached.",
    )
    keys: list[str] | None = Field(
        default=None,
        description="With `changes:`, the table's primary key columns: changed rows are "
        "upserted and deleted rows deleted by them.",
    )
    allow_empty: bool = Field(
        default=False,
        description="Let a replace (first load, --full-drop, an entity without a watermark) "
        "publish an empty table over one that has rows; without it a source that returns no "
        "rows fails the entity and the published table stays.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _ENTITY_NAME.match(v) or v.startswith((".", "_")) or v in ("..",):
            msg = "must not contain '/' or '\\' nor start with '.' or '_' (it names a folder)"
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> EntitySpec:
        if self.table and self.query:
            msg = "give `table` or `query`, not both"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _one_increment(self) -> EntitySpec:
        if self.incremental == "files" and self.watermark is not None:
            msg = (
                "give `incremental: files` (new files only) or a `watermark` (new rows by "
                "column), not both"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _deletes_need_keys(self) -> EntitySpec:
        # an entity without a watermark is reloaded in full every run: its deletes need nothing
        if self.deletes is not None and self.watermark is not None and not self.watermark.keys:
            msg = (
                "`deletes` compares the source's keys with the destination's: give the "
                "watermark `keys` that identify a row"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _change_tracking(self) -> EntitySpec:
        if self.changes is None:
            if self.keys:
                msg = (
                    "`keys` names the primary key for `changes: change_tracking`; the keys of "
                    "a watermark go under `watermark.keys`"
                )
                raise ValueError(msg)
            return self
        problem = change_tracking.problem(self)
        if problem:
            msg = f"`changes: change_tracking` {problem}"
            raise ValueError(msg)
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        """Fields meant for the Home or Store (everything not an entity field)."""
        return dict(self.model_extra or {})


class TaskRunnerSpec(BaseModel):
    """Where entity tasks run: threads in the flow's process, or an existing Dask cluster."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    type: Literal["threads", "dask"] = "threads"
    address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); empty with "
        "`type: dask` starts a temporary local cluster.",
    )


class FlowSpec(BaseModel):
    """A whole job: one Home, one Store, the entities that move between them."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Lowercase; names the ledger.")
    home: str | dict[str, Any]
    store: str | dict[str, Any]
    run_type: RunType = "incremental"
    concurrency: int = Field(default=4, ge=1, le=64)
    defaults: dict[str, Any] = Field(default_factory=dict)
    ledger: str | None = Field(default=None, description="Ledger block name; default from `name`.")
    task_runner: TaskRunnerSpec = Field(default_factory=TaskRunnerSpec)
    lock_wait_seconds: float = Field(
        default=0.0, ge=0, description="How long to wait for another run on the same Store."
    )
    retries: int = Field(default=3, ge=0, le=10)
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    bundle_entities: bool = Field(
        default=True,
        description="With many entities, move several to one Prefect task run (one journal "
        "record and retries each, threads runner only); false: one task run per entity.",
    )
    entities: list[EntitySpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("entities"), list):
            defaults = data.get("defaults") or {}
            if not isinstance(defaults, dict):
                return data
            data = dict(data)
            data["entities"] = [
                _with_defaults(defaults, e) if isinstance(e, dict) else e for e in data["entities"]
            ]
        return data

    @model_validator(mode="after")
    def _unique(self) -> FlowSpec:
        names = [e.name for e in self.entities]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"entity names must be unique; repeated: {', '.join(dupes)}"
            raise ValueError(msg)
        return self

    @property
    def ledger_name(self) -> str:
        return self.ledger or "hygge-ledger-" + self.name.replace("_", "-")

    def entity(self, name: str) -> EntitySpec:
        for e in self.entities:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.entities)
        msg = f"no entity named {name!r} in spec {self.name!r} (entities: {known})"
        raise ConfigError(msg)


def _with_defaults(defaults: dict[str, Any], entity: dict[str, Any]) -> dict[str, Any]:
    """An entity's fields over the defaults; `polish` and `schema` merge key by key.

    So `defaults: {polish: {case: snake_case}}` and an entity's `polish: {hash_id: ...}` give
    both; an entity's `polish: null` turns the defaults' polish off.
    """
    merged = {**defaults, **entity}
    for key in ("polish", "schema"):
        mine, common = entity.get(key), defaults.get(key)
        if isinstance(mine, dict) and isinstance(common, dict):
            merged[key] = {**common, **mine}
    return merged


def expand_env(value: Any, where: str = "spec", field: str = "") -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string of a parsed spec.

    As in the shell, `${VAR:-default}` uses the default when VAR is unset or empty.
    """
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            current = os.environ.get(name)
            if default is not None:
                return current or default
            if current is not None:
                return current
            at = f", field {field}" if field else ""
            msg = (
                f"{where}{at}: environment variable {name!r} is not set "
                f"and has no default (write ${{{name}:-default}})"
            )
            raise ConfigError(msg)

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, where, _join(field, k, value)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, where, _join(field, i, v)) for i, v in enumerate(value)]
    return value


def _join(field: str, key: Any, value: Any) -> str:
    """Extend a field path for messages: `home.path`, `entities['orders'].path` (by name)."""
    if isinstance(key, int):
        name = value.get("name") if isinstance(value, dict) else None
        return f"{field}[{name!r}]" if isinstance(name, str) else f"{field}[{key}]"
    return f"{field}.{key}" if field else str(key)


def parse_spec(data: Any, source: str = "spec") -> FlowSpec:
    """Validate a spec given as a mapping; `source` names it in errors.

    Every problem is reported at once, before anything connects or moves: the spec's fields,
    the inline `home:`/`store:` blocks (type, keys, values) and every key an entity or the
    `defaults` give (an entity field, or a setting of the Home or the Store).
    """
    if not isinstance(data, dict):
        msg = f"{source}: a flow spec must be a mapping with `name`, `home`, `store`, `entities`"
        raise ConfigError(msg)
    data = expand_env(data, source)
    problems: list[str] = []
    spec: FlowSpec | None = None
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        problems += _describe(exc, data)
        cause: Exception | None = exc
    else:
        cause = None
    problems += _block_problems(data)
    if problems or spec is None:
        lines = "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
        msg = f"{source}: invalid flow spec:\n{lines}"
        raise ConfigError(msg) from cause
    return spec


def _block_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with the inline blocks, and keys no entity, Home or Store setting knows.

    A saved block's class is known from its reference (`sqlite-home/shop`) when hygge defines
    it; otherwise entity keys are checked once the block is loaded (`flows.plan.build_jobs`).
    """
    problems: list[str] = []
    classes: list[type[Block] | None] = []
    for role, kinds in (("home", HOMES), ("store", STORES)):
        ref = data.get(role)
        if isinstance(ref, dict):
            cls, found = block_problems(ref, kinds, f"field {role}")
            problems += found
        else:
            cls = _saved_class(ref, kinds)
        classes.append(cls)
    home, store = classes
    if home is None or store is None:
        return problems
    defaults = data.get("defaults")
    for key in defaults if isinstance(defaults, dict) else []:
        if wrong := setting_problem(key, home, store):
            problems.append(f"field defaults.{key}: {wrong}")
    raw = data.get("entities")
    for i, entity in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(entity, dict):
            continue
        name = entity.get("name")
        at = f"entity {name!r}" if isinstance(name, str) else f"entities[{i}]"
        for key in entity:
            if wrong := setting_problem(key, home, store):
                problems.append(f"{at}, field {key}: {wrong}")
    return problems


def setting_problem(key: str, home: type[BaseModel], store: type[BaseModel]) -> str | None:
    """What is wrong with an entity's key, or None when it is an entity field or a setting."""
    allowed = [*valid_keys(EntitySpec), *home.model_fields, *store.model_fields]
    if key in allowed:
        return None
    what = f" (not an entity field, nor a setting of {home.__name__} or {store.__name__})"
    return unknown_key(key, allowed, what)


def _saved_class(ref: Any, kinds: Mapping[str, type[Block]]) -> type[Block] | None:
    """The class of a saved block reference whose block type hygge defines, else None."""
    if not isinstance(ref, str) or "/" not in ref:
        return None
    by_slug = getattr(kinds, "by_slug", None)
    if by_slug is None:  # a plain mapping: look at each class
        slug = ref.split("/", 1)[0]
        return next((c for c in kinds.values() if c.get_block_type_slug() == slug), None)
    found: type[Block] | None = by_slug(ref.split("/", 1)[0])
    return found


def load_spec(path: str | Path) -> FlowSpec:
    """Read and validate a YAML spec file."""
    return parse_spec(read_yaml(path), str(path))


def read_yaml(path: str | Path, what: str = "spec file") -> Any:
    """The parsed YAML of a file; every reading problem is a `ConfigError` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{what} {str(p)!r} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        raise ConfigError(msg) from exc
    except FileNotFoundError as exc:
        msg = f"{what} {str(p)!r} does not exist (looked from {Path.cwd()})"
        raise ConfigError(msg) from exc
    except OSError as exc:
        msg = f"cannot read {what} {str(p)!r}: {exc.strerror}"
        raise ConfigError(msg) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{p}: not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    return data


def _describe(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """One `where: what` line per error; unknown keys get the closest valid key.

    An entity's error that comes from `defaults` (merged into every entity) is reported once,
    at `defaults`.
    """
    lines = []
    raw = data.get("entities")
    entities: list[Any] = raw if isinstance(raw, list) else []
    defaults = data.get("defaults")
    for err in exc.errors():
        # pydantic reports union branches as `str`/`dict[str,any]`; they add nothing for a reader
        loc = [p for p in err["loc"] if p not in ("str", "dict[str,any]")]
        where = []
        model: type[BaseModel] = FlowSpec
        if len(loc) >= 2 and loc[0] == "entities" and isinstance(loc[1], int):
            idx, loc, model = loc[1], loc[2:], EntitySpec
            entity = entities[idx] if idx < len(entities) else None
            name = entity.get("name") if isinstance(entity, dict) else None
            if loc and not _has(entity, loc) and _has(defaults, loc):
                loc = ["defaults", *loc]
                model = FlowSpec
            else:
                where.append(f"entity {name!r}" if name else f"entities[{idx}]")
        if loc:
            where.append("field " + ".".join(str(p) for p in loc))
        what = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            parent = _model_at_path(model, loc[:-1])
            if parent is not None:
                what = unknown_key(loc[-1], valid_keys(parent))
        lines.append(f"{', '.join(where) or 'spec'}: {what}")
    return lines


def _model_at_path(model: type[BaseModel], loc: list[str | int]) -> type[BaseModel] | None:
    if loc[:1] == ["defaults"]:  # the defaults are entity fields
        return model_at(EntitySpec, loc[1:])
    return model_at(model, loc)


def _has(node: Any, loc: list[str | int]) -> bool:
    """Whether the raw spec data holds `loc` (a `hash_id` mapping stands for its list)."""
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
        elif isinstance(part, int) and isinstance(node, dict) and part == 0:
            continue
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def load_any(spec: str | Path | dict[str, Any]) -> FlowSpec:
    """A spec given as a YAML file's path or as a mapping (a flow parameter)."""
    return parse_spec(spec, "spec parameter") if isinstance(spec, dict) else load_spec(spec)

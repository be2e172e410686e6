"""hygge projects: a `hygge.yml` and one folder per flow, loaded as validated flow specs.

    hygge.yml                      name, flows_dir (default `flows`), options: {concurrency}
    flows/<flow>/flow.yml          home, store, run_type, watermark, defaults, entities, ...
    flows/<flow>/entities/*.yml    one entity per file (its `name` defaults to the file name)

A flow.yml takes today's flow-spec keys (`flows.spec.FlowSpec`) and the earlier hygge's where
they mean the same (`flows._earlier`); a key that maps onto nothing is an error naming the
file, the key and what to write instead. Each flow's spec `name` is `<project>_<flow>`
lowercased, so each flow has its own ledger. Relative paths are relative to the project root
(the folder holding hygge.yml) and become absolute, so a project runs from any folder.
`options.concurrency` is how many entities of a flow move at once unless its flow.yml sets
`concurrency`. `${VAR}` and `${VAR:-default}` are expanded in every file, as in a spec.

An entity without `path`, `table` or `query` is read by its name: the table `<name>` of a SQL
Home, and `<Home path>/<name>` of a file Home (the folder, or the one file `<name>.<suffix>`
when that exists instead). A flow without entities is one entity, named after the flow, that
reads the whole path of its file Home.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prefect.blocks.core import Block

from blocks import HOMES, STORES
from flows import _earlier
from flows._earlier import check_keys, mapping
from flows._entities import ENTITY_FIELDS, JOURNAL, FlowEntities, put, run_type
from flows.plan import resolve_block, with_overrides
from flows.spec import FlowSpec, expand_env, parse_spec, read_yaml
from hygge_core.errors import ConfigError

PROJECT_FILE = "hygge.yml"
FLOW_FILE = "flow.yml"
_FLOW_KEYS = (set(FlowSpec.model_fields) - {"name"}) | {"name", "watermark", "full_drop"}
_OURS = ("name", "defaults", "home", "store")
_PROJECT_REFUSED = {
    "connections": "save each connection as a block (`mssql-home/<name>`, "
    "`postgres-home/<name>`) and write `home: <type>-home/<name>` in the flow.yml",
    "journal": JOURNAL,
}
_FLOW_REFUSED = {
    "journal": JOURNAL,
    "options": "write each setting as a key of the flow.yml (e.g. `concurrency`)",
    "queue_size": "read-ahead is bounded by the Homes themselves; remove it",
    "timeout": "remove it (SQL Homes have their own `query_timeout`)",
} | {
    k: "an entity setting: write it under `defaults:` (every entity) or in an entity"
    for k in ENTITY_FIELDS - _FLOW_KEYS
}


def find_project(start: Path) -> Path | None:
    """The `hygge.yml` in `start` or the nearest folder above it, or None."""
    here = Path(start).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Project:
    """A loaded project: its flows by folder name, each a validated spec."""

    name: str
    root: Path
    concurrency: int
    flows: dict[str, FlowSpec]

    def select(
        self, flows: list[str] | None, entities: list[str] | None
    ) -> list[tuple[str, FlowSpec, list[str] | None]]:
        """The flows to run, each with its selected entities (None: all), in project order.

        `flows` are flow names, `entities` `<flow>.<entity>` names; with neither, every flow.
        A flow named in `flows` runs whole even if some of its entities are also named.
        """
        picked: dict[str, list[str] | None] = {}
        for name in flows or []:
            if name not in self.flows:
                msg = f"no flow named {name!r} in project {self.name!r} (flows: {self._known()})"
                raise ConfigError(msg)
            picked[name] = None
        for item in entities or []:
            flow, entity = self._split(item)
            if flow in picked and picked[flow] is None:
                continue
            chosen = picked.setdefault(flow, [])
            if chosen is not None and entity not in chosen:
                chosen.append(entity)
        if not flows and not entities:
            picked = dict.fromkeys(self.flows)
        return [(f, spec, picked[f]) for f, spec in self.flows.items() if f in picked]

    def _known(self) -> str:
        return ", ".join(self.flows)

    def _split(self, item: str) -> tuple[str, str]:
        # flow and entity names may hold dots: the longest flow name that fits wins
        flows = sorted((f for f in self.flows if item.startswith(f + ".")), key=len)
        if not flows:
            msg = (
                f"{item!r} does not name an entity as <flow>.<entity> of project "
                f"{self.name!r} (flows: {self._known()})"
            )
            raise ConfigError(msg)
        flow = flows[-1]
        entity = item[len(flow) + 1 :]
        names = [e.name for e in self.flows[flow].entities]
        if entity not in names:
            msg = f"flow {flow!r} has no entity {entity!r} (entities: {', '.join(names)})"
            raise ConfigError(msg)
        return flow, entity


def load_project(path: Path) -> Project:
    """Read and validate a project from its `hygge.yml` (or the folder holding it)."""
    file = Path(path).resolve()
    if file.is_dir():
        file = file / PROJECT_FILE
    root = file.parent
    raw = mapping(expand_env(read_yaml(file, "project file") or {}, str(file)), file, "")
    check_keys(raw, file, "", {"name", "flows_dir", "options"}, _PROJECT_REFUSED)
    name = raw.get("name", root.name)
    flows_dir = raw.get("flows_dir", "flows")
    for key, value in (("name", name), ("flows_dir", flows_dir)):
        if not isinstance(value, str) or not value.strip():
            msg = f"{file}: `{key}` must be a non-empty text, not {value!r}"
            raise ConfigError(msg)
    options = mapping(raw.get("options") or {}, file, "options")
    check_keys(
        options,
        file,
        "options.",
        {"concurrency"},
        {"continue_on_error": "remove it: each flow of a run reports its own result"},
    )
    concurrency = options.get("concurrency", FlowSpec.model_fields["concurrency"].default)
    whole = isinstance(concurrency, int) and not isinstance(concurrency, bool)
    if not whole or not 0 < concurrency < 65:
        msg = f"{file}: `options.concurrency` must be a whole number from 1 to 64, not "
        msg += repr(concurrency)
        raise ConfigError(msg)
    folder = root / flows_dir
    if not folder.is_dir():
        msg = f"{file}: the flows folder {str(folder)!r} does not exist; create it or fix flows_dir"
        raise ConfigError(msg)
    flows: dict[str, FlowSpec] = {}
    for flow_dir in sorted(folder.iterdir()):
        if not flow_dir.is_dir() or flow_dir.name.startswith((".", "_")):
            continue
        if (flow_dir / FLOW_FILE).is_file():
            flows[flow_dir.name] = _load_flow(name, root, flow_dir, concurrency)
        elif (flow_dir / "flow.yaml").is_file():
            msg = f"{flow_dir / 'flow.yaml'}: a flow's file is named {FLOW_FILE}; rename it"
            raise ConfigError(msg)
    if not flows:
        msg = f"{file}: no flows: {str(folder)!r} holds no <flow>/{FLOW_FILE}"
        raise ConfigError(msg)
    _distinct(flows, file)
    return Project(name=name, root=root, concurrency=concurrency, flows=flows)


def spec_name(project: str, flow: str) -> str:
    """`<project>_<flow>`, lowercased, other characters than `a-z0-9_-` as `_`."""
    return re.sub(r"[^a-z0-9_-]+", "_", f"{project}_{flow}".lower()).strip("_-")


def _distinct(flows: dict[str, FlowSpec], file: Path) -> None:
    """Two flows must not share a spec name or a ledger (they would share watermarks)."""
    for attr in ("name", "ledger_name"):
        seen: dict[str, str] = {}
        for flow, spec in flows.items():
            value = getattr(spec, attr)
            if value in seen:
                msg = (
                    f"{file}: flows {seen[value]!r} and {flow!r} would share the {attr} "
                    f"{value!r}; rename one of their folders"
                )
                raise ConfigError(msg)
            seen[value] = flow


def _load_flow(project: str, root: Path, flow_dir: Path, concurrency: int) -> FlowSpec:
    file = flow_dir / FLOW_FILE
    raw = mapping(expand_env(read_yaml(file, "flow file") or {}, str(file)), file, "")
    check_keys(raw, file, "", _FLOW_KEYS, _FLOW_REFUSED)
    if raw.get("name", flow_dir.name) != flow_dir.name:
        msg = (
            f"{file}: `name` {raw['name']!r} differs from the flow's folder {flow_dir.name!r}; "
            "the folder names the flow: remove `name` or rename the folder"
        )
        raise ConfigError(msg)
    for role in ("home", "store"):
        if role not in raw:
            msg = f"{file}: no `{role}`; every flow needs a `home` and a `store`"
            raise ConfigError(msg)
    home, home_cls, home_extra = _earlier.block(raw["home"], root, file, "home")
    store, store_cls, store_extra = _earlier.block(raw["store"], root, file, "store")
    reader = FlowEntities(file, root, home, home_cls, store_cls)

    # today's keys pass through; `name` is the project's, `defaults` is translated below
    out = {k: v for k, v in raw.items() if k in FlowSpec.model_fields and k not in _OURS}
    if "full_drop" in raw:
        put(out, "run_type", run_type(raw["full_drop"], file, "full_drop"), file, "full_drop")
    defaults, defaults_earlier = reader.entity(
        mapping(raw.get("defaults") or {}, file, "defaults"), file, "defaults."
    )
    for key, value in [*home_extra.items(), *store_extra.items()]:
        source = f"{'home' if key == 'batch_size' else 'store'}.{key}"
        value = _earlier.polish(value, file, source) if key == "polish" else value
        put(defaults, key, value, file, source)
    if "watermark" in raw:
        wm, defaults_earlier = _earlier.watermark(raw["watermark"], file, "watermark")
        put(defaults, "watermark", wm, file, "watermark")

    entities = reader.all(flow_dir, raw.get("entities"))
    if not entities:
        entities = [reader.implicit(flow_dir.name)]
    for entity, earlier in entities:
        reader.by_name(entity, defaults)
        inherited = defaults_earlier and "watermark" not in entity
        wm = entity["watermark"] if "watermark" in entity else defaults.get("watermark")
        run_set = "run_type" in out or "run_type" in entity or "run_type" in defaults
        if (earlier or inherited) and wm and not run_set:
            msg = (
                f"{file}: entity {entity.get('name')!r} has a watermark in the earlier spelling "
                "(primary_key, watermark_column) but no `run_type`; the earlier hygge defaulted "
                "to full_drop, today's to incremental: write `run_type: incremental` (or "
                "full_drop) in the flow.yml or the entity"
            )
            raise ConfigError(msg)
    out.setdefault("concurrency", concurrency)
    name = spec_name(project, flow_dir.name)
    if not name:
        msg = f"{file}: project {project!r} and flow {flow_dir.name!r} give no usable spec name"
        raise ConfigError(msg)
    data = {"name": name, **out, "home": home, "store": store, "defaults": defaults}
    spec = parse_spec({**data, "entities": [e for e, _ in entities]}, str(file))
    _check_overrides(spec, file)
    return spec


def _check_overrides(spec: FlowSpec, file: Path) -> None:
    """Build inline blocks, with each entity's settings applied, so bad values fail now."""
    blocks: list[tuple[Block, str]] = []
    for ref, kinds, role in ((spec.home, HOMES, "home"), (spec.store, STORES, "store")):
        if isinstance(ref, dict):
            try:
                blocks.append((resolve_block(ref, kinds, role), role))
            except ConfigError as exc:
                msg = f"{file}: {exc}"
                raise ConfigError(msg) from exc
    for entity in spec.entities:
        for block, role in blocks:
            try:
                with_overrides(block, entity, set())
            except ConfigError as exc:
                msg = f"{file}: entity {entity.name!r}: {role} settings: {exc}"
                raise ConfigError(msg) from exc

"""One flow's entities in today's keys: from the flow.yml's list or from entities/*.yml.

Each entity (and the flow's `defaults`) takes today's entity fields, the Home's and the Store's
settings, and the earlier hygge's nested `home: {path, table, query}` and `store: {polish}`;
see `flows.project` for how an entity without a source is read by its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block

from blocks import HomeBlock, StoreBlock
from flows import _earlier
from flows._earlier import FILE_SUFFIXES, check_keys, mapping
from flows.spec import EntitySpec, expand_env, read_yaml
from hygge_core.errors import ConfigError

ENTITY_FIELDS = {f.alias or n for n, f in EntitySpec.model_fields.items()}
SOURCE = ("path", "table", "query")
JOURNAL = "the run journal is always written beside the data; remove it"

_ENTITY_REFUSED = {
    "journal": JOURNAL,
    "options": "write each setting as a key of the entity (e.g. `batch_size`)",
    "if_exists": "write `run_type: full_drop` to replace a table on every run",
    "parallel_workers": "write `concurrency:` in the flow.yml (entities moving at once)",
    "timeout": "remove it (SQL Homes have their own `query_timeout`)",
    "folder_deletion_wait_seconds": "the Store decides how long a replace waits; remove it",
}


def put(out: dict[str, Any], key: str, value: Any, file: Path, source: str) -> None:
    if key in out:
        msg = f"{file}: `{source}` and `{key}` both set `{key}`; keep one"
        raise ConfigError(msg)
    out[key] = value


def run_type(value: Any, file: Path, key: str) -> str:
    if not isinstance(value, bool):
        msg = f"{file}: `{key}` must be true or false, not {value!r}"
        raise ConfigError(msg)
    return "full_drop" if value else "incremental"


class FlowEntities:
    """Reads one flow's entities (flow.yml list, entities/ files) in today's spelling."""

    def __init__(
        self,
        file: Path,
        root: Path,
        home: str | dict[str, Any],
        home_cls: type[Block],
        store_cls: type[Block],
    ) -> None:
        self.file, self.root, self.home = file, root, home
        self.kind = getattr(home_cls, "spec_type", "")
        self.home_fields = set(home_cls.model_fields) - ENTITY_FIELDS
        self.store_fields = set(store_cls.model_fields) - ENTITY_FIELDS
        assert issubclass(home_cls, HomeBlock) and issubclass(store_cls, StoreBlock)

    def all(self, flow_dir: Path, listed: Any) -> list[tuple[dict[str, Any], bool]]:
        folder = flow_dir / "entities"
        files = sorted(folder.glob("*.yml")) if folder.is_dir() else []
        for odd in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            msg = f"{odd}: entity files end in .yml; rename it to {odd.stem}.yml"
            raise ConfigError(msg)
        if listed is not None and files:
            msg = (
                f"{self.file}: `entities` is listed here and {str(folder)!r} holds entity "
                "files; keep one of the two"
            )
            raise ConfigError(msg)
        if listed is not None and not isinstance(listed, list):
            msg = f"{self.file}: `entities` must be a list of names or mappings"
            raise ConfigError(msg)
        out = []
        for i, item in enumerate(listed or []):
            if isinstance(item, str):
                out.append(({"name": item}, False))
                continue
            data = mapping(item, self.file, f"entities[{i}]")
            label = data.get("name", i)
            out.append(self.entity(data, self.file, f"entities[{label}]."))
        for f in files:
            data = mapping(expand_env(read_yaml(f, "entity file") or {}, str(f)), f, "")
            out.append(self.entity({"name": f.stem, **data}, f, ""))
        return out

    def entity(self, data: dict[str, Any], file: Path, prefix: str) -> tuple[dict[str, Any], bool]:
        """An entity (or `defaults`) in today's keys, and whether its watermark is earlier-style."""
        valid = {*ENTITY_FIELDS, *self.home_fields, *self.store_fields, "home", "store"}
        valid.add("full_drop")
        refuse = dict(_ENTITY_REFUSED)
        if prefix == "defaults.":
            valid.discard("name")
            refuse["name"] = "defaults apply to every entity; give each entity its own `name`"
        check_keys(data, file, prefix, valid, refuse)
        out: dict[str, Any] = {}
        earlier = False
        for key, value in data.items():
            where = prefix + key
            if key == "watermark":
                wm, earlier = _earlier.watermark(value, file, where)
                put(out, key, wm, file, where)
            elif key == "polish":
                put(out, key, _earlier.polish(value, file, where), file, where)
            elif key == "full_drop":
                put(out, "run_type", run_type(value, file, where), file, where)
            elif key in ("home", "store"):
                self._nested(key, mapping(value, file, where), out, file, where)
            else:
                put(out, key, value, file, where)
        return out, earlier

    def _nested(
        self, role: str, data: dict[str, Any], out: dict[str, Any], file: Path, where: str
    ) -> None:
        """The earlier entity-level `home: {path, table, ...}` and `store: {polish, ...}`."""
        mine, other = (
            (self.home_fields, self.store_fields)
            if role == "home"
            else (self.store_fields, self.home_fields)
        )
        own = {*SOURCE} if role == "home" else {"polish"}
        valid = own | (mine - other)
        refuse = {
            "table": "a Store writes each entity under the entity's name; rename the entity",
        }
        check_keys(data, file, where + ".", valid, refuse if role == "store" else None)
        for key, value in data.items():
            if key == "polish":
                value = _earlier.polish(value, file, f"{where}.polish")
            put(out, key, value, file, f"{where}.{key}")

    def by_name(self, entity: dict[str, Any], defaults: dict[str, Any]) -> None:
        """Give an entity with no `path`, `table` or `query` the one its name implies."""
        name = entity.get("name")
        base = self.home.get("path") if isinstance(self.home, dict) else None
        if isinstance(self.home, dict) and base is None and self.kind in FILE_SUFFIXES:
            # an inline file Home without a path reads entity paths from the working
            # directory: anchor them at the project root instead
            for holder in (entity, defaults):
                if isinstance(holder.get("path"), str):
                    holder["path"] = str(self.root / holder["path"])
        if not isinstance(name, str) or any(k in entity or k in defaults for k in SOURCE):
            return
        if self.kind not in FILE_SUFFIXES:
            entity["table"] = name
            return
        if base is None:
            # a saved Home joins the name with its own path
            entity["path"] = name if isinstance(self.home, str) else str(self.root / name)
            return
        folder = Path(base)
        if folder.is_file() or folder.suffix.lower() in FILE_SUFFIXES[self.kind]:
            msg = (
                f"{self.file}: entity {name!r} has no `path`, and the Home's path {base!r} is a "
                "file; give the entity a `path` (or make the Home's path a folder)"
            )
            raise ConfigError(msg)
        found = [name + s for s in FILE_SUFFIXES[self.kind] if (folder / (name + s)).is_file()]
        if (folder / name).is_dir():
            found.append(name)
        if len(found) > 1:
            msg = (
                f"{self.file}: entity {name!r} could read any of {', '.join(found)} under "
                f"{base!r}; give it a `path`"
            )
            raise ConfigError(msg)
        entity["path"] = found[0] if found else name

    def implicit(self, flow: str) -> tuple[dict[str, Any], bool]:
        """The one entity of a flow that lists none: its file Home's whole path."""
        base = self.home.get("path") if isinstance(self.home, dict) else None
        if self.kind not in FILE_SUFFIXES or base is None:
            msg = (
                f"{self.file}: no entities; list them under `entities:` or as files in "
                f"{str(self.file.parent / 'entities')!r}"
            )
            raise ConfigError(msg)
        return {"name": flow, "path": base}, False

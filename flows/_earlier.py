"""The earlier hygge's project keys, mapped onto today's flow spec.

A project (`flows.project`) accepts today's spelling of every key and the earlier hygge's
spelling where the meaning is the same; an earlier key whose meaning differs is refused with
what to write instead, never dropped.

    watermark: {primary_key, watermark_column}   -> watermark: {column, keys}
    home: / store: a bare path                    -> {type: ..., path: <absolute path>}
    home/store `type: local` with `format:`       -> type csv / parquet
    store `type: openmirroring`                   -> open_mirroring
    full_drop: true / false                       -> run_type: full_drop / incremental
    polish columns.case: pascal, camel, snake     -> case: PascalCase, camelCase, snake_case
    polish hash_ids: [{name, from_columns}]       -> hash_id: [{name, columns}]
    polish constants: [{name, value}]             -> constants: {name: value}
    polish timestamps: [{name}] (one, now_utc)    -> load_timestamp: name

Hash IDs are today's (`hygge_tasks.rowhash`: 32 hex characters of SHA-256 over a canonical
encoding), not the values the earlier hygge wrote for the same rows.

Bare paths: a string is a saved-block reference when it reads `<slug>/<name>` with a slug
ending in `-home` or `-store` (`sqlite-home/shop`); any other string is a path, relative to the
project root. If a reference also names an existing file or folder under the root it is refused
as ambiguous (write `./sqlite-home/shop` for the path). A Home's path gives its type by suffix:
`.parquet`/`.parq` parquet, `.csv`/`.tsv`/`.txt` csv, `.sqlite`/`.sqlite3`/`.db` sqlite; a path
without one of these names a folder: csv when it holds CSV files and no Parquet files, parquet
otherwise, refused when it holds both. A Store's path names a folder of Parquet tables.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block

from blocks import HOMES, STORES
from hygge_core.errors import ConfigError
from hygge_tasks.polish import PolishSpec

_REF = re.compile(r"^([a-z0-9][a-z0-9-]*-(?:home|store))/([^/\\]+)$")
#: hygge's block type slugs (`sqlite-home`), known without importing every block class
SLUGS: list[str] = sorted([*HOMES.slugs(), *STORES.slugs()])
FILE_SUFFIXES = {"parquet": (".parquet", ".parq"), "csv": (".csv", ".tsv", ".txt")}
_SQLITE = (".sqlite", ".sqlite3", ".db")
_LOCAL_PATH = {"home": {"parquet", "csv", "sqlite"}, "store": {"parquet"}}
_RENAMED_TYPES = {"openmirroring": "open_mirroring"}
_SCAN_LIMIT = 1000  # files looked at to tell a Parquet folder from a CSV folder

_CASES = {"pascal": "PascalCase", "camel": "camelCase", "snake": "snake_case"}
_POLISH = set(PolishSpec.model_fields) | {"columns", "hash_ids", "timestamps", "add_row_marker"}
_POLISH_REFUSED = {
    "add_row_marker": "the Open Mirroring Store writes `__rowMarker__` itself (its `row_marker: "
    "upsert|insert` setting); for another Store write `constants: {__rowMarker__: 4}`",
}
_BLOCK_REFUSED = {
    "options": "it has no meaning today; write each setting as a key of its own",
    "format_options": "write the format's settings as keys of the Home (e.g. `delimiter`)",
    "connection": "save the connection as a block (e.g. `mssql-home/<name>`) and write "
    "`home: mssql-home/<name>`",
    "file_pattern": "a Store names its files itself (`part-<run id>-<n>.parquet`); remove it",
}


def key_error(file: Path, key: str, valid: Iterable[str]) -> ConfigError:
    """An unknown key: name the file and the key, and suggest the closest valid key."""
    choices = sorted(valid)
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, choices, n=1, cutoff=0.6)
    if close:
        fix = f"did you mean `{parent + '.' if parent else ''}{close[0]}`?"
    else:
        fix = f"valid keys here: {', '.join(choices)}"
    return ConfigError(f"{file}: unknown key `{key}`; {fix}")


def refused(file: Path, key: str, why: str) -> ConfigError:
    return ConfigError(f"{file}: key `{key}` cannot be used: {why}")


def check_keys(
    data: Mapping[Any, Any],
    file: Path,
    prefix: str,
    valid: Iterable[str],
    refuse: Mapping[str, str] | None = None,
) -> None:
    """Every key of `data` is valid, or a `ConfigError` says which is not and what to write."""
    allowed = set(valid)
    for raw in data:
        key = str(raw)
        if refuse and key in refuse:
            raise refused(file, prefix + key, refuse[key])
        if key not in allowed:
            raise key_error(file, prefix + key, allowed)


def mapping(value: Any, file: Path, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        where = f"`{key}`" if key else "the file"
        msg = f"{file}: {where} must be a mapping of keys to values, not {type(value).__name__}"
        raise ConfigError(msg)
    return value


def watermark(value: Any, file: Path, key: str) -> tuple[dict[str, Any] | None, bool]:
    """Today's watermark mapping, and whether it was written in the earlier spelling."""
    if value is None:
        return None, False
    data = mapping(value, file, key)
    check_keys(data, file, key + ".", {"column", "keys", "primary_key", "watermark_column"})
    earlier = {"primary_key", "watermark_column"} & set(data)
    if earlier and {"column", "keys"} & set(data):
        msg = (
            f"{file}: `{key}` mixes the earlier keys (primary_key, watermark_column) with "
            "today's (column, keys); write `{column: <column>, keys: [<key columns>]}`"
        )
        raise ConfigError(msg)
    if not earlier:
        return dict(data), False
    if "watermark_column" not in data:
        msg = f"{file}: `{key}` has `primary_key` but no `watermark_column` (the column that grows)"
        raise ConfigError(msg)
    pk = data.get("primary_key")
    keys = [] if pk is None else [pk] if isinstance(pk, str) else pk
    return {"column": data["watermark_column"], "keys": keys}, True


def polish(value: Any, file: Path, key: str) -> dict[str, Any] | None:
    """Today's `polish` mapping from today's keys or the earlier hygge's."""
    if value is None:
        return None
    data = mapping(value, file, key)
    check_keys(data, file, key + ".", _POLISH, _POLISH_REFUSED)
    out = {k: v for k, v in data.items() if k in PolishSpec.model_fields and k != "constants"}

    def put(field: str, v: Any, source: str) -> None:
        if field in out:
            msg = f"{file}: `{key}.{source}` and `{key}.{field}` both set `{field}`; keep one"
            raise ConfigError(msg)
        out[field] = v

    if (columns := data.get("columns")) is not None:
        _columns(mapping(columns, file, f"{key}.columns"), file, f"{key}.columns", put)
    if (hash_ids := data.get("hash_ids")) is not None:
        put("hash_id", [_hash_id(h, file, f"{key}.hash_ids") for h in _list(hash_ids)], "hash_ids")
    constants = data.get("constants")
    if isinstance(constants, list):  # the earlier [{name, value}]
        pairs = [mapping(c, file, f"{key}.constants") for c in constants]
        for c in pairs:
            check_keys(c, file, f"{key}.constants.", {"name", "value"})
        out["constants"] = {c.get("name"): c.get("value") for c in pairs}
    elif constants is not None:
        out["constants"] = constants
    if (stamps := data.get("timestamps")) is not None:
        put("load_timestamp", _timestamp(_list(stamps), file, f"{key}.timestamps"), "timestamps")
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _columns(data: dict[str, Any], file: Path, key: str, put: Any) -> None:
    why = {
        "remove_special": "the earlier hygge also dropped text in parentheses; today's "
        "`polish: {remove_special: true}` keeps letters, digits and `_` (text in parentheses "
        "too): write that if it suits",
        "remove_spaces": "today's polish has no such rule; `case:` or `remove_special: true` "
        "join words without spaces",
    }
    # `false` asks for nothing, as today's default does
    check_keys(data, file, key + ".", {"case", *why}, {k: w for k, w in why.items() if data.get(k)})
    case = data.get("case")
    if case is None:
        return
    if case not in _CASES:
        msg = f"{file}: `{key}.case` must be pascal, camel or snake, not {case!r}"
        raise ConfigError(msg)
    put("case", _CASES[case], "columns.case")


def _hash_id(value: Any, file: Path, key: str) -> dict[str, Any]:
    data = mapping(value, file, key)
    why = "today's IDs are always 32 hex characters of SHA-256 (hygge_tasks.rowhash); remove it"
    refuse = {"algo": why} | ({"hex": why} if data.get("hex") is False else {})
    check_keys(data, file, key + ".", {"name", "from_columns", "hex"}, refuse)
    return {"name": data.get("name"), "columns": data.get("from_columns")}


def _timestamp(stamps: list[Any], file: Path, key: str) -> Any:
    if len(stamps) != 1:
        msg = f"{file}: `{key}` lists {len(stamps)} columns; today's polish adds one: "
        raise ConfigError(msg + "write `load_timestamp: <column>`")
    data = mapping(stamps[0], file, key)
    check_keys(data, file, key + ".", {"name", "source", "type", "format"})
    if data.get("source", "now_utc") != "now_utc" or data.get("type", "datetime") != "datetime":
        raise refused(file, key, "today's load timestamp is a UTC datetime; remove source/type")
    if "format" in data:
        raise refused(file, key + ".format", "today's load timestamp is a datetime, not text")
    return data.get("name")


def block(
    value: Any, root: Path, file: Path, role: str
) -> tuple[str | dict[str, Any], type[Block], dict[str, Any]]:
    """A Home or Store as today's spec writes it, its block class, and keys for `defaults`.

    `role` is `home` or `store`; the keys for `defaults` are an inline Home's `batch_size`
    (rows per batch) and an inline Store's `polish`.
    """
    kinds: Mapping[str, type[Block]] = HOMES if role == "home" else STORES
    if isinstance(value, str):
        if ref := _REF.match(value):
            return value, _ref_class(value, ref.group(1), root, file, role), {}
        _not_a_misspelt_ref(value, root, file, role)
        path = _absolute(root, value)
        inferred = _home_type(Path(path), file, role) if role == "home" else _store_path(path, file)
        return {"type": inferred, "path": path}, kinds[inferred], {}
    data = dict(mapping(value, file, role))
    given = data.get("type")
    kind: Any = _RENAMED_TYPES.get(given, given) if isinstance(given, str) else given
    if kind == "local":
        kind = data.pop("format", None) or _path_type(data, root, file, role)
    elif kind is None:
        kind = _path_type(data, root, file, role)
    if kind not in kinds:
        msg = f"{file}: `{role}.type` {kind!r} is not a {role} type"
        close = difflib.get_close_matches(str(kind), list(kinds), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(kinds)}"
        msg = f"{msg}; {hint}"
        raise ConfigError(msg)
    cls = kinds[kind]
    moved = "batch_size" if role == "home" else "polish"
    valid = {"type", moved, *cls.model_fields}
    check_keys(data, file, f"{role}.", valid, _BLOCK_REFUSED)
    extra = {moved: data.pop(moved)} if moved in data else {}
    if kind in _LOCAL_PATH[role] and isinstance(data.get("path"), str):
        data["path"] = _absolute(root, data["path"])
    data["type"] = kind
    return data, cls, extra


def _ref_class(value: str, slug: str, root: Path, file: Path, role: str) -> type[Block]:
    if slug not in SLUGS:
        msg = f"{file}: `{role}` {value!r} names an unknown block type {slug!r}"
        close = difflib.get_close_matches(slug, list(SLUGS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(SLUGS))}"
        msg = f"{msg}; {hint}"
        raise ConfigError(msg)
    if not slug.endswith(f"-{role}"):
        msg = f"{file}: `{role}` {value!r} is a {slug} block, not a {role}"
        raise ConfigError(msg)
    if (root / value).exists():
        msg = (
            f"{file}: `{role}` {value!r} is ambiguous: it reads as a saved block and names an "
            f"existing path under {str(root)!r}; write './{value}' for the path or "
            f"`{{type: ..., path: ...}}`"
        )
        raise ConfigError(msg)
    cls = HOMES.by_slug(slug) or STORES.by_slug(slug)
    assert cls is not None  # a known slug
    return cls


def _not_a_misspelt_ref(value: str, root: Path, file: Path, role: str) -> None:
    """Refuse `sqlite-hom/shop`: a path only by a typo, if nothing of that name exists."""
    first, slash, rest = value.partition("/")
    close = difflib.get_close_matches(first, list(SLUGS), n=1, cutoff=0.8)
    if slash and rest and "/" not in rest and close and not (root / first).exists():
        msg = (
            f"{file}: `{role}` {value!r} names an unknown block type {first!r}; did you mean "
            f"{close[0]!r}? (write './{value}' if it is a path)"
        )
        raise ConfigError(msg)


def _absolute(root: Path, path: str) -> str:
    """A project path as an absolute path (relative paths are relative to the project root)."""
    return os.path.normpath(root / Path(path).expanduser())


def _path_type(data: dict[str, Any], root: Path, file: Path, role: str) -> str:
    path = data.get("path")
    if not isinstance(path, str):
        msg = f"{file}: `{role}` has no `type`; give `type:` (or a `path:` to infer it from)"
        raise ConfigError(msg)
    full = _absolute(root, path)
    return _home_type(Path(full), file, role) if role == "home" else _store_path(full, file)


def _home_type(path: Path, file: Path, role: str) -> str:
    suffix = path.suffix.lower()
    for kind, suffixes in FILE_SUFFIXES.items():
        if suffix in suffixes:
            return kind
    if suffix in _SQLITE:
        return "sqlite"
    if path.is_file():
        msg = (
            f"{file}: cannot tell the type of `{role}` {str(path)!r} from its suffix; "
            f"write `{role}: {{type: parquet|csv|sqlite, path: ...}}`"
        )
        raise ConfigError(msg)
    kinds = _kinds_in(path)
    if len(kinds) > 1:
        msg = (
            f"{file}: `{role}` {str(path)!r} holds both Parquet and CSV files, so its type is "
            f"ambiguous; write `{role}: {{type: parquet, path: ...}}` (or csv)"
        )
        raise ConfigError(msg)
    return "csv" if kinds == {"csv"} else "parquet"


def _kinds_in(folder: Path) -> set[str]:
    """Which file Homes' files a folder holds (names starting with `.` or `_` are skipped)."""
    found: set[str] = set()
    seen = 0
    for _top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in files:
            seen += 1
            suffix = Path(name).suffix.lower()
            found |= {k for k, s in FILE_SUFFIXES.items() if suffix in s and name[0] not in "._"}
            if len(found) > 1 or seen >= _SCAN_LIMIT:
                return found
    return found


def _store_path(path: str, file: Path) -> str:
    p = Path(path)
    if p.is_file() or p.suffix.lower() in {*FILE_SUFFIXES["parquet"], *FILE_SUFFIXES["csv"]}:
        msg = (
            f"{file}: `store` {path!r} is a file; a Store's path is the folder that holds "
            "one folder per entity (e.g. `store: lake`)"
        )
        raise ConfigError(msg)
    return "parquet"

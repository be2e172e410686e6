"""Unknown keys in a spec: each one is an error naming the key and the closest valid one.

Pydantic reports unknown keys of the spec's own models (`extra="forbid"`), but Prefect Blocks
keep extra keys without a word, so a misspelt setting of an inline `home:` or `store:`
(`compresion: gzip`) would run with the default. `block_problems` checks an inline block's
`type:`, its keys (credentials included) and its values; `unknown_key` words every message.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def valid_keys(model: type[BaseModel]) -> list[str]:
    """The keys a mapping for `model` may hold: each field's alias, else its name."""
    return [f.alias or name for name, f in model.model_fields.items()]


def closest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key(key: object, valid: Iterable[str], what: str = "") -> str:
    """`unknown key, did you mean 'x'?`, or the valid keys when none is close."""
    valid = sorted(set(valid))
    near = closest(str(key), valid)
    head = f"unknown key{what}"
    if near is not None:
        return f"{head}, did you mean {near!r}?"
    return f"{head}; valid keys here: {', '.join(valid)}"


def model_at(model: type[BaseModel], loc: Iterable[str | int]) -> type[BaseModel] | None:
    """The model a validation error's location points into (`polish.hash_id.0`), if any."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return None
    models = [b for b in _branches(current) if _is_model(b)]
    return models[0] if len(models) == 1 else None


def _step(annotation: Any, part: str | int) -> Any:
    for branch in _branches(annotation):
        if isinstance(part, int) and get_origin(branch) is list:
            return get_args(branch)[0]
        if isinstance(part, str) and _is_model(branch):
            for name, field in branch.model_fields.items():
                if part in (field.alias, name):
                    return field.annotation
        if isinstance(part, str) and get_origin(branch) is dict:
            return get_args(branch)[1]
    return None


def _branches(annotation: Any) -> tuple[Any, ...]:
    """The members of `A | B | None`, or the annotation itself."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def nested_problems(model: type[BaseModel], data: Mapping[str, Any], where: str) -> list[str]:
    """`where.key: unknown key ...` for every key of `data` (and nested models') not in `model`.

    For models that keep extra keys (Blocks): their own validation never reports them.
    """
    problems = []
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"{where}.{key}: {unknown_key(key, fields)}")
            continue
        inner = [b for b in _branches(field.annotation) if _is_model(b)]
        if len(inner) == 1 and isinstance(value, Mapping):
            problems += nested_problems(inner[0], value, f"{where}.{key}")
    return problems


def block_problems(
    ref: Mapping[str, Any], kinds: Mapping[str, type[M]], where: str
) -> tuple[type[M] | None, list[str]]:
    """An inline block's class (None when its `type:` is unknown) and what is wrong with it.

    `where` names the mapping in messages (`home`). The values are validated too, so a spec
    that parses holds blocks that build.
    """
    kind = ref.get("type")
    choices = ", ".join(sorted(kinds))
    if kind is None:
        return None, [f"{where}: no `type:`; give one of: {choices}"]
    if not isinstance(kind, str) or kind not in kinds:
        near = closest(str(kind), kinds)
        hint = f", did you mean {near!r}?" if near else ""
        return None, [f"{where}.type: unknown type {kind!r}{hint} (choose one of: {choices})"]
    cls = kinds[kind]
    settings = {k: v for k, v in ref.items() if k != "type"}
    problems = nested_problems(cls, settings, where)
    try:
        cls.model_validate(settings)
    except ValidationError as exc:
        for err in exc.errors():
            at = ".".join(map(str, err["loc"]))  # empty for a rule on the whole block
            problems.append(f"{where}.{at}: {err['msg']}" if at else f"{where}: {err['msg']}")
    return cls, problems

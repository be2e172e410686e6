"""`hygge check`: try every Home, Store and concurrency limit of a spec for real, moving no data.

Each Home reads each entity's source with a zero-row read (`HomeBlock.check`), each distinct
Store area takes a probe that is written and removed again (`StoreBlock.check`), and each
global concurrency limit a Home names is looked up on the Prefect server. Every item is
checked even when another fails, and each failure is one line naming the entity, the cause
and the fix. The result passes only when every line is ok: the check never calls a spec fine
that a run would stumble on in one of these places.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from prefect.blocks.core import Block
from pydantic import BaseModel, SecretBytes, SecretStr

from blocks import HOMES, STORES, HomeBlock, StoreBlock
from flows.plan import entity_blocks, read_request, resolve_block, with_overrides
from flows.spec import EntitySpec, FlowSpec
from hygge_core.errors import ConfigError, HyggeError, first_line, is_transient, redact


@dataclass(frozen=True)
class CheckLine:
    """One check's outcome.

    `entity` is None when the check concerns every checked entity (the spec's Store, say), or
    the entity names, comma-separated, that share the checked item.
    """

    entity: str | None
    part: str  # "home" | "store" | "concurrency_limit" | "spec"
    ok: bool
    message: str


@dataclass
class _Entity:
    name: str
    spec: EntitySpec
    home: HomeBlock | None
    store: StoreBlock | None


def check_spec(spec: FlowSpec, entities: list[str] | None = None) -> list[CheckLine]:
    """Check the spec's Home and Store for the selected entities (default: all of them)."""
    names = entities or [e.name for e in spec.entities]
    lines: list[CheckLine] = []
    secrets: list[str] = []
    home = _resolve(spec.home, HOMES, "home", lines, secrets)
    store = _resolve(spec.store, STORES, "store", lines, secrets)
    if home is None and store is None:
        return lines
    checked: list[_Entity] = []
    for name in names:
        try:
            entity = spec.entity(name)
            e_home, e_store = _entity_blocks(entity, home, store)
        except Exception as exc:
            lines.append(_failed(name, "spec", exc, secrets))
            continue
        secrets += _secrets(e_home) + _secrets(e_store)
        checked.append(_Entity(name, entity, e_home, e_store))
    everyone = [e.name for e in checked]
    lines += _check_stores([e for e in checked if e.store is not None], everyone, secrets)
    lines += _check_homes([e for e in checked if e.home is not None], secrets)
    lines += _check_limits([e for e in checked if e.home is not None], everyone, secrets)
    return lines


def all_passed(lines: list[CheckLine]) -> bool:
    """Whether the check passed: at least one check ran and none failed."""
    return bool(lines) and all(line.ok for line in lines)


def render_check(lines: list[CheckLine]) -> str:
    """One line per check (`ok`/`FAILED`, the part, whom it concerns, the message), then a total."""
    out = []
    for line in lines:
        status = "ok" if line.ok else "FAILED"
        out.append(f"{status:<6}  {line.part:<17}  {line.entity or 'all entities'}: {line.message}")
    failed = sum(not line.ok for line in lines)
    if not lines:
        out.append("no checks ran: the spec selected nothing to check")
    elif failed:
        out.append(f"{failed} of {len(lines)} checks failed")
    else:
        out.append(f"all {len(lines)} checks passed" if len(lines) > 1 else "the 1 check passed")
    return "\n".join(out)


# -- resolving -------------------------------------------------------------------------------


def _resolve(
    ref: str | dict[str, Any],
    kinds: Mapping[str, type[Block]],
    role: str,
    lines: list[CheckLine],
    secrets: list[str],
) -> Any:
    try:
        block = resolve_block(ref, kinds, role)
    except Exception as exc:
        lines.append(_failed(None, role, exc, secrets))
        return None
    secrets += _secrets(block)
    return block


def _entity_blocks(
    entity: EntitySpec, home: HomeBlock | None, store: StoreBlock | None
) -> tuple[HomeBlock | None, StoreBlock | None]:
    """The entity's blocks; with one of them unresolved, the other is still checked."""
    if home is not None and store is not None:
        return entity_blocks(entity, home, store)
    taken: set[str] = set()
    e_home = with_overrides(home, entity, taken) if home is not None else None
    e_store = with_overrides(store, entity, taken) if store is not None else None
    assert e_home is None or isinstance(e_home, HomeBlock)
    assert e_store is None or isinstance(e_store, StoreBlock)
    return e_home, e_store


# -- the checks ------------------------------------------------------------------------------


def _check_stores(
    checked: list[_Entity], everyone: list[str], secrets: list[str]
) -> list[CheckLine]:
    """One probe per distinct Store area (entities may point the Store elsewhere)."""
    areas: dict[str, list[_Entity]] = {}
    for e in checked:
        assert e.store is not None
        areas.setdefault(_area_key(e.store), []).append(e)
    lines = []
    for key, users in areas.items():
        store = users[0].store
        assert store is not None
        where = f"{type(store).__name__} at {key.split(':', 1)[-1]}"
        ok = f"{where} can be written: a probe was written, read back and removed"
        who = _who([u.name for u in users], everyone)
        lines.append(_run(who, "store", store.check, ok, secrets))
    return lines


def _check_homes(checked: list[_Entity], secrets: list[str]) -> list[CheckLine]:
    """Each entity's source, read with no rows; an unreachable Home is waited for once."""
    unreachable: dict[str, str] = {}
    lines = []
    for e in checked:
        assert e.home is not None
        request = read_request(e.spec)
        key = e.home.model_dump_json()  # the Home's settings, secrets masked
        if key in unreachable:
            msg = (
                f"not checked: the Home did not answer for entity {unreachable[key]!r} (see "
                "that line); check again once it is reachable"
            )
            lines.append(CheckLine(e.name, "home", False, msg))
            continue
        try:
            e.home.check(request)
        except Exception as exc:
            if is_transient(exc):
                unreachable[key] = e.name
            lines.append(_failed(e.name, "home", exc, secrets))
            continue
        ok = f"{e.home.describe(request)}: can be read (no rows were moved)"
        lines.append(CheckLine(e.name, "home", True, _scrub(ok, secrets)))
    return lines


def _check_limits(
    checked: list[_Entity], everyone: list[str], secrets: list[str]
) -> list[CheckLine]:
    """Each distinct global concurrency limit the entities' Homes name."""
    users: dict[str, list[str]] = {}
    for e in checked:
        assert e.home is not None
        if e.home.concurrency_limit:
            users.setdefault(e.home.concurrency_limit, []).append(e.name)
    return [
        _run(_who(names, everyone), "concurrency_limit", partial(_limit, name), "", secrets)
        for name, names in users.items()
    ]


def _limit(name: str) -> str:
    """Look the limit up; the ok message, or a ConfigError saying what to do."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    server = f"the Prefect server at {PREFECT_API_URL.value() or '(a temporary local one)'}"
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound as exc:
        msg = (
            f"the Home's concurrency limit {name!r} does not exist on {server}; create it with "
            f"`prefect gcl create {name} --limit N`, or clear `concurrency_limit`"
        )
        raise ConfigError(msg) from exc
    except Exception as exc:
        msg = (
            f"cannot look up concurrency limit {name!r} on {server}: {first_line(exc)}; check "
            "PREFECT_API_URL (and PREFECT_API_KEY) and that the server is running"
        )
        raise ConfigError(msg) from exc
    if not limit.active:
        msg = (
            f"concurrency limit {name!r} is inactive, so it bounds nothing; enable it with "
            f"`prefect gcl enable {name}`, or clear the Home's `concurrency_limit`"
        )
        raise ConfigError(msg)
    if limit.limit < 1:
        msg = (
            f"concurrency limit {name!r} has 0 slots, so no entity could ever take one; raise it "
            f"with `prefect gcl update {name} --limit N`"
        )
        raise ConfigError(msg)
    return f"concurrency limit {name!r} exists: {limit.limit} slots, {limit.active_slots} in use"


# -- lines -----------------------------------------------------------------------------------

_NO_RETRY = (
    "; a run would retry this, the check does not: make sure it is up and reachable from here"
)


def _run(
    who: str | None, part: str, check: Callable[[], str | None], ok: str, secrets: list[str]
) -> CheckLine:
    """Run one check; what it raises, of any kind, becomes a failed line.

    The ok line says what `check` returns, or else `ok`.
    """
    try:
        said = check()
    except Exception as exc:
        return _failed(who, part, exc, secrets)
    return CheckLine(who, part, True, _scrub(said or ok, secrets))


def _failed(who: str | None, part: str, exc: Exception, secrets: list[str]) -> CheckLine:
    if isinstance(exc, HyggeError):
        text = exc.msg if exc.entity in (None, who) else str(exc)
        if is_transient(exc):
            text = text.removesuffix("; will retry") + _NO_RETRY
    else:
        text = f"unexpected {type(exc).__name__}: {first_line(exc)}"
    return CheckLine(who, part, False, _scrub(text, secrets))


def _who(names: list[str], everyone: list[str]) -> str | None:
    return None if names == everyone else ", ".join(names)


def _area_key(store: StoreBlock) -> str:
    """What names the Store's area (its lock id); its settings when even that fails."""
    try:
        return store.lock_id()
    except Exception:
        return f"{type(store).__name__}:{store.model_dump_json()}"


def _secrets(block: BaseModel | None) -> list[str]:
    """Every secret value a block holds, nested blocks included, to keep out of the lines."""
    found: list[str] = []

    def walk(value: Any) -> Iterator[str]:
        if isinstance(value, SecretStr | SecretBytes):
            secret = value.get_secret_value()
            yield secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                yield from walk(getattr(value, name, None))
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from walk(item)

    if block is not None:
        found = [s for s in walk(block) if s]
    return found


def _scrub(text: str, secrets: list[str]) -> str:
    text = redact(text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text

"""Shared fixtures, the test tiers, and small real sources.

Every test lands in one tier, a marker (README.md, under "Run the tests"):

- `fast`: no Prefect server, no services, no processes. The engine and the blocks, called
  directly on real SQLite, CSV and Parquet files. Warnings are errors here.
- `integration`: real services (PostgreSQL, MariaDB, Azurite), the Prefect server, flow runs,
  `python -m`.
- `kill`: runs killed with SIGKILL or broken by fault points, and the stress runs.

The tier is derived, so a new test needs no marker: `kill` for the modules in `KILL_MODULES`
and tests named for a kill; `integration` for a test that uses a service fixture or whose code
(with the test-module helpers and fixtures it calls) names a flow run, a process or a saved
block; `fast` otherwise. An explicit `@pytest.mark.<tier>` wins, but `fast` beside a service
fixture is refused. The derivation is a convenience; the guard is the rule: a fast test that
reaches the Prefect API or starts a process fails, saying which marker it needs.
"""

from __future__ import annotations

import inspect
import os
import sqlite3
import subprocess
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.testing.utilities import prefect_test_harness

from hygge_core import faults
from tests.azurite import azurite, azurite_delta  # noqa: F401  (fixtures)
from tests.mariadb_server import maria_db, mariadb  # noqa: F401  (fixtures)
from tests.pg_server import pg, pg_schema  # noqa: F401  (fixtures)
from tests.s3_server import s3_server  # noqa: F401  (fixtures)

TIERS = ("fast", "integration", "kill")
#: fixtures that start a service (or stand on one): a test using any of them is never `fast`
SERVICE_FIXTURES = frozenset(
    {
        "prefect_server",
        "pg",
        "pg_schema",
        "azurite",
        "azurite_delta",
        "mariadb",
        "maria_db",
        "s3_server",
    }
)
#: modules whose every test kills or breaks runs
KILL_MODULES = frozenset({"test_crash_recovery", "test_fault_injection"})
#: names in a test's code that mean a flow run, the Prefect API, a process or a service
INTEGRATION_NAMES = frozenset(
    {
        "run_flow",
        "ledger_of",
        "hygge",
        "load_or_new",
        "save",
        "get_client",
        "prefect_test_harness",
        "serve",
        "subprocess",
        "Popen",
        "executable",
        "start_server",
        "start_azurite",
        "start_s3_server",
    }
)
#: third-party warnings the fast tier tolerates, each with its reason (else warnings are errors)
FAST_TIER_WARNING_FILTERS: tuple[str, ...] = ()


def _names_in(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names_in(const)
        elif const in SERVICE_FIXTURES:  # `request.getfixturevalue("azurite")`
            yield const


TESTS = Path(__file__).parent


def _in_tests(obj: object) -> bool:
    """Whether `obj` is a function or class defined in this folder (a test helper)."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return False
    try:
        return Path(inspect.getfile(obj)).is_relative_to(TESTS)
    except TypeError:  # a built-in
        return False


def _reached_names(func: object, seen: set[int] | None = None) -> set[str]:
    """The global and attribute names `func` uses, following the test-module helpers and
    classes it calls (in tests/), so `def _run(): return run_flow(...)` counts for its callers."""
    seen = set() if seen is None else seen
    func = inspect.unwrap(getattr(func, "__func__", func))  # type: ignore[arg-type]
    code = getattr(func, "__code__", None)
    if code is None or id(code) in seen:
        return set()
    seen.add(id(code))
    names = set(_names_in(code))
    scope = getattr(func, "__globals__", {})
    for name in list(names):
        target = scope.get(name)
        if not _in_tests(target):
            continue
        if inspect.isclass(target):
            for member in vars(target).values():
                names |= _reached_names(member, seen)
        else:
            names |= _reached_names(target, seen)
    return names


def _derived_tier(item: pytest.Function) -> str:
    module = item.path.stem
    if module in KILL_MODULES or "kill" in item.originalname:
        return "kill"
    if SERVICE_FIXTURES & set(item.fixturenames):
        return "integration"
    names = _reached_names(item.function)
    for defs in item._fixtureinfo.name2fixturedefs.values():
        if not defs[-1].func.__module__.endswith("conftest"):  # the tiers' own fixtures
            names |= _reached_names(defs[-1].func)
    return "integration" if (INTEGRATION_NAMES | SERVICE_FIXTURES) & names else "fast"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        marked = [t for t in TIERS if item.get_closest_marker(t)]
        if len(marked) > 1:
            msg = f"{item.nodeid} is marked with two tiers ({', '.join(marked)}); give it one"
            raise pytest.UsageError(msg)
        services = sorted(SERVICE_FIXTURES & set(item.fixturenames))
        if marked == ["fast"] and services:
            msg = (
                f"{item.nodeid} is marked fast but uses {', '.join(services)}: the fast tier "
                "has no Prefect server and no services; mark it integration"
            )
            raise pytest.UsageError(msg)
        tier = marked[0] if marked else _derived_tier(item)
        if not marked:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "fast":
            item.add_marker(pytest.mark.filterwarnings("error", *FAST_TIER_WARNING_FILTERS))
    # one process runs the tiers in turn: fast failures show first, and the Prefect server
    # (with its background workers) starts only after the last fast test
    items.sort(key=lambda item: TIERS.index(_tier_of(item)))


def _tier_of(item: pytest.Item) -> str:
    return next((t for t in TIERS if item.get_closest_marker(t)), "integration")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real (temporary, SQLite-backed) Prefect server, started once, when the first
    integration or kill test needs it; the fast tier never starts it."""
    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield str(PREFECT_API_URL.value())


def _refuse(what: str, nodeid: str) -> None:
    msg = (
        f"{nodeid} is a fast-tier test but {what}; the fast tier has no Prefect server, no "
        "services and no processes. Mark the test `@pytest.mark.integration` (or `kill`)"
    )
    raise RuntimeError(msg)


@pytest.fixture(autouse=True)
def _tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Integration and kill tests get the Prefect server; fast tests are kept from reaching one
    (or any process), so a test in the wrong tier fails loudly rather than running slowly."""
    nodeid = request.node.nodeid
    if _tier_of(request.node) != "fast":
        request.getfixturevalue("prefect_server")
        return
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    def no_api(*_: Any, **__: Any) -> Any:
        _refuse("it reached the Prefect API (a flow run, a saved block, the ledger)", nodeid)

    async def no_api_async(*_: Any, **__: Any) -> Any:
        no_api()

    def no_process(self: Any, args: Any, *_: Any, **__: Any) -> None:
        if "prefect.server" in str(args):  # with no API URL, Prefect starts a temporary server
            no_api()
        _refuse(f"it started a process ({args!r})", nodeid)

    monkeypatch.setattr(PrefectClient, "__aenter__", no_api_async)
    monkeypatch.setattr(SyncPrefectClient, "__enter__", no_api)
    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYGGE_FAULT", raising=False)
    monkeypatch.delenv("HYGGE_FAULT_ENTITY", raising=False)
    faults.reset()


@pytest.fixture
def spec_name() -> str:
    """A unique spec name, so each test has its own ledger block."""
    return f"t-{uuid.uuid4().hex[:12]}"


def run_flow(spec: dict[str, Any], **params: Any) -> Any:
    """Run the hygge flow in-process and return its final state (never raises)."""
    from flows.run import hygge

    return hygge(spec=spec, return_state=True, **params)


def ledger_of(spec: dict[str, Any]) -> dict[str, Any]:
    from blocks import WatermarkLedger
    from flows.spec import parse_spec

    return WatermarkLedger.load_or_new(parse_spec(spec).ledger_name).value


def read_lake(lake: Path, entity: str) -> pl.DataFrame:
    return pl.read_parquet(sorted((lake / entity).glob("*.parquet")))


def make_events_db(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    """A small `events` table: id, ts (DATETIME, second granularity), amount, label."""
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE IF NOT EXISTS events "
        "(id INTEGER PRIMARY KEY, ts DATETIME, amount DECIMAL(10,2), label TEXT)"
    )
    con.executemany("INSERT INTO events VALUES (?,?,?,?)", rows)
    con.commit()
    con.close()
    return path


def source_events(path: Path) -> pl.DataFrame:
    con = sqlite3.connect(path)
    out = con.execute("SELECT id, ts, amount, label FROM events WHERE ts IS NOT NULL").fetchall()
    con.close()
    return pl.DataFrame(out, schema=["id", "ts", "amount", "label"], orient="row")

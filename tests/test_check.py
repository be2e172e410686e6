"""`hygge check` (flows/check.py) against real sources, a real Store, Azurite and Prefect.

Every check here runs for real: SQLite files, the `pg` PostgreSQL server, Parquet and CSV
files, a local lake, Azurite's Blob API and the session's Prefect server. Each failing line
must name the entity, the cause and the fix, and no check may leave anything in a Store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import blocks
from flows.check import CheckLine, all_passed, check_spec, render_check
from flows.spec import parse_spec
from tests.azurite import ACCOUNT, Azurite
from tests.conftest import make_events_db
from tests.flow_helpers import events_rows
from tests.pg_odbc import PgOdbcHome, pg_odbc_home
from tests.pg_server import PgServer, free_port, pg_home


def spec(home: Any, store: Any, *entities: dict[str, Any]) -> Any:
    return parse_spec({"name": "check-test", "home": home, "store": store, "entities": entities})


def sqlite_db(tmp_path: Path) -> Path:
    return make_events_db(tmp_path / "shop.db", events_rows(0, 20))


def tree(folder: Path) -> list[str]:
    """Everything under `folder` (empty when it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def line(lines: list[CheckLine], part: str, entity: str | None = None) -> CheckLine:
    found = [x for x in lines if x.part == part and x.entity == entity]
    assert len(found) == 1, render_check(lines)
    return found[0]


def failed(lines: list[CheckLine], part: str, entity: str | None, *texts: str) -> str:
    """The one failed line for (part, entity), holding every text; checks the overall result."""
    got = line(lines, part, entity)
    assert not got.ok, got
    for text in texts:
        assert text in got.message, got.message
    assert not all_passed(lines)
    report = render_check(lines)
    assert f"FAILED  {part:<17}  {entity or 'all entities'}: {got.message}" in report
    assert report.splitlines()[-1].endswith("checks failed")
    return got.message


# -- green ------------------------------------------------------------------------------------


def test_sqlite_home_and_parquet_store_pass_and_leave_nothing_behind(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path)
    lake = tmp_path / "lake" / "raw"  # does not exist yet: the probe creates it, then removes it
    lines = check_spec(
        spec(
            {"type": "sqlite", "path": str(db)},
            {"type": "parquet", "path": str(lake)},
            {"name": "events", "table": "events", "columns": ["id", "ts"], "where": "id > 3"},
            {"name": "labels", "query": "SELECT id, label FROM events"},
        )
    )
    assert [(x.part, x.entity, x.ok) for x in lines] == [
        ("store", None, True),
        ("home", "events", True),
        ("home", "labels", True),
    ]
    assert f"ParquetStore at {lake.resolve()} can be written" in lines[0].message
    assert f"sqlite {db} table events: can be read" in lines[1].message
    assert all_passed(lines)
    assert render_check(lines).splitlines()[-1] == "all 3 checks passed"
    assert not (tmp_path / "lake").exists()


def test_file_homes_pass_and_an_existing_lake_is_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "parts").mkdir(parents=True)
    frame = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    frame.write_parquet(src / "parts" / "1.parquet")
    frame.write_parquet(src / "parts" / "2.parquet")
    frame.write_csv(src / "people.csv")
    lake = tmp_path / "lake"
    (lake / "people").mkdir(parents=True)
    frame.write_parquet(lake / "people" / "part-old-00000.parquet")
    (lake / "_hygge.lock").write_text("{}")
    before = tree(lake)
    entities = [
        {"name": "parts", "path": "parts", "columns": ["id"], "where": "id > 1"},
        {"name": "people", "path": "people.csv"},
    ]
    for kind in ("parquet", "csv"):
        ents = [e for e in entities if (e["name"] == "parts") == (kind == "parquet")]
        lines = check_spec(
            spec({"type": kind, "path": str(src)}, {"type": "parquet", "path": str(lake)}, *ents)
        )
        assert all_passed(lines), render_check(lines)
        assert [x.part for x in lines] == ["store", "home"]
    assert tree(lake) == before


# -- red: Homes -------------------------------------------------------------------------------


def test_wrong_postgres_password_names_the_login_and_the_credentials_block(
    pg: PgServer, tmp_path: Path
) -> None:
    wrong = "n0t-the-Pa55word"
    home = pg_home(pg, credentials={"username": pg.user, "password": wrong})
    lines = check_spec(
        spec(
            home,
            {"type": "parquet", "path": str(tmp_path / "lake")},
            {"name": "orders", "table": "public.orders"},
        )
    )
    message = failed(
        lines,
        "home",
        "orders",
        f"PostgreSQL at {pg.host}:{pg.port}/{pg.dbname} refused the login",
        "password authentication failed",
        "Check the user name and password in the PostgreSQL credentials block",
    )
    assert line(lines, "store").ok
    report = render_check(lines)
    assert wrong not in report and pg.password not in report
    assert message.startswith(
        "PostgreSQL"
    )  # the line names the entity; the text does not repeat it


def test_missing_tables_and_a_bad_query_name_the_source_and_the_fix(
    pg: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    pg.execute(f'CREATE TABLE "{pg_schema}".orders (id int)')
    lines = check_spec(
        spec(
            pg_home(pg),
            {"type": "parquet", "path": str(lake)},
            {"name": "orders", "table": f"{pg_schema}.orders"},
            {"name": "ghost", "table": f"{pg_schema}.no_such_table"},
            {"name": "typo", "query": f'SELEC id FROM "{pg_schema}".orders'},
            {"name": "cols", "table": f"{pg_schema}.orders", "columns": ["id", "nope"]},
        )
    )
    assert line(lines, "home", "orders").ok
    failed(
        lines,
        "home",
        "ghost",
        f'relation "{pg_schema}.no_such_table" does not exist',
        f"PostgreSQL at {pg.host}:{pg.port}/{pg.dbname}",
        "Check `table`",
    )
    failed(lines, "home", "typo", "rejected the SQL: syntax error", "Check the entity's `query`")
    failed(
        lines,
        "home",
        "cols",
        'column "nope" does not exist',
        "Check the entity's `query`, `columns`",
    )
    assert render_check(lines).splitlines()[-1] == "3 of 5 checks failed"
    assert tree(lake) == []

    db = sqlite_db(tmp_path)
    lines = check_spec(
        spec(
            {"type": "sqlite", "path": str(db)},
            {"type": "parquet", "path": str(lake)},
            {"name": "ghost", "table": "no_such_table"},
            {"name": "typo", "query": "SELEC id FROM events"},
            {"name": "cols", "table": "events", "columns": ["id", "lable"]},
        )
    )
    missing = f"table 'no_such_table' does not exist in SQLite database {str(db)!r}"
    failed(lines, "home", "ghost", missing, "check the entity's `table`")
    failed(
        lines,
        "home",
        "typo",
        "SQLite rejected the SQL",
        "syntax error",
        "check the entity's `query`",
    )
    # SQLite alone would read a quoted unknown name as the text 'lable' in every row
    failed(
        lines,
        "home",
        "cols",
        "column(s) 'lable' not in table 'events'",
        "check the entity's `columns`",
    )
    assert tree(lake) == []


def test_odbc_home_checks_through_the_shared_odbc_path(
    pg: PgServer, pg_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MssqlHome's check, run on PostgreSQL through psqlODBC (no SQL Server can run here)."""
    monkeypatch.setitem(blocks.HOMES, "pg-odbc", PgOdbcHome)
    pg.execute(f'CREATE TABLE "{pg_schema}".orders (id int)')
    store = {"type": "parquet", "path": str(tmp_path / "lake")}
    orders = {"name": "orders", "table": f"{pg_schema}.orders"}
    ghost = {"name": "ghost", "table": f"{pg_schema}.no_such_table"}
    lines = check_spec(spec(pg_odbc_home(pg), store, orders, ghost))
    assert line(lines, "home", "orders").ok
    where = f"SQL Server at {pg.host},{pg.port}/{pg.dbname}"
    failed(lines, "home", "ghost", where, "no_such_table", "does not exist", "check `table`")
    wrong = pg_odbc_home(pg, credentials={"username": pg.user, "password": "n0;pe-Pw"})
    lines = check_spec(spec(wrong, store, orders))
    fix = "check the login in the credentials block"
    failed(lines, "home", "orders", "password authentication failed", fix)
    assert "n0;pe-Pw" not in render_check(lines)


def test_missing_paths_name_the_path_the_folder_looked_from_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lake = {"type": "parquet", "path": str(tmp_path / "lake")}
    lines = check_spec(
        spec(
            {"type": "csv"},
            lake,
            {"name": "people", "path": "exports/people.csv"},
        )
    )
    failed(
        lines,
        "home",
        "people",
        "'exports/people.csv' does not exist: no such file or directory",
        f"(looked from {tmp_path})",
        "check the entity's `path`",
    )
    lines = check_spec(
        spec({"type": "sqlite", "path": "shop.db"}, lake, {"name": "e", "table": "events"})
    )
    missing = "SQLite database 'shop.db' does not exist"
    failed(lines, "home", "e", missing, f"(looked from {tmp_path})", "check the Home's `path`")
    assert tree(tmp_path) == []


def test_a_parquet_file_that_differs_from_the_others_is_named(tmp_path: Path) -> None:
    src = tmp_path / "parts"
    src.mkdir()
    pl.DataFrame({"id": [1]}).write_parquet(src / "a.parquet")
    pl.DataFrame({"id": [1], "extra": ["x"]}).write_parquet(src / "b.parquet")
    lines = check_spec(
        spec(
            {"type": "parquet"},
            {"type": "parquet", "path": str(tmp_path / "lake")},
            {"name": "parts", "path": str(src)},
        )
    )
    failed(
        lines, "home", "parts", f"{str(src / 'b.parquet')!r} does not share the schema", "+extra"
    )


def test_an_unreachable_home_is_waited_for_once_and_never_called_fine(tmp_path: Path) -> None:
    home = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": free_port(),  # nothing listens there
        "database": "postgres",
        "credentials": {"username": "u", "password": "p-secret"},
    }
    lines = check_spec(
        spec(
            home,
            {"type": "parquet", "path": str(tmp_path / "lake")},
            {"name": "a", "table": "a"},
            {"name": "b", "table": "b"},
        )
    )
    failed(
        lines, "home", "a", "is unreachable", "the check does not: make sure it is up and reachable"
    )
    failed(lines, "home", "b", "not checked: the Home did not answer for entity 'a'")
    assert "will retry" not in render_check(lines)


# -- red: Stores ------------------------------------------------------------------------------


def test_a_store_path_under_a_regular_file_fails_naming_the_file(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("keep me")
    good = tmp_path / "lake"
    lines = check_spec(
        spec(
            {"type": "sqlite", "path": str(db)},
            {"type": "parquet", "path": str(blocker / "lake")},
            {"name": "events", "table": "events"},
            {"name": "elsewhere", "table": "events", "path": str(good)},
        )
    )
    # `path` on an entity is the Home's file path, so both share the Store: one line for it
    message = failed(
        lines,
        "store",
        None,
        f"cannot write {str(blocker / 'lake' / '_manifests')!r}",
        f"{str(blocker)!r} is a file, not a directory",
        "point the Store's `path` at one",
    )
    assert "ledger" not in message  # no run was involved
    assert line(lines, "home", "events").ok and line(lines, "home", "elsewhere").ok
    assert blocker.read_text() == "keep me"
    assert not good.exists()


# -- red: concurrency limits ------------------------------------------------------------------


@pytest.fixture
def limit_name() -> Iterator[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"check-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=3))
    try:
        yield name
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)


def test_concurrency_limits_are_looked_up_on_the_prefect_server(
    tmp_path: Path, limit_name: str
) -> None:
    db = sqlite_db(tmp_path)
    home = {"type": "sqlite", "path": str(db), "concurrency_limit": limit_name}
    store = {"type": "parquet", "path": str(tmp_path / "lake")}
    lines = check_spec(
        spec(home, store, {"name": "a", "table": "events"}, {"name": "b", "table": "events"})
    )
    ok = line(lines, "concurrency_limit")  # one lookup for the limit both entities share
    assert ok.ok and f"concurrency limit {limit_name!r} exists: 3 slots, 0 in use" in ok.message
    assert all_passed(lines)

    lines = check_spec(
        spec(
            home,
            store,
            {"name": "a", "table": "events"},
            {"name": "b", "table": "events", "concurrency_limit": "no-such-limit"},
        )
    )
    assert line(lines, "concurrency_limit", "a").ok
    failed(
        lines,
        "concurrency_limit",
        "b",
        "the Home's concurrency limit 'no-such-limit' does not exist on the Prefect server",
        "create it with `prefect gcl create no-such-limit --limit N`, or clear `concurrency_limit`",
    )


def test_an_inactive_concurrency_limit_fails(tmp_path: Path, limit_name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            limit_name, GlobalConcurrencyLimitUpdate(active=False)
        )
    home = {"type": "sqlite", "path": str(sqlite_db(tmp_path)), "concurrency_limit": limit_name}
    lines = check_spec(
        spec(
            home,
            {"type": "parquet", "path": str(tmp_path / "lake")},
            {"name": "a", "table": "events"},
        )
    )
    failed(
        lines,
        "concurrency_limit",
        None,
        "is inactive, so it bounds nothing",
        f"prefect gcl enable {limit_name}",
    )


# -- Blob Stores (Azurite) --------------------------------------------------------------------


def adls(azurite: Azurite, container: str, connection_string: str | None = None) -> dict[str, Any]:
    return {
        "type": "adls",
        "container": container,
        "path": "lake/raw",
        "credentials": {"connection_string": connection_string or azurite.connection_string},
    }


def test_blob_store_passes_and_leaves_no_blob(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.new_container()
    home = {"type": "sqlite", "path": str(sqlite_db(tmp_path))}
    lines = check_spec(spec(home, adls(azurite, container), {"name": "events", "table": "events"}))
    assert all_passed(lines), render_check(lines)
    store = line(lines, "store")
    assert f"AdlsStore at {azurite.blob_url}/{container}/lake/raw can be written" in store.message
    assert list(azurite.container(container).list_blobs()) == []

    # Open Mirroring keeps its records beside the landing zone, under `state_path`
    mirror = {
        "type": "open_mirroring",
        "workspace": container,
        "item": "Shop.MountedRelationalDatabase",
        "credentials": {"connection_string": azurite.connection_string},
    }
    lines = check_spec(spec(home, mirror, {"name": "events", "table": "events"}))
    assert all_passed(lines), render_check(lines)
    state = f"{azurite.blob_url}/{container}/Shop.MountedRelationalDatabase/Files/_hygge"
    assert f"OpenMirroringStore at {state} can be written" in line(lines, "store").message
    assert list(azurite.container(container).list_blobs()) == []


def test_blob_store_missing_container_or_wrong_key_fails_with_the_fix(
    azurite: Azurite, tmp_path: Path
) -> None:
    home = {"type": "sqlite", "path": str(sqlite_db(tmp_path))}
    entity = {"name": "events", "table": "events"}
    lines = check_spec(spec(home, adls(azurite, "no-such-container"), entity))
    failed(
        lines,
        "store",
        None,
        f"cannot write and remove a probe in {azurite.blob_url}/no-such-container/lake/raw",
        "the container does not exist; create it or fix `container`",
    )
    assert line(lines, "home", "events").ok  # the Store's failure hides nothing else

    container = azurite.new_container()
    wrong_key = "d3Jvbmcga2V5d3Jvbmcga2V5d3Jvbmcga2V5d3Jvbmcga2V5"
    wrong = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={wrong_key};"
        f"BlobEndpoint={azurite.blob_url};"
    )
    lines = check_spec(spec(home, adls(azurite, container, wrong), entity))
    failed(
        lines,
        "store",
        None,
        "the storage account refused the credentials",
        "check the Azure credentials block",
    )
    assert wrong_key not in render_check(lines)
    assert list(azurite.container(container).list_blobs()) == []


# -- the spec itself --------------------------------------------------------------------------


@pytest.mark.integration  # its second half looks a saved block up on the Prefect server
def test_an_unknown_setting_or_entity_is_a_spec_line_and_the_rest_is_still_checked(
    tmp_path: Path,
) -> None:
    db = sqlite_db(tmp_path)
    parsed = spec(
        {"type": "sqlite", "path": str(db)},
        {"type": "parquet", "path": str(tmp_path / "lake")},
        {"name": "events", "table": "events"},
        {"name": "odd", "table": "events", "colour": "blue"},
    )
    lines = check_spec(parsed, ["events", "odd", "ghost"])
    failed(lines, "spec", "odd", "field colour: unknown key", "not an entity field")
    failed(lines, "spec", "ghost", "no entity named 'ghost'", "entities: events, odd")
    assert line(lines, "home", "events").ok
    # the Store line serves every entity that could be checked
    assert line(lines, "store").ok

    # a Home that cannot be resolved (here a saved block nobody saved) is one line; the Store
    # is still checked (an unknown inline `type:` never gets this far: the spec refuses it)
    lines = check_spec(
        spec(
            "sqlite-home/nobody-saved-this",
            {"type": "parquet", "path": str(tmp_path / "lake")},
            {"name": "e", "table": "t"},
        )
    )
    failed(lines, "home", None, "no saved block 'sqlite-home/nobody-saved-this'")
    assert line(lines, "store").ok
    assert os.listdir(tmp_path) == ["shop.db"]


def test_entities_that_move_the_store_get_one_line_per_area(
    azurite: Azurite, tmp_path: Path
) -> None:
    container = azurite.new_container()
    home = {"type": "sqlite", "path": str(sqlite_db(tmp_path))}
    lines = check_spec(
        spec(
            home,
            adls(azurite, container),
            {"name": "a", "table": "events"},
            {"name": "b", "table": "events", "compression": "snappy"},  # same area
            {"name": "c", "table": "events", "container": "gone"},  # another one
        )
    )
    stores = [x for x in lines if x.part == "store"]
    assert [(x.entity, x.ok) for x in stores] == [("a, b", True), ("c", False)]
    failed(lines, "store", "c", f"{azurite.blob_url}/gone/lake/raw", "the container does not exist")
    assert list(azurite.container(container).list_blobs()) == []

"""The ledger remembers which source and destination each watermark belongs to.

Two specs with one `name` share a ledger; without this, the second one loaded against the
first one's watermarks. Tuning a spec must not count as a move; pointing it elsewhere must.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blocks import HOMES, STORES, HomeBlock, StoreBlock, WatermarkLedger
from flows.plan import build_jobs, resolve_block
from flows.spec import parse_spec
from hygge_core.errors import ConfigError
from tests.conftest import ledger_of, make_events_db, read_lake, run_flow
from tests.flow_helpers import assert_lake_equals_source, events_rows, spec_for
from tests.test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def plan_against(spec: dict[str, Any], ledger: WatermarkLedger) -> None:
    """Plan every entity of `spec` against `ledger` (raises what a run would refuse)."""
    parsed = parse_spec(spec)
    home = resolve_block(parsed.home, HOMES, "home")
    store = resolve_block(parsed.store, STORES, "store")
    assert isinstance(home, HomeBlock) and isinstance(store, StoreBlock)
    build_jobs(parsed, home, store, ledger)


def ledger_for(spec: dict[str, Any]) -> WatermarkLedger:
    """A ledger as a committed run of `spec` leaves it: a watermark and the plan's identity."""
    parsed = parse_spec(spec)
    home = resolve_block(parsed.home, HOMES, "home")
    store = resolve_block(parsed.store, STORES, "store")
    assert isinstance(home, HomeBlock) and isinstance(store, StoreBlock)
    value = {}
    for job in build_jobs(parsed, home, store, WatermarkLedger()):
        assert job.plan.identity is not None
        watermark = {"column": "ts", "value": "2024-05-01 12:00:00", "boundary": []}
        value[job.plan.name] = {"watermark": watermark, "identity": job.plan.identity}
    return WatermarkLedger(value=value)


def sqlite_spec(**changes: Any) -> dict[str, Any]:
    entity = {"name": "events", "table": "events", "watermark": {"column": "ts", "keys": ["id"]}}
    entity.update(changes.pop("entity", {}))
    spec = {
        "name": "t",
        "home": {"type": "sqlite", "path": "shop.sqlite"},
        "store": {"type": "parquet", "path": "lake"},
        "entities": [entity],
    }
    for key, value in changes.items():
        if isinstance(value, dict) and "type" not in value and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}  # type: ignore[dict-item]  # a setting changed
        else:
            spec[key] = value
    return spec


# -- what counts as the same source and destination ------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"entity": {"batch_size": 7}}, id="batch_size"),
        pytest.param({"entity": {"compression": "gzip"}}, id="entity-compression"),
        pytest.param({"store": {"compression": "gzip", "max_rows_per_file": 10}}, id="store"),
        pytest.param({"concurrency": 9, "retries": 0}, id="concurrency"),
        pytest.param({"entity": {"columns": ["id", "ts"], "where": "id > 0"}}, id="columns"),
        pytest.param({"home": {"path": "./shop.sqlite", "read_threads": 1}}, id="same-path"),
        pytest.param({"store": {"path": "lake/"}}, id="same-lake"),
        pytest.param({"ledger": "hygge-ledger-t"}, id="same-ledger"),
    ],
)
def test_harmless_changes_keep_the_watermark(changes: dict[str, Any]) -> None:
    plan_against(sqlite_spec(**changes), ledger_for(sqlite_spec()))


@pytest.mark.parametrize(
    ("changes", "theirs", "mine"),
    [
        pytest.param(
            {"store": {"path": "other-lake"}},
            "its destination was 'parquet lake/events/'",
            "this spec's is 'parquet other-lake/events/'",
            id="store-path",
        ),
        pytest.param(
            {"home": {"path": "other.sqlite"}},
            "its source was 'sqlite path=shop.sqlite table=events'",
            "this spec's is 'sqlite path=other.sqlite table=events'",
            id="home-path",
        ),
        pytest.param(
            {"entity": {"table": "events_archive"}},
            "its source was 'sqlite path=shop.sqlite table=events'",
            "this spec's is 'sqlite path=shop.sqlite table=events_archive'",
            id="table",
        ),
        pytest.param(
            {"home": {"type": "csv", "path": "shop"}, "entity": {"table": None, "path": "ev.csv"}},
            "its source was 'sqlite path=shop.sqlite table=events'",
            "this spec's is 'csv path=shop files=ev.csv'",
            id="home-type",
        ),
    ],
)
def test_moving_the_source_or_destination_is_refused(
    changes: dict[str, Any], theirs: str, mine: str
) -> None:
    with pytest.raises(ConfigError) as e:
        plan_against(sqlite_spec(**changes), ledger_for(sqlite_spec()))
    message = str(e.value)
    assert message.startswith("entity 'events': the ledger 'hygge-ledger-t' holds a watermark")
    assert f"{theirs}, {mine}" in message
    assert "give this one its own `name` (or `ledger:`)" in message
    assert "run this entity once with --full-drop" in message
    # what did not change is not blamed
    assert ("its source was" in message) == ("home" in changes or "entity" in changes)
    assert ("its destination was" in message) == ("store" in changes)


def test_full_drop_ignores_the_old_identity_and_takes_the_new_one() -> None:
    moved = sqlite_spec(store={"path": "other-lake"})
    parsed = parse_spec(moved)
    home = resolve_block(parsed.home, HOMES, "home")
    store = resolve_block(parsed.store, STORES, "store")
    assert isinstance(home, HomeBlock) and isinstance(store, StoreBlock)
    (job,) = build_jobs(parsed, home, store, ledger_for(sqlite_spec()), run_type="full_drop")
    assert job.plan.mode == "replace"
    assert job.plan.identity == {
        "home": "sqlite path=shop.sqlite table=events",
        "store": "parquet other-lake/events/",
    }


QUERY = "SELECT id, ts\n  FROM events\n WHERE id > 0"


def test_a_query_counts_by_its_text_not_its_layout() -> None:
    ledger = ledger_for(sqlite_spec(entity={"table": None, "query": QUERY}))
    plan_against(sqlite_spec(entity={"table": None, "query": " ".join(QUERY.split())}), ledger)
    with pytest.raises(ConfigError, match=r"its source was 'sqlite path=shop.sqlite query=sha256:"):
        plan_against(sqlite_spec(entity={"table": None, "query": QUERY + " AND id < 9"}), ledger)


def pg_home(password: str, database: str = "shop", dsn: str | None = None) -> dict[str, Any]:
    if dsn is None:
        login = {"username": "u", "password": password}
        return {
            "type": "postgres",
            "host": "db.example",
            "database": database,
            "credentials": login,
        }
    text = dsn.format(password=password, database=database)
    return {"type": "postgres", "credentials": {"dsn": text}}


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(None, id="password"),
        pytest.param("postgresql://u:{password}@db.example:5433/{database}", id="dsn-uri"),
        pytest.param("host=db.example dbname={database} user=u password={password}", id="dsn-kv"),
    ],
)
def test_postgres_identity_holds_no_secret_and_follows_the_database(dsn: str | None) -> None:
    secret = "pw-ZX81"
    ledger = ledger_for(sqlite_spec(home=pg_home(secret, dsn=dsn)))
    remembered = ledger.value["events"]["identity"]
    assert secret not in str(remembered)
    assert "db.example" in remembered["home"]
    assert "shop" in remembered["home"]
    plan_against(sqlite_spec(home=pg_home("rotated", dsn=dsn)), ledger)  # same database
    with pytest.raises(ConfigError, match=r"its source was 'postgres .*shop.*, this spec's is"):
        plan_against(sqlite_spec(home=pg_home(secret, "crm", dsn=dsn)), ledger)


# -- the case, through the command line ----------------------------------------------


def write_spec(path: Path, name: str, db: Path, lake: Path) -> Path:
    path.write_text(
        f"name: {name}\n"
        f"home: {{type: sqlite, path: '{db}'}}\n"
        f"store: {{type: parquet, path: '{lake}'}}\n"
        "entities:\n"
        "  - {name: events, table: events, watermark: {column: ts, keys: [id]}}\n",
        encoding="utf-8",
    )
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every published file under a lake (the lock file aside), with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "_hygge.lock"
    }


def test_a_second_spec_with_the_same_name_is_refused_until_full_drop(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    db = make_events_db(tmp_path / "shop.sqlite", events_rows(0, 1_000))
    lake_a, lake_b = tmp_path / "lake_a", tmp_path / "lake_b"
    spec_a = write_spec(tmp_path / "a.yaml", spec_name, db, lake_a)
    spec_b = write_spec(tmp_path / "b.yaml", spec_name, db, lake_b)

    first = run_cli(["--spec", str(spec_a)], tmp_path, prefect_server)
    assert first.returncode == 0, first.stderr
    assert_lake_equals_source(lake_a, db)
    published_a = tree(lake_a)
    make_events_db(db, events_rows(1_000, 400))  # the source grows before the second spec runs

    refused = run_cli(["--spec", str(spec_b)], tmp_path, prefect_server)
    # the command line plans against the ledger before any flow run: a configuration error
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    ledger_name = f"hygge-ledger-{spec_name}"
    assert (
        f"entity 'events': the ledger {ledger_name!r} holds a watermark loaded elsewhere "
        f"(its destination was 'parquet {lake_a}/events/', this spec's is "
        f"'parquet {lake_b}/events/'); loading on from it would skip or repeat rows. If another "
        "spec has the same `name`, give this one its own `name` (or `ledger:`); if the source "
        "or destination really moved, run this entity once with --full-drop"
    ) in refused.stderr
    assert tree(lake_a) == published_a  # the first spec's lake is untouched
    assert tree(lake_b) == {}  # and nothing reached the second one
    remembered = WatermarkLedger.load_or_new(ledger_name).value["events"]["identity"]
    assert remembered["store"] == f"parquet {lake_a}/events/"

    dry = run_cli(["--spec", str(spec_b), "--dry-run"], tmp_path, prefect_server)
    assert dry.returncode == 2  # a dry run plans before any flow: a configuration error
    assert "holds a watermark loaded elsewhere" in dry.stderr

    reload = run_cli(["--spec", str(spec_b), "--full-drop"], tmp_path, prefect_server)
    assert reload.returncode == 0, reload.stderr
    assert_lake_equals_source(lake_b, db)  # exactly the source's 1,400 rows, once each
    assert read_lake(lake_b, "events").height == 1_400
    assert tree(lake_a) == published_a

    # the ledger now belongs to the second spec: the first one is refused in turn
    back = run_cli(["--spec", str(spec_a), "--dry-run"], tmp_path, prefect_server)
    assert back.returncode == 2
    assert f"its destination was 'parquet {lake_b}/events/'" in back.stderr


# -- ledgers written before identities -------------------------------------------------------


def test_an_entry_without_identity_is_accepted_and_gains_one(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_events_db(tmp_path / "shop.sqlite", events_rows(0, 300))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake)
    assert run_flow(spec).is_completed()
    # the entry as hygge wrote it before it kept identities
    ledger = WatermarkLedger.load_or_new(parse_spec(spec).ledger_name)
    old = {k: v for k, v in ledger.value["events"].items() if k != "identity"}
    ledger.commit(parse_spec(spec).ledger_name, "events", old)
    assert "identity" not in ledger_of(spec)["events"]

    make_events_db(db, events_rows(300, 50))
    state = run_flow(spec)
    assert state.is_completed()
    (row,) = state.result()
    assert (row["mode"], row["rows"]) == ("append", 50)  # continued from the old watermark
    assert_lake_equals_source(lake, db)
    entry = ledger_of(spec)["events"]
    assert entry["identity"] == {
        "home": f"sqlite path={db} table=events",
        "store": f"parquet {lake}/events/",
    }
    assert entry["watermark"]["value"] > old["watermark"]["value"]

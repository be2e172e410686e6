"""Committed entities appear as Prefect assets: read back from the real test server's events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.types.names import validate_valid_asset_key

from blocks import AdlsStore, OneLakeStore, OpenMirroringStore, ParquetStore
from blocks.base import asset_uri
from blocks.stores._blob import table_url
from hygge_core import faults
from tests.conftest import make_events_db, run_flow
from tests.flow_helpers import events_rows, spec_for

MATERIALIZED = "prefect.asset.materialization.succeeded"


def asset_events(flow_run_id: Any, expected: int, wait: float = 30.0) -> list[Any]:
    """The flow run's asset materializations, once the server has stored `expected` of them."""
    deadline = time.monotonic() + wait
    filt = EventFilter(
        event=EventNameFilter(prefix=["prefect.asset."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    while True:
        with get_client(sync_client=True) as client:
            events = list(client.read_events(filter=filt, limit=50).events)
        # events arrive asynchronously; give late extras a moment to show up too
        if len(events) >= expected and time.monotonic() > deadline - wait + 3:
            return events
        if time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_each_committed_entity_is_one_asset_with_its_figures(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 1000))
    lake = tmp_path / "my lake#1"  # characters Prefect refuses in keys
    spec = spec_for(spec_name, db, lake)
    spec["entities"].append({"name": "copy", "table": "events"})

    state = run_flow(spec)
    assert state.is_completed()
    events = asset_events(state.state_details.flow_run_id, 2)
    assert sorted(e.resource.id for e in events) == sorted(
        f"file://{(lake.resolve() / e).as_posix()}".replace(" ", "_").replace("#", "_")
        for e in ("copy", "events")
    )
    assert {e.event for e in events} == {MATERIALIZED}
    by_entity = {e.payload["entity"]: e for e in events}
    files = sorted((lake / "events").glob("*.parquet"))
    assert by_entity["events"].payload == {
        "rows": 1000,
        "bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
        "watermark": {"column": "ts", "value": "2024-05-01T12:03:19"},
        "mode": "replace",
        "run_id": by_entity["events"].payload["run_id"],
        "spec": spec_name,
        "entity": "events",
    }
    assert by_entity["copy"].payload["watermark"] is None
    assert by_entity["copy"].payload["rows"] == 1000
    assert by_entity["events"].resource.get("prefect.resource.name") == "events"

    # the next run: 10 new rows append; the unchanged-source full reload commits again
    make_events_db(db, events_rows(1000, 10))
    again = run_flow(spec)
    assert again.is_completed()
    events = asset_events(again.state_details.flow_run_id, 2)
    later = {e.payload["entity"]: e.payload for e in events}
    assert later["events"]["rows"] == 10
    assert later["events"]["mode"] == "append"
    assert later["events"]["watermark"] == {"column": "ts", "value": "2024-05-01T12:03:21"}


def test_a_failed_entity_records_no_asset(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, retries=0)
    spec["entities"].append({"name": "ghost", "table": "ghost"})

    state = run_flow(spec)
    assert state.is_failed()
    events = asset_events(state.state_details.flow_run_id, 1)
    assert [e.payload["entity"] for e in events] == ["events"]
    assert [e.resource.id for e in events] == [f"file://{(lake / 'events').resolve()}"]


def test_data_published_but_not_committed_becomes_an_asset_when_recovery_commits_it(
    tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 300))
    spec = spec_for(spec_name, db, tmp_path / "lake", retries=0)
    monkeypatch.setenv("HYGGE_FAULT", "flow.before_ledger:raise")
    broken = run_flow(spec)
    assert broken.is_failed()
    assert asset_events(broken.state_details.flow_run_id, 0, wait=5) == []

    monkeypatch.delenv("HYGGE_FAULT")
    faults.reset()
    recovered = run_flow(spec)
    assert recovered.is_completed()
    events = asset_events(recovered.state_details.flow_run_id, 1)
    # recovery commits the first run's data; the entity then finds nothing new
    assert [(e.payload["entity"], e.payload["rows"]) for e in events] == [("events", 300)]


def test_an_incremental_run_with_nothing_new_records_no_asset(
    tmp_path: Path, spec_name: str
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 100))
    spec = spec_for(spec_name, db, tmp_path / "lake")
    assert run_flow(spec).is_completed()
    second = run_flow(spec)
    assert second.is_completed()
    assert asset_events(second.state_details.flow_run_id, 0, wait=5) == []


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("file:///data/lake/orders", "file:///data/lake/orders"),
        ("file:///data/my lake/50%/o#1?[x]", "file:///data/my_lake/50_/o_1__x_"),
    ],
)
def test_asset_uri_replaces_what_prefect_refuses(uri: str, key: str) -> None:
    assert asset_uri(uri) == key
    assert validate_valid_asset_key(asset_uri(uri)) == key


def test_a_long_asset_key_stays_valid_and_unique() -> None:
    a, b = (asset_uri("file:///" + "x" * 600 + tail) for tail in ("/a", "/b"))
    assert len(a) == len(b) == 512
    assert a != b
    assert validate_valid_asset_key(a) == a


def test_azure_stores_name_their_tables_as_abfss_uris() -> None:
    account = "https://acct.blob.core.windows.net/raw"
    assert table_url(account, "shop/orders") == "abfss://raw@acct.dfs.core.windows.net/shop/orders"
    onelake = "https://onelake.blob.fabric.microsoft.com/Sales%20WS"
    assert (
        asset_uri(table_url(onelake, "Sales.Lakehouse/Files/shop/orders"))
        == "abfss://Sales_WS@onelake.dfs.fabric.microsoft.com/Sales.Lakehouse/Files/shop/orders"
    )
    emulator = "http://127.0.0.1:10000/devstoreaccount1/raw"
    assert table_url(emulator, "shop/orders") == f"{emulator}/shop/orders"


def test_a_run_into_an_azure_store_records_its_tables(
    azurite: Any, tmp_path: Path, spec_name: str
) -> None:
    from tests.test_azure_stores import adls_spec

    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 200))
    cont = azurite.new_container()
    state = run_flow(adls_spec(spec_name, db, azurite, cont))
    assert state.is_completed()
    events = asset_events(state.state_details.flow_run_id, 2)
    assert sorted(e.resource.id for e in events) == [
        f"{azurite.blob_url}/{cont}/lake/raw/{entity}" for entity in ("events", "events_copy")
    ]
    blobs = list(azurite.container(cont).list_blobs("lake/raw/events/"))
    payload = next(e.payload for e in events if e.payload["entity"] == "events")
    assert (payload["rows"], payload["files"]) == (200, len(blobs))
    assert payload["bytes"] == sum(b.size for b in blobs)


def test_every_store_names_an_asset(azurite: Any, tmp_path: Path) -> None:
    from prefect_azure import AzureBlobStorageCredentials

    creds = AzureBlobStorageCredentials(connection_string=azurite.connection_string)
    cont = azurite.new_container()
    base = f"{azurite.blob_url}/{cont}"
    keys = {
        "parquet": ParquetStore(path=str(tmp_path / "lake")).asset_key("orders"),
        "adls": AdlsStore(container=cont, path="shop", credentials=creds).asset_key("orders"),
        "onelake": OneLakeStore(
            workspace=cont, item="Sales.Lakehouse", path="shop", credentials=creds
        ).asset_key("orders"),
        "mirroring": OpenMirroringStore(
            workspace=cont, item="Db.Mirrored", table_schema="dbo", credentials=creds
        ).asset_key("orders"),
    }
    assert keys["parquet"] == f"file://{(tmp_path / 'lake' / 'orders').resolve()}"
    assert keys["adls"] == f"{base}/shop/orders"
    assert keys["onelake"] == f"{base}/Sales.Lakehouse/Files/shop/orders"
    assert keys["mirroring"] == f"{base}/Db.Mirrored/Files/LandingZone/dbo.schema/orders"
    for key in keys.values():
        assert validate_valid_asset_key(key) == key

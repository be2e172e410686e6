"""Where a Delta Store's tables are (`blocks/stores/_delta_place.py`), without a service.

OneLake cannot run here, so its tests build the table's URI and delta-rs's storage options
and then let delta-rs send its first request, checking where it went (offline it fails at
DNS, online at the token). Faked, and only that: the Microsoft Entra ID token
(`FAKE_TOKEN`), since no identity exists here. Then every kind of credentials as options,
the one-place rule of a spec, and the column names a Delta table refuses.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from blocks import DeltaStore
from blocks.stores import _delta_place
from flows.spec import parse_spec
from hygge_core.errors import ConfigError, StoreError
from tests.azurite import ACCOUNT, KEY
from tests.test_delta_store import batch, load

#: the Entra ID token the OneLake tests hand delta-rs: a fake, no identity exists here
FAKE_TOKEN = "fake-entra-token-for-tests"


def onelake(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> DeltaStore:
    # faked: the Entra ID token (no identity exists here); the rest is the real code
    monkeypatch.setattr(_delta_place, "entra_token", lambda credentials: FAKE_TOKEN)
    return DeltaStore(workspace="SalesWS", item="Sales Lakehouse.Lakehouse", **settings)


def test_onelake_uri_options_and_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    store = onelake(monkeypatch, lakehouse_schema="dbo")
    host = "onelake.dfs.fabric.microsoft.com"
    uri = f"abfss://SalesWS@{host}/Sales Lakehouse.Lakehouse/Tables/dbo/orders"
    assert store.table_uri("orders") == uri
    assert store.storage_options() == {
        "account_name": "onelake",
        "use_fabric_endpoint": "true",
        "bearer_token": FAKE_TOKEN,
    }
    assert onelake(monkeypatch).table_uri("o").endswith("/Sales Lakehouse.Lakehouse/Tables/o")
    records = store.records()
    assert (
        records is not None
        and records._root() == "Sales Lakehouse.Lakehouse/Files/_hygge/Tables/dbo"
    )
    assert store.describe("orders") == f"delta {uri}/"
    # the first request delta-rs makes: a listing of the table's log at OneLake's Blob endpoint
    # (offline it fails at DNS, online at the fake token; either way it names where it went)
    with pytest.raises(StoreError) as caught:
        store.has_data("orders")
    text = str(caught.value)
    assert "https://onelake.blob.fabric.microsoft.com/SalesWS?" in text
    assert "prefix=Sales+Lakehouse.Lakehouse%2FTables%2Fdbo%2Forders%2F_delta_log" in text
    assert FAKE_TOKEN not in text and caught.value.entity == "orders"


def test_storage_options_for_each_kind_of_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_delta_place, "entra_token", lambda credentials: FAKE_TOKEN)  # faked

    def at(**creds: Any) -> tuple[str, dict[str, str] | None]:
        store = DeltaStore(container="raw", path="lake", credentials=creds)  # type: ignore[arg-type]
        return store.table_uri("t"), store.storage_options()

    azure = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix="
    azure += "core.windows.net"
    assert at(connection_string=azure) == (
        "abfss://raw@acct.dfs.core.windows.net/lake/t",
        {"account_name": "acct", "account_key": KEY},
    )
    sas = "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024&sig=abc="
    assert at(connection_string=sas) == (
        "abfss://raw@acct.dfs.core.windows.net/lake/t",
        {"account_name": "acct", "sas_token": "sv=2024&sig=abc="},
    )
    emulator = f"AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=http://127.0.0.1:9/{ACCOUNT}"
    assert at(connection_string=emulator) == (
        "az://raw/lake/t",
        {
            "account_name": ACCOUNT,
            "endpoint": f"http://127.0.0.1:9/{ACCOUNT}",
            "allow_http": "true",
            "account_key": KEY,
        },
    )
    assert at(connection_string="UseDevelopmentStorage=true")[1] == {
        "account_name": ACCOUNT,
        "use_emulator": "true",
    }
    url = "https://acct.blob.core.windows.net"
    assert at(account_url=url) == (
        "abfss://raw@acct.dfs.core.windows.net/lake/t",
        {"account_name": "acct", "bearer_token": FAKE_TOKEN},
    )
    sp = at(account_url=url, tenant_id="tid", client_id="cid", client_secret="s3cret")[1]
    assert sp == {
        "account_name": "acct",
        "azure_client_id": "cid",
        "azure_client_secret": "s3cret",
        "azure_tenant_id": "tid",
    }


def test_a_service_principal_goes_to_its_tenant_for_a_token() -> None:
    """delta-rs takes the client-secret options itself: its first request is the token's."""
    store = DeltaStore(
        container="raw",
        path="lake",
        credentials={  # type: ignore[arg-type]
            "account_url": "https://acct.blob.core.windows.net",
            "tenant_id": "my-tenant",
            "client_id": "cid",
            "client_secret": "s3cret",
        },
    )
    with pytest.raises(StoreError) as caught:
        store.has_data("t")
    text = str(caught.value)
    assert "https://login.microsoftonline.com/my-tenant/oauth2/v2.0/token" in text
    assert "s3cret" not in text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({}, "has nowhere to write", id="nothing"),
        pytest.param({"container": "c"}, "needs `credentials`", id="container-without-credentials"),
        pytest.param({"workspace": "w"}, "both `workspace` and `item`", id="workspace-alone"),
        pytest.param(
            {"workspace": "w", "item": "i", "path": "x"}, "leave `path` empty", id="onelake-path"
        ),
        pytest.param(
            {"container": "c", "workspace": "w", "item": "i"}, "two places", id="two-places"
        ),
        pytest.param({"path": "p", "lakehouse_schema": "dbo"}, "for a OneLake", id="schema-local"),
        pytest.param(
            {"workspace": "Sales WS", "item": "L.Lakehouse"}, "the workspace's id", id="ws-space"
        ),
        pytest.param(
            {"path": "p", "credentials": {"connection_string": "x"}},
            "a local `path` takes none",
            id="local-credentials",
        ),
    ],
)
def test_a_spec_names_exactly_one_place(settings: dict[str, Any], message: str) -> None:
    spec = {
        "name": "x",
        "home": {"type": "sqlite", "path": "s.sqlite"},
        "store": {"type": "delta", **settings},
        "entities": [{"name": "a"}],
    }
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec)


def test_column_names_delta_refuses_fail_on_a_local_store(tmp_path: Any) -> None:
    store = DeltaStore(path=str(tmp_path / "lake"))
    odd = pa.record_batch({"id": [1], "f(x)": [2], "tab\there": [3], "x=y": [4]})
    with pytest.raises(StoreError, match=r"'f\(x\)', 'tab\\there', 'x=y' hold characters"):
        load(store, "r1", "replace", odd)
    assert not (tmp_path / "lake").exists()  # nothing staged, no manifest, no table


def test_the_spec_names_itself_in_a_local_tables_description(tmp_path: Any) -> None:
    from flows.plan import resolve_blocks

    spec = {
        "name": "shop",
        "home": {"type": "sqlite", "path": str(tmp_path / "s.sqlite")},
        "store": {"type": "delta", "path": str(tmp_path / "lake")},
        "entities": [{"name": "t"}],
    }
    _, store = resolve_blocks(parse_spec(spec))
    assert isinstance(store, DeltaStore) and store.spec_name == "shop"
    load(store, "r1", "replace", batch([(1, "a", 0)]))
    load(store, "r2", "append", batch([(2, "b", 1)]))  # an append keeps the metadata
    meta = DeltaTable(store.table_uri("t")).metadata()
    assert (meta.name, meta.description) == (
        "t",
        "hygge entity 't' of spec 'shop': written by hygge, do not edit by hand",
    )
    # a spec's own `spec_name` wins
    spec["store"] = {**spec["store"], "spec_name": "named"}  # type: ignore[dict-item]
    assert resolve_blocks(parse_spec(spec))[1].spec_name == "named"  # type: ignore[attr-defined]

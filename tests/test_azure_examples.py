"""The bundled example database moved by the shipped specs to each Azure Store (Azurite).

`deployments/example_adls.yaml`, `example_onelake.yaml` and `example_open_mirroring.yaml`
run as a user runs them (`python -m flows.run --spec ...`, a real process), twice, and every
table is read back and compared with the source value by value.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from blocks.stores._blob import BlobArea
from blocks.stores._om_contract import partner_events_findings, table_findings
from flows.example import ensure_example_data
from tests.azurite import Azurite
from tests.test_cli import assert_matches_sqlite, source_table

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "orders": ["order_id"],
    "order_lines": ["order_id", "line_no"],
    "customers": ["customer_id"],
    "products": ["product_id"],
}


def run_spec(spec: str, env: dict[str, str], api_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(REPO / "deployments" / spec)],
        env={**os.environ, "PREFECT_API_URL": api_url, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def read_prefix(c: ContainerClient, prefix: str) -> pl.DataFrame:
    names = sorted(
        b.name
        for b in c.list_blobs(name_starts_with=prefix)
        if b.name.endswith(".parquet") and "/" not in b.name[len(prefix) :]
    )
    tables = [pq.read_table(io.BytesIO(c.download_blob(n).readall())) for n in names]
    return pl.from_arrow(pa.concat_tables(tables))  # type: ignore[return-value]


def assert_same(got: pl.DataFrame, want: pl.DataFrame, table: str) -> None:
    keys = KEYS[table]
    assert got.columns == want.columns, table
    assert_matches_sqlite(got.sort(keys), want.sort(keys), table)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["adls", "onelake", "open_mirroring"])
def test_example_spec_moves_the_shop_exactly(
    azurite: Azurite, tmp_path: Path, prefect_server: str, store: str
) -> None:
    db = ensure_example_data(tmp_path / "example_data" / "shop.sqlite", orders=3000)
    container = azurite.new_container()
    env = {
        "HYGGE_EXAMPLE_DIR": str(db.parent),
        "HYGGE_AZURE_CONNECTION_STRING": azurite.connection_string,
        "HYGGE_ADLS_CONTAINER": container,
        "HYGGE_FABRIC_WORKSPACE": container,
        "HYGGE_DROP_WAIT_SECONDS": "1",
    }
    spec = f"example_{store}.yaml"
    for attempt in (1, 2):
        done = run_spec(spec, env, prefect_server)
        assert done.returncode == 0, f"run {attempt}: {done.stdout}\n{done.stderr}"
    # the run journal lives in the Store too: --history reads it back (no server needed)
    history = subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(REPO / "deployments" / spec),
         "--history"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert history.returncode == 0, history.stderr
    assert sum(" orders " in line for line in history.stdout.splitlines()) == 2  # two runs
    c = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        container
    )
    prefix = {
        "adls": "shop/raw/{t}/",
        "onelake": "Shop.Lakehouse/Files/bronze/{t}/",
        "open_mirroring": "Shop.MountedRelationalDatabase/Files/LandingZone/shop.schema/{t}/",
    }[store]
    for table in KEYS:
        got = read_prefix(c, prefix.format(t=table))
        if store == "open_mirroring":
            # the second run published nothing new for orders/order_lines and replaced the
            # others: every file is a first load's inserts, which carry no marker
            assert "__rowMarker__" not in got.columns
            folder = prefix.format(t=table)
            meta = json.loads(c.download_blob(folder + "_metadata.json").readall())
            assert meta == {"keyColumns": KEYS[table]}
            # the second run moved nothing new for orders/order_lines (one file each) and
            # replaced customers/products (dropped, renumbered from 1): one file everywhere
            names = [b.name[len(folder) :] for b in c.list_blobs(name_starts_with=folder)]
            assert sorted(names) == ["00000000000000000001.parquet", "_metadata.json"]
            # and the folder keeps the landing-zone contract file by file
            landing = BlobArea(c, "Shop.MountedRelationalDatabase/Files/LandingZone")
            assert table_findings(landing, f"shop.schema/{table}") == []
            assert partner_events_findings(landing) == []
        assert_same(got, source_table(db, table), table)

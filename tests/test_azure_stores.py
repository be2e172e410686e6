"""AdlsStore and OneLakeStore against a real Azurite Blob emulator.

Every Store call is a real Blob API request (no Azure SDK mocks). Not covered here: the
ADLS Gen2 DFS endpoint (Azurite has none; the Stores only use the Blob API, which ADLS Gen2
and OneLake both accept) and real Entra ID (the token path is tested in
test_azure_auth.py up to the token issuer).
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from azure.storage.blob import ContainerClient

from tests.azurite import KEY, Azurite
from tests.conftest import ledger_of, make_events_db, run_flow, source_events
from tests.flow_helpers import events_rows, run_cli, summary_row


def read_folder(c: ContainerClient, prefix: str) -> pl.DataFrame:
    """Every published Parquet file directly under `prefix`, read back with pyarrow."""
    names = [
        b.name
        for b in c.list_blobs(name_starts_with=prefix + "/")
        if b.name.endswith(".parquet") and "/" not in b.name[len(prefix) + 1 :]
    ]
    tables = [pq.read_table(io.BytesIO(c.download_blob(n).readall())) for n in sorted(names)]
    return pl.from_arrow(pa.concat_tables(tables))  # type: ignore[return-value]


def assert_equals_source(got: pl.DataFrame, db: Path) -> None:
    want = source_events(db).sort("id")
    got = got.sort("id")
    assert got.height == want.height
    assert got["id"].to_list() == want["id"].to_list()
    assert got["ts"].dt.strftime("%Y-%m-%d %H:%M:%S").to_list() == want["ts"].to_list()
    assert [f"{v:.2f}" for v in got["amount"].cast(pl.Float64)] == [
        f"{float(v):.2f}" for v in want["amount"]
    ]
    assert got["label"].to_list() == want["label"].to_list()


def adls_spec(name: str, db: Path, az: Azurite, cont: str, **store: Any) -> dict[str, Any]:
    return {
        "name": name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {
            "type": "adls",
            "container": cont,
            "path": "lake/raw",
            "credentials": {"connection_string": az.connection_string},
            **store,
        },
        "retry_delay_seconds": 0,
        "defaults": {"batch_size": 97},
        "entities": [
            {"name": "events", "table": "events", "watermark": {"column": "ts", "keys": ["id"]}},
            {"name": "events_copy", "table": "events"},
        ],
    }


def test_adls_full_then_incremental_equals_source(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    cont = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 1000))
    spec = adls_spec(spec_name, db, azurite, cont)
    state = run_flow(spec)
    assert state.is_completed(), state.message
    assert summary_row(state, "events")["rows"] == 1000
    c = azurite.container(cont)
    assert_equals_source(read_folder(c, "lake/raw/events"), db)

    make_events_db(db, events_rows(1000, 301))
    state = run_flow(spec)
    assert state.is_completed(), state.message
    assert summary_row(state, "events")["rows"] == 301  # only the new rows moved
    assert summary_row(state, "events")["mode"] == "append"
    assert_equals_source(read_folder(c, "lake/raw/events"), db)
    assert_equals_source(read_folder(c, "lake/raw/events_copy"), db)  # replaced, not doubled
    assert ledger_of(spec)["events"]["watermark"]["value"] == "2024-05-01T12:04:20"

    names = [b.name for b in c.list_blobs(name_starts_with="lake/raw/")]
    events = [n for n in names if n.startswith("lake/raw/events/")]
    assert len(events) == 2 and all("/part-" in n for n in events)
    # the replaced table keeps only the second run's file
    assert len([n for n in names if n.startswith("lake/raw/events_copy/")]) == 1
    manifests = [n for n in names if n.startswith("lake/raw/_manifests/events/")]
    assert len(manifests) == 2
    states = {yaml.safe_load(c.download_blob(m).readall())["state"] for m in manifests}
    assert states == {"committed"}
    # a third run with nothing new moves nothing and adds no file
    state = run_flow(spec)
    assert summary_row(state, "events")["rows"] == 0
    after = [b.name for b in c.list_blobs(name_starts_with="lake/raw/events/")]
    assert sorted(after) == sorted(events)


def test_onelake_layout_and_readback(azurite: Azurite, tmp_path: Path, spec_name: str) -> None:
    """OneLake = workspace as container, `<item>/Files/<path>/<entity>/` as the folder."""
    workspace = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 500))
    spec = adls_spec(spec_name, db, azurite, workspace)
    spec["store"] = {
        "type": "onelake",
        "workspace": workspace,
        "item": "Shop.Lakehouse",
        "path": "bronze",
        # Azurite takes the emulator key; real OneLake takes Entra ID only (test_azure_auth)
        "credentials": {"connection_string": azurite.connection_string},
    }
    assert run_flow(spec).is_completed()
    make_events_db(db, events_rows(500, 50))
    assert run_flow(spec).is_completed()
    c = azurite.container(workspace)
    assert_equals_source(read_folder(c, "Shop.Lakehouse/Files/bronze/events"), db)
    top = {b.name.split("/")[3] for b in c.list_blobs(name_starts_with="Shop.Lakehouse/Files/")}
    assert top == {"events", "events_copy", "_manifests", "_journal", "_hygge.lock"}


def test_full_drop_replaces_every_file(azurite: Azurite, tmp_path: Path, spec_name: str) -> None:
    cont = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 400))
    spec = adls_spec(spec_name, db, azurite, cont, max_rows_per_file=150)
    assert run_flow(spec).is_completed()
    c = azurite.container(cont)
    first = {b.name for b in c.list_blobs(name_starts_with="lake/raw/events/")}
    assert len(first) == 3  # 400 rows, 150 per file
    state = run_flow(spec, run_type="full_drop")
    assert state.is_completed()
    second = {b.name for b in c.list_blobs(name_starts_with="lake/raw/events/")}
    assert len(second) == 3 and not (first & second)
    assert_equals_source(read_folder(c, "lake/raw/events"), db)


def test_files_are_uploaded_in_blocks_and_appear_whole(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    """A 1 MB block size splits a file into several staged blocks, committed in one step."""
    cont = azurite.new_container()
    con = sqlite3.connect(tmp_path / "big.db")
    con.execute("CREATE TABLE wide (id INTEGER PRIMARY KEY, payload TEXT)")
    con.executemany(
        "INSERT INTO wide VALUES (?, ?)",
        ((i, os.urandom(48).hex()) for i in range(60_000)),  # ~6 MB of incompressible text
    )
    con.commit()
    con.close()
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(tmp_path / "big.db")},
        "store": {
            "type": "adls",
            "container": cont,
            "credentials": {"connection_string": azurite.connection_string},
            "block_size_mb": 1,
            "compression": "none",
        },
        "entities": [{"name": "wide", "table": "wide"}],
    }
    state = run_flow(spec)
    assert state.is_completed(), state.message
    c = azurite.container(cont)
    [name] = [b.name for b in c.list_blobs(name_starts_with="wide/")]
    committed, uncommitted = c.get_blob_client(name).get_block_list("all")
    assert len(committed) >= 6 and not uncommitted
    assert read_folder(c, "wide").height == 60_000


def test_wrong_key_is_a_clear_error_and_not_retried(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    cont = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 10))
    wrong = azurite.connection_string.replace(KEY, "d3Jvbmcga2V5" * 8)
    spec = adls_spec(spec_name, db, azurite, cont)
    spec["store"]["credentials"] = {"connection_string": wrong}
    started = time.monotonic()
    state = run_flow(spec)
    assert state.is_failed()
    # taking the Store's lease is the first call: the run fails before any entity moves
    with pytest.raises(Exception) as info:
        state.result()
    message = str(info.value)
    assert "refused the credentials" in message and "credentials block" in message
    assert "d3Jvbmcga2V5" not in message + str(state.message)  # the key never shows
    assert time.monotonic() - started < 30  # not retried for minutes


def test_missing_container_names_the_fix(azurite: Azurite, tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.db", events_rows(0, 10))
    spec = adls_spec(spec_name, db, azurite, "no-such-container")
    state = run_flow(spec)
    with pytest.raises(Exception, match="container does not exist"):
        state.result()


def test_a_second_run_waits_for_the_lease(azurite: Azurite, tmp_path: Path, spec_name: str) -> None:
    """The lock is a blob lease: held by one run, the other fails fast naming the holder."""
    from blocks import AdlsStore
    from hygge_core.errors import StoreError

    cont = azurite.new_container()
    store = AdlsStore(
        container=cont,
        path="lake",
        credentials={"connection_string": azurite.connection_string},  # type: ignore[arg-type]
        lease_seconds=15,
    )
    with store.exclusive("run-A"):
        with (
            pytest.raises(StoreError, match=r"another hygge run .*\(run run-A, pid"),
            store.exclusive("run-B"),
        ):
            pass
        started = time.monotonic()
        with pytest.raises(StoreError), store.exclusive("run-B", wait_seconds=2):
            pass
        assert time.monotonic() - started >= 2
    with store.exclusive("run-B"):  # released on exit
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "stage.after_batch@3",
        "publish.after_prepare",
        "publish.between_files@1",
        "publish.before_mark",
        "flow.before_ledger",
    ],
)
def test_kill_mid_publish_then_rerun_is_exact(
    azurite: Azurite, tmp_path: Path, spec_name: str, prefect_server: str, point: str
) -> None:
    """SIGKILL while publishing; the rerun waits out the dead run's lease, finishes, and the
    table holds every source row exactly once."""
    cont = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 600))
    spec = adls_spec(spec_name, db, azurite, cont, max_rows_per_file=200)
    spec["store"]["lease_seconds"] = 15
    spec["lock_wait_seconds"] = 40
    spec["retries"] = 0
    spec["entities"] = spec["entities"][:1]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert run_cli(path, prefect_server).returncode == 0
    make_events_db(db, events_rows(600, 500))
    killed = run_cli(path, prefect_server, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    rerun = run_cli(path, prefect_server)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    c = azurite.container(cont)
    got = read_folder(c, "lake/raw/events")
    assert got["id"].n_unique() == got.height  # nothing doubled
    assert_equals_source(got, db)  # nothing lost
    assert ledger_of(spec)["events"]["watermark"]["value"] == "2024-05-01T12:03:39"


def test_staged_files_stay_invisible_until_committed(azurite: Azurite) -> None:
    """A file being written exists only as staged blocks: no listing or read shows it until
    its block list is committed, and then it appears whole."""
    from blocks import AdlsStore
    from blocks.stores.blob_parquet import BlobParquetWriter

    cont = azurite.new_container()
    store = AdlsStore(
        container=cont,
        credentials={"connection_string": azurite.connection_string},  # type: ignore[arg-type]
        block_size_mb=1,
        compression="none",
    )
    writer = store.open_writer("wide", "run-1", "replace")
    assert isinstance(writer, BlobParquetWriter)
    text = [os.urandom(16).hex() for _ in range(50_000)]  # incompressible: ~1.6 MB a batch
    batch = pa.record_batch({"id": list(range(50_000)), "s": text})
    for _ in range(4):
        writer.write(batch)
    writer.files.close()  # every block staged, nothing committed
    c = azurite.container(cont)
    [key] = writer.files.keys
    assert not list(c.list_blobs(name_starts_with="wide/"))
    assert not c.get_blob_client(key).exists()
    assert len(c.get_blob_client(key).get_block_list("uncommitted")[1]) >= 3
    manifest = writer.commit_files(None, 200_000)
    assert manifest.state == "published"
    assert read_folder(c, "wide").height == 200_000


def test_views_from_file_homes_land_as_large_types(azurite: Azurite) -> None:
    """File Homes hand text over as views; the lake's files hold the large types every reader
    (Spark, Fabric, older pyarrow) knows."""
    from blocks import AdlsStore

    cont = azurite.new_container()
    store = AdlsStore(
        container=cont,
        credentials={"connection_string": azurite.connection_string},  # type: ignore[arg-type]
    )
    writer = store.open_writer("v", "run-1", "replace")
    batch = pa.record_batch(
        {
            "id": pa.array([1, 2]),
            "s": pa.array(["ä", None], pa.string_view()),
            "b": pa.array([b"x", b""], pa.binary_view()),
        }
    )
    writer.write(batch)
    writer.commit_files(None, 2)
    c = azurite.container(cont)
    [blob] = [b.name for b in c.list_blobs(name_starts_with="v/") if b.name.endswith(".parquet")]
    table = pq.read_table(io.BytesIO(c.download_blob(blob).readall()))
    assert table.schema.field("s").type == pa.large_string()
    assert table.schema.field("b").type == pa.large_binary()
    assert table.to_pydict() == {"id": [1, 2], "s": ["ä", None], "b": [b"x", b""]}


def test_sas_tokens_never_show_in_messages(azurite: Azurite) -> None:
    """A SAS connection string: descriptions and lock errors name the place, not the token."""
    import datetime as dt

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from blocks import AdlsStore
    from hygge_core.errors import StoreError
    from tests.azurite import ACCOUNT

    cont = azurite.new_container()
    sas = generate_container_sas(
        ACCOUNT,
        cont,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    creds = {"connection_string": f"BlobEndpoint={azurite.blob_url};SharedAccessSignature={sas}"}
    store = AdlsStore(container=cont, path="lake", credentials=creds)  # type: ignore[arg-type]
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    assert signature not in store.describe("orders")
    with store.exclusive("run-A"), pytest.raises(StoreError) as info, store.exclusive("run-B"):
        pass
    assert "another hygge run" in str(info.value) and signature not in str(info.value)

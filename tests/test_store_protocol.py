"""The one publishing protocol (blocks/stores/protocol.py), checked the same way on every Store.

Each case runs against a real backend: a local folder, and Azurite's Blob API for the ADLS,
OneLake and Open Mirroring Stores (not faked: every call is a real request). The Delta Store
runs in all three of its places: a local folder, an ADLS container and OneLake's layout, the
last two on the Azurite that delta-rs needs (`azurite_delta`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import blocks
from blocks.base import EntityWriter, StoreBlock
from blocks.stores import AdlsStore, DeltaStore, OneLakeStore, OpenMirroringStore, ParquetStore
from blocks.stores.protocol import KEEP_COMMITTED, PublishingStore
from hygge_core.errors import StoreError
from hygge_core.faults import InjectedFault
from tests.azurite import Azurite

KINDS = ["parquet", "adls", "onelake", "open_mirroring", "delta"]
#: the Delta Store's remote places, beside its local one (`delta`)
DELTA_PLACES = ["delta_adls", "delta_onelake"]
Make = Callable[[], PublishingStore]


@pytest.fixture(params=KINDS + DELTA_PLACES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    kind = request.param
    if kind == "parquet":
        return lambda: ParquetStore(path=str(tmp_path / "lake"))
    if kind == "delta":
        return lambda: DeltaStore(path=str(tmp_path / "lake"))
    if kind in DELTA_PLACES:
        dz: Azurite = request.getfixturevalue("azurite_delta")
        place = dz.new_container()
        dcreds = {"connection_string": dz.connection_string}
        if kind == "delta_adls":
            return lambda: DeltaStore(container=place, path="lake", credentials=dcreds)  # type: ignore[arg-type]
        return lambda: DeltaStore(workspace=place, item="L.Lakehouse", credentials=dcreds)  # type: ignore[arg-type]
    az: Azurite = request.getfixturevalue("azurite")
    cont = az.new_container()
    creds = {"connection_string": az.connection_string}
    if kind == "adls":
        return lambda: AdlsStore(container=cont, path="lake", credentials=creds)  # type: ignore[arg-type]
    if kind == "onelake":
        return lambda: OneLakeStore(workspace=cont, item="L.Lakehouse", credentials=creds)  # type: ignore[arg-type]
    return lambda: OpenMirroringStore(
        workspace=cont,
        item="M.MountedRelationalDatabase",
        credentials=creds,  # type: ignore[arg-type]
        key_columns=["id"],
    )


def rows_of(store: PublishingStore, entity: str) -> list[int]:
    """The ids a reader sees in the table (for Open Mirroring: the landing zone's files)."""
    batches: Iterator[pa.RecordBatch]
    if isinstance(store, OpenMirroringStore):
        batches = store.landing_files(entity)
    elif isinstance(store, DeltaStore):
        batches = store.read_table(entity)  # the table's current version, through delta-rs
    elif isinstance(store, ParquetStore):
        # as a user reads it: every Parquet file in the table folder
        files = sorted(store.table_dir(entity).glob("*.parquet"))
        batches = (b for f in files for b in pq.read_table(f).to_batches())
    else:
        batches = store.read_table(entity)
    return sorted(i for b in batches for i in b.column("id").to_pylist())


def load(store: PublishingStore, run_id: str, ids: list[int], mode: str = "append") -> None:
    writer = store.open_writer("t", run_id, mode)  # type: ignore[arg-type]
    writer.write(pa.record_batch({"id": pa.array(ids, pa.int64())}))
    manifest = writer.commit_files({"watermark": {"value": run_id}}, len(ids))
    if manifest.state == "waiting":  # Open Mirroring's replace waits for Fabric to drop the table
        manifest = store.finish("t", run_id)
    assert manifest.state == "published"


def test_every_store_in_the_registry_follows_the_protocol() -> None:
    kinds = {kind: blocks.STORES[kind] for kind in blocks.STORES}
    assert set(kinds) >= set(KINDS)
    for kind, cls in kinds.items():
        assert issubclass(cls, StoreBlock), kind
        assert issubclass(cls, PublishingStore), f"{kind} publishes outside the protocol"


def test_publish_recover_and_commit(make_store: Make) -> None:
    store = make_store()
    load(store, "r1", [1, 2])
    # published, not committed: recovery hands the entry back until the flow commits it
    [pending] = store.recover("t")
    assert (pending.run_id, pending.state, pending.ledger_entry) == (
        "r1",
        "published",
        {"watermark": {"value": "r1"}},
    )
    store.mark_committed("t", "r1")
    assert store.recover("t") == []
    assert rows_of(store, "t") == [1, 2]


def prepared_then_stopped(store: PublishingStore, monkeypatch: pytest.MonkeyPatch) -> EntityWriter:
    """r1 committed, then r2 (ids 3, 4) stops right after its manifest says prepared."""
    load(store, "r1", [1, 2])
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
    writer = store.open_writer("t", "r2", "append")
    writer.write(pa.record_batch({"id": pa.array([3, 4], pa.int64())}))
    with pytest.raises(InjectedFault):
        writer.commit_files({"watermark": {"value": "r2"}}, 2)
    monkeypatch.delenv("HYGGE_FAULT")
    assert rows_of(store, "t") == [1, 2]  # prepared: nothing visible yet
    return writer


def test_a_run_prepared_before_a_crash_rolls_forward(
    make_store: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    prepared_then_stopped(store, monkeypatch)
    # the process died here (no abort): the next run's recovery finishes the publish
    assert [(m.run_id, m.state) for m in store.recover("t")] == [("r2", "published")]
    assert rows_of(store, "t") == [1, 2, 3, 4]


def test_an_aborted_attempt_leaves_nothing(
    make_store: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    writer = prepared_then_stopped(store, monkeypatch)
    writer.abort()  # what the engine does on any error
    assert store.load_manifest("t", "r2") is None
    assert store.recover("t") == []
    assert rows_of(store, "t") == [1, 2]
    # and the same run id can then publish cleanly (a retry)
    load(store, "r2", [3])
    assert rows_of(store, "t") == [1, 2, 3]


def test_only_the_newest_committed_manifests_are_kept(make_store: Make) -> None:
    store = make_store()
    runs = [f"r{i:02d}" for i in range(KEEP_COMMITTED + 2)]
    for run_id in runs:
        load(store, run_id, [int(run_id[1:])])
        store.mark_committed("t", run_id)
    assert store.recover("t") == []
    assert store.manifest_ids("t") == runs[-KEEP_COMMITTED:]
    assert rows_of(store, "t") == list(range(len(runs)))


def test_state_objects_are_kept_per_entity(make_store: Make) -> None:
    store = make_store()
    assert store.get_state("t", "boundary-r1") is None
    assert store.state_names("t") == []
    store.put_state("t", "boundary-r1", b"one")
    store.put_state("t", "boundary-r1", b"two")  # replaced whole
    store.put_state("t", "boundary-r2", b"\x00" * 3)
    store.put_state("u", "boundary-r1", b"other entity")
    assert store.get_state("t", "boundary-r1") == b"two"
    assert store.state_names("t") == ["boundary-r1", "boundary-r2"]
    store.delete_state("t", "boundary-r1")
    store.delete_state("t", "never-written")  # harmless
    assert store.state_names("t") == ["boundary-r2"]
    assert store.get_state("u", "boundary-r1") == b"other entity"
    # state objects are not data: the table and its manifests do not see them
    load(store, "r1", [5])
    assert rows_of(store, "t") == [5]
    assert store.manifest_ids("t") == ["r1"]


def test_one_run_at_a_time_and_a_queued_run_says_whom_it_waits_for(make_store: Make) -> None:
    store = make_store()
    said: list[str] = []
    with (
        store.exclusive("run-a"),
        pytest.raises(StoreError, match="another hygge run is writing to"),
        store.exclusive("run-b", 1.5, said.append),
    ):
        pytest.fail("two runs held one Store")
    assert len(said) == 1  # once, not once per retry of the lock
    assert "waiting up to 1.5 s (`lock_wait_seconds`)" in said[0]
    assert f"run run-a, pid {os.getpid()}" in said[0]
    # released: the next run takes it at once, and says nothing
    with store.exclusive("run-c", 5, said.append):
        pass
    assert len(said) == 1


def test_state_files_stream_to_and_from_the_state_area(make_store: Make, tmp_path: Path) -> None:
    store = make_store()
    big = tmp_path / "keys.parquet"
    big.write_bytes(os.urandom(3 << 20))  # 3 MB: many of the copies' and downloads' chunks
    dest = tmp_path / "work" / "back.parquet"
    dest.parent.mkdir()
    assert store.get_state_file("t", "r1.keys.parquet", dest) is False
    assert not dest.exists()
    store.put_state_file("t", "r1.keys.parquet", big)
    assert store.state_names("t") == ["r1.keys.parquet"]  # no temporary name left beside it
    assert store.get_state_file("t", "r1.keys.parquet", dest) is True
    assert dest.read_bytes() == big.read_bytes()
    assert store.get_state("t", "r1.keys.parquet") == big.read_bytes()  # one area, both APIs
    small = tmp_path / "small"
    small.write_bytes(b"replaced")
    store.put_state_file("t", "r1.keys.parquet", small)  # replaced whole
    assert store.get_state_file("t", "r1.keys.parquet", dest) is True
    assert dest.read_bytes() == b"replaced"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["back.parquet"]
    # the protocol's default, through the bytes methods, reads the same objects
    assert PublishingStore.get_state_file(store, "t", "r1.keys.parquet", tmp_path / "d") is True
    assert (tmp_path / "d").read_bytes() == b"replaced"
    PublishingStore.put_state_file(store, "t", "r2.keys.parquet", big)
    assert store.get_state("t", "r2.keys.parquet") == big.read_bytes()
    store.sweep_state("t", {"r2"})  # recovery removes it with its run
    assert store.state_names("t") == ["r2.keys.parquet"]


def test_a_large_state_file_goes_up_in_blocks_and_appears_at_once(
    azurite: Azurite, tmp_path: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    from blocks.stores._blob import BlobArea

    # the SDK's single-put and block sizes made small, so 1 MB takes the block path 10 GB would
    service = BlobServiceClient.from_connection_string(
        azurite.connection_string,
        max_single_put_size=256 << 10,
        max_block_size=64 << 10,
        max_single_get_size=64 << 10,
        max_chunk_get_size=64 << 10,
    )
    container = service.get_container_client(azurite.new_container())
    area = BlobArea(container, "state")
    path = tmp_path / "keys.parquet"
    path.write_bytes(os.urandom(1 << 20))
    name = area.key("_state", "t", "r1.keys.parquet")
    area.put_file(name, path, parallel=2)
    committed, uncommitted = container.get_blob_client(name).get_block_list("all")
    assert (len(committed), len(uncommitted)) == (16, 0)
    dest = tmp_path / "back"
    assert area.get_file(name, dest, parallel=2) is True
    assert dest.read_bytes() == path.read_bytes()
    assert area.get_file(area.key("_state", "t", "missing"), tmp_path / "none") is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "keys.parquet"]

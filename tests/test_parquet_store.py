"""ParquetStore's stage -> prepare -> publish -> commit protocol, driven directly (no flows)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks.base import EntityWriter, WriteMode
from blocks.stores.parquet import ParquetStore
from hygge_core.errors import StoreError
from hygge_core.faults import InjectedFault
from hygge_core.manifest import Manifest

ENTRY = {"watermark": {"column": "id", "kind": "int", "value": 9, "boundary": ["9"]}}


@pytest.fixture
def store(tmp_path: Path) -> ParquetStore:
    return ParquetStore(path=str(tmp_path), max_rows_per_file=2)


def batch(ids: list[int]) -> pa.RecordBatch:
    return pa.record_batch(
        {"id": pa.array(ids, pa.int64()), "label": pa.array([f"r{i}" for i in ids], pa.string())}
    )


def load(
    store: ParquetStore,
    run_id: str,
    mode: WriteMode,
    *batches: list[int],
    entry: dict[str, Any] | None = None,
) -> Manifest:
    """A whole successful run: stage every batch, prepare and publish."""
    writer = store.open_writer("t", run_id, mode)
    for ids in batches:
        writer.write(batch(ids))
    return writer.commit_files(entry, sum(len(b) for b in batches))


def table_ids(store: ParquetStore) -> list[int]:
    files = sorted(store.table_dir("t").glob("*.parquet"))
    return sorted(pq.read_table(files).column("id").to_pylist()) if files else []


def table_files(store: ParquetStore) -> list[str]:
    folder = store.table_dir("t")
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def manifest_on_disk(store: ParquetStore, run_id: str) -> dict[str, Any]:
    return json.loads(store.manifest_path("t", run_id).read_text(encoding="utf-8"))


def assert_no_staging(root: Path) -> None:
    """No run folder (`_staging/<entity>/<run>`) and no file is left under `_staging`."""
    staging = root / "_staging"
    left = [*staging.glob("*/*"), *(p for p in staging.rglob("*") if p.is_file())]
    assert not left, left


# -- the happy path -----------------------------------------------------------------------------


def test_store_append_publishes_run_named_files(store: ParquetStore, tmp_path: Path) -> None:
    manifest = load(store, "20240501T000000Z-a", "append", [1, 2], [3, 4], [5], entry=ENTRY)
    names = [
        "part-20240501T000000Z-a-00000.parquet",
        "part-20240501T000000Z-a-00001.parquet",
        "part-20240501T000000Z-a-00002.parquet",
    ]
    assert manifest.files == names
    assert manifest.state == "published"
    assert manifest.rows == 5
    assert manifest.ledger_entry == ENTRY
    assert manifest.bytes == sum((tmp_path / "t" / n).stat().st_size for n in names)
    assert table_files(store) == names
    assert table_ids(store) == [1, 2, 3, 4, 5]
    assert manifest_on_disk(store, "20240501T000000Z-a")["state"] == "published"
    assert_no_staging(tmp_path)

    load(store, "20240502T000000Z-b", "append", [6])
    assert table_files(store) == [*names, "part-20240502T000000Z-b-00000.parquet"]
    assert table_ids(store) == [1, 2, 3, 4, 5, 6]


def test_store_commit_marks_manifest_and_recover_has_nothing_pending(
    store: ParquetStore,
) -> None:
    load(store, "r1", "append", [1], entry=ENTRY)
    assert [m.run_id for m in store.recover("t")] == ["r1"]  # published, not yet committed
    store.mark_committed("t", "r1")
    assert manifest_on_disk(store, "r1")["state"] == "committed"
    assert store.recover("t") == []
    assert table_ids(store) == [1]


@pytest.mark.parametrize("exchange", [True, False])
def test_store_replace_swaps_the_whole_table(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setenv("HYGGE_NO_RENAME_EXCHANGE", "1")
    load(store, "r1", "append", [1, 2], [3])
    manifest = load(store, "r2", "replace", [10, 11], [12])
    assert manifest.files == ["part-r2-00000.parquet", "part-r2-00001.parquet"]
    assert table_files(store) == manifest.files  # nothing of r1 is left
    assert table_ids(store) == [10, 11, 12]
    assert_no_staging(tmp_path)


def test_store_replace_of_a_missing_table_creates_it(store: ParquetStore) -> None:
    assert not store.has_data("t")
    load(store, "r1", "replace", [1])
    assert store.has_data("t")
    assert table_ids(store) == [1]


def test_store_append_reorders_columns_to_the_table(store: ParquetStore) -> None:
    load(store, "r1", "append", [1])
    writer = store.open_writer("t", "r2", "append")
    writer.write(pa.record_batch({"label": ["x"], "id": pa.array([2], pa.int64())}))
    writer.commit_files(None, 1)
    assert pq.read_schema(store.table_dir("t") / "part-r2-00000.parquet").names == ["id", "label"]
    assert table_ids(store) == [1, 2]


def test_store_append_schema_change_names_the_column(store: ParquetStore, tmp_path: Path) -> None:
    load(store, "r1", "append", [1, 2])
    writer = store.open_writer("t", "r2", "append")
    changed = pa.record_batch(
        {"id": pa.array(["3"], pa.string()), "label": ["x"], "extra": pa.array([1.5])}
    )
    with pytest.raises(StoreError, match=r"^entity 't': the source schema no longer matches") as e:
        writer.write(changed)
    message = str(e.value)
    assert "id: int64 -> string" in message
    assert "+extra double" in message
    assert "--full-drop" in message
    assert "label" not in message  # unchanged columns are not blamed
    writer.abort()
    assert table_files(store) == ["part-r1-00000.parquet"]
    assert table_ids(store) == [1, 2]
    assert_no_staging(tmp_path)


def test_store_replace_accepts_a_new_schema(store: ParquetStore) -> None:
    load(store, "r1", "append", [1])
    writer = store.open_writer("t", "r2", "replace")
    writer.write(pa.record_batch({"id": pa.array(["a"], pa.string())}))
    writer.commit_files(None, 1)
    assert pq.read_table(store.table_dir("t")).column("id").to_pylist() == ["a"]


# -- abort --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_store_abort_before_prepare_leaves_no_trace(
    store: ParquetStore, tmp_path: Path, mode: WriteMode
) -> None:
    load(store, "r1", "append", [1, 2])
    writer = store.open_writer("t", "r2", mode)
    writer.write(batch([3, 4]))
    writer.write(batch([5]))
    assert (tmp_path / "_staging" / "t" / "r2").is_dir()
    writer.abort()
    assert_no_staging(tmp_path)
    assert not store.manifest_path("t", "r2").exists()
    assert table_files(store) == ["part-r1-00000.parquet"]
    assert table_ids(store) == [1, 2]


@pytest.mark.parametrize(
    ("mode", "fault"),
    [
        ("append", "publish.after_prepare"),
        ("append", "publish.between_files"),  # one file already in the table
        ("replace", "publish.after_prepare"),
    ],
)
def test_store_abort_after_prepare_rolls_back(
    store: ParquetStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: WriteMode,
    fault: str,
) -> None:
    load(store, "r1", "append", [1, 2])
    writer = store.open_writer("t", "r2", mode)
    writer.write(batch([3, 4]))
    writer.write(batch([5]))
    monkeypatch.setenv("HYGGE_FAULT", f"{fault}:raise")
    with pytest.raises(InjectedFault):
        writer.commit_files(ENTRY, 3)
    monkeypatch.delenv("HYGGE_FAULT")
    writer.abort()
    assert table_files(store) == ["part-r1-00000.parquet"]
    assert table_ids(store) == [1, 2]
    assert not store.manifest_path("t", "r2").exists()
    assert_no_staging(tmp_path)
    assert [m.run_id for m in store.recover("t")] == ["r1"]  # only the real, published run


# -- recovery after a crash (no abort ran: the process died) ------------------------------------


@pytest.mark.parametrize("fault", ["publish.after_prepare", "publish.between_files"])
def test_store_recover_rolls_prepared_append_forward(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    load(store, "r1", "append", [1])
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", f"{fault}:raise")
    with pytest.raises(InjectedFault):
        load(store, "r2", "append", [2, 3], [4], entry=ENTRY)
    monkeypatch.delenv("HYGGE_FAULT")
    assert manifest_on_disk(store, "r2")["state"] == "prepared"

    pending = store.recover("t")
    assert [(m.run_id, m.state, m.rows, m.ledger_entry) for m in pending] == [
        ("r2", "published", 3, ENTRY)
    ]
    assert manifest_on_disk(store, "r2")["state"] == "published"
    assert table_files(store) == [
        "part-r1-00000.parquet",
        "part-r2-00000.parquet",
        "part-r2-00001.parquet",
    ]
    assert table_ids(store) == [1, 2, 3, 4]
    assert_no_staging(tmp_path)
    assert store.recover("t")[0].run_id == "r2"  # recovery is repeatable


def test_store_recover_rolls_back_when_a_staged_file_is_missing(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(store, "r1", "append", [1])
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.between_files:raise")
    with pytest.raises(InjectedFault):
        load(store, "r2", "append", [2, 3], [4, 5], [6], entry=ENTRY)
    monkeypatch.delenv("HYGGE_FAULT")
    # the first file was published before the crash; lose one of the staged ones
    assert "part-r2-00000.parquet" in table_files(store)
    (tmp_path / "_staging" / "t" / "r2" / "part-r2-00002.parquet").unlink()

    assert store.recover("t") == []
    assert table_files(store) == ["part-r1-00000.parquet"]  # r2's published file is gone too
    assert table_ids(store) == [1]
    assert not store.manifest_path("t", "r2").exists()
    assert_no_staging(tmp_path)


def test_store_recover_rolls_back_replace_with_a_missing_staged_file(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(store, "r1", "append", [1])
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
    with pytest.raises(InjectedFault):
        load(store, "r2", "replace", [7, 8], [9])
    monkeypatch.delenv("HYGGE_FAULT")
    (tmp_path / "_staging" / "t" / "r2" / "part-r2-00001.parquet").unlink()

    assert store.recover("t") == []
    assert table_ids(store) == [1]
    assert not store.manifest_path("t", "r2").exists()
    assert_no_staging(tmp_path)


def test_store_recover_returns_published_manifests_oldest_first(store: ParquetStore) -> None:
    load(store, "20240501-a", "append", [1], entry={"n": 1})
    load(store, "20240502-b", "append", [2], entry={"n": 2})
    pending = store.recover("t")
    assert [(m.run_id, m.ledger_entry) for m in pending] == [
        ("20240501-a", {"n": 1}),
        ("20240502-b", {"n": 2}),
    ]
    assert all(m.state == "published" for m in pending)
    assert table_ids(store) == [1, 2]  # recovery does not touch published data


def test_store_recover_removes_orphan_staging(store: ParquetStore, tmp_path: Path) -> None:
    load(store, "r1", "append", [1])
    store.mark_committed("t", "r1")
    # a run killed while staging: files, but no manifest
    writer = store.open_writer("t", "r2", "append")
    writer.write(batch([2, 3]))
    writer.write(batch([4]))
    del writer
    stray = tmp_path / "_staging" / "t" / "r0.old"
    stray.mkdir()
    (stray / "part-r0-00000.parquet").write_bytes(b"not parquet")
    assert (tmp_path / "_staging" / "t" / "r2" / "part-r2-00000.parquet").exists()

    assert store.recover("t") == []
    assert_no_staging(tmp_path)
    assert table_files(store) == ["part-r1-00000.parquet"]


def test_store_recover_keeps_the_last_ten_committed_manifests(store: ParquetStore) -> None:
    for i in range(12):
        load(store, f"r{i:02d}", "append", [i])
        store.mark_committed("t", f"r{i:02d}")
    assert store.recover("t") == []
    kept = sorted(p.stem for p in (Path(store.path) / "_manifests" / "t").glob("*.json"))
    assert kept == [f"r{i:02d}" for i in range(2, 12)]
    assert table_ids(store) == list(range(12))  # pruning manifests never touches data


# -- full_drop swaps interrupted --------------------------------------------------------------


def test_store_recover_finishes_exchange_interrupted_before_mark(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(store, "r1", "append", [1, 2])
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.before_mark:raise")
    with pytest.raises(InjectedFault):
        load(store, "r2", "replace", [7, 8], entry=ENTRY)
    monkeypatch.delenv("HYGGE_FAULT")
    assert table_ids(store) == [7, 8]  # swapped in one step; the manifest still says prepared

    assert [(m.run_id, m.state) for m in store.recover("t")] == [("r2", "published")]
    assert table_files(store) == ["part-r2-00000.parquet"]
    assert_no_staging(tmp_path)  # the old table, parked in staging by the exchange, is gone


def fallback_swap_interrupted(store: ParquetStore, monkeypatch: pytest.MonkeyPatch) -> EntityWriter:
    """r1 published, then a replace r2 that stops between the fallback's two renames."""
    load(store, "r1", "append", [1, 2], [3])
    store.mark_committed("t", "r1")
    monkeypatch.setenv("HYGGE_NO_RENAME_EXCHANGE", "1")
    monkeypatch.setenv("HYGGE_FAULT", "publish.between_swap_renames:raise")
    writer = store.open_writer("t", "r2", "replace")
    writer.write(batch([7, 8]))
    writer.write(batch([9]))
    with pytest.raises(InjectedFault):
        writer.commit_files(ENTRY, 3)
    monkeypatch.delenv("HYGGE_FAULT")
    # the old table is parked next to the staged one; the table folder is gone for now
    parked = Path(store.path) / "_staging" / "t" / "r2.old"
    assert sorted(p.name for p in parked.iterdir()) == [
        "part-r1-00000.parquet",
        "part-r1-00001.parquet",
    ]
    assert not store.table_dir("t").exists()
    return writer


def test_store_recover_finishes_fallback_swap_after_a_crash(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback_swap_interrupted(store, monkeypatch)
    # the process died here: no abort ran
    pending = store.recover("t")
    assert [(m.run_id, m.state, m.ledger_entry) for m in pending] == [("r2", "published", ENTRY)]
    assert table_files(store) == ["part-r2-00000.parquet", "part-r2-00001.parquet"]
    assert table_ids(store) == [7, 8, 9]
    assert_no_staging(tmp_path)


def test_store_abort_during_fallback_swap_restores_the_old_table(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = fallback_swap_interrupted(store, monkeypatch)
    # the engine aborts the writer on any error (hygge_tasks.move): the old table must survive
    writer.abort()
    assert table_files(store) == ["part-r1-00000.parquet", "part-r1-00001.parquet"]
    assert table_ids(store) == [1, 2, 3]
    assert store.recover("t") == []
    assert table_ids(store) == [1, 2, 3]
    assert_no_staging(tmp_path)

    # and a retry of the same run then replaces the table cleanly
    load(store, "r2", "replace", [7, 8], [9])
    assert table_files(store) == ["part-r2-00000.parquet", "part-r2-00001.parquet"]
    assert table_ids(store) == [7, 8, 9]
    assert_no_staging(tmp_path)


def test_store_recover_undoes_fallback_swap_with_a_missing_staged_file(
    store: ParquetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback_swap_interrupted(store, monkeypatch)
    (tmp_path / "_staging" / "t" / "r2" / "part-r2-00001.parquet").unlink()
    # the new table cannot be finished: the old one must come back, not vanish with the staging
    assert store.recover("t") == []
    assert table_files(store) == ["part-r1-00000.parquet", "part-r1-00001.parquet"]
    assert table_ids(store) == [1, 2, 3]
    assert not store.manifest_path("t", "r2").exists()
    assert_no_staging(tmp_path)


# -- the two encoders: Polars' parallel sink, pyarrow for what Polars cannot write ----------------


def test_store_append_mixes_files_of_both_encoders(store: ParquetStore) -> None:
    # a table first written by pyarrow (string), as earlier versions did, then appended to by
    # the Polars encoder (large_string), then by pyarrow again: one table throughout
    store.table_dir("t").mkdir(parents=True)
    pq.write_table(pa.Table.from_batches([batch([1, 2])]), store.table_dir("t") / "part-r0.parquet")
    load(store, "r1", "append", [3, 4])
    assert pq.read_schema(store.table_dir("t") / "part-r1-00000.parquet").field("label").type in (
        pa.large_string(),
        pa.string(),
    )
    large = pa.record_batch(
        {"id": pa.array([5], pa.int64()), "label": pa.array(["r5"], pa.large_string())}
    )
    writer = store.open_writer("t", "r2", "append")
    writer.write(large)
    writer.commit_files(None, 1)
    assert table_ids(store) == [1, 2, 3, 4, 5]
    read = pa.Table.from_batches(list(store.read_table("t"))).to_pydict()
    assert read["label"] == ["r1", "r2", "r3", "r4", "r5"]


def test_store_keeps_not_null_and_exotic_types(store: ParquetStore) -> None:
    # NOT NULL stays `required`; types Polars would change (time64[us] -> ns, null) go through
    # pyarrow; every file reads back with the types it was given
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("at", pa.time64("us")),
            pa.field("n", pa.null()),
        ]
    )
    rows = pa.record_batch(
        [
            pa.array([1, 2], pa.int64()),
            pa.array([1, 2], pa.time64("us")),
            pa.nulls(2),
        ],
        schema=schema,
    )
    writer = store.open_writer("t", "r1", "replace")
    writer.write(rows)
    writer.commit_files(None, 2)
    [path] = store.table_dir("t").glob("*.parquet")
    assert pq.read_schema(path).remove_metadata().equals(schema)
    plain = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("d", pa.float64())])
    writer = store.open_writer("u", "r1", "replace")
    writer.write(pa.record_batch([pa.array([1]), pa.array([0.5])], schema=plain))
    writer.commit_files(None, 1)
    [path] = store.table_dir("u").glob("*.parquet")
    assert pq.read_schema(path).field("id").nullable is False
    assert pq.read_table(path).to_pydict() == {"id": [1], "d": [0.5]}


def test_store_writes_views_as_the_large_types(store: ParquetStore) -> None:
    # the file Homes hand text over as views (no copy); the files hold the types every reader
    # knows, through either encoder (`at`, a time column, sends the second file through pyarrow)
    views = pa.schema([("id", pa.int64()), ("s", pa.string_view()), ("b", pa.binary_view())])
    arrays = [
        pa.array([1, 2], pa.int64()),
        pa.array(["a", None], pa.string_view()),
        pa.array([b"x", b"yz"], pa.binary_view()),
    ]
    for entity, extra in (("polars", []), ("arrow", [pa.field("at", pa.time64("us"))])):
        schema = pa.schema([*views, *extra])
        columns = [*arrays, *(pa.array([1, 2], f.type) for f in extra)]
        writer = store.open_writer(entity, "r1", "replace")
        writer.write(pa.record_batch(columns, schema=schema))
        writer.commit_files(None, 2)
        [path] = store.table_dir(entity).glob("*.parquet")
        read = pq.read_table(path)
        assert read.schema.field("s").type == pa.large_string(), entity
        assert read.schema.field("b").type == pa.large_binary(), entity
        assert read.select(["id", "s", "b"]).to_pydict() == {
            "id": [1, 2],
            "s": ["a", None],
            "b": [b"x", b"yz"],
        }


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "lz4", "none"])
def test_store_writes_every_compression(tmp_path: Path, compression: str) -> None:
    store = ParquetStore(path=str(tmp_path), compression=compression)
    load(store, "r1", "replace", [1, 2], [3])
    [path] = store.table_dir("t").glob("*.parquet")
    codec = pq.ParquetFile(path).metadata.row_group(0).column(0).compression
    assert codec.lower().startswith({"none": "uncompressed"}.get(compression, compression))
    assert table_ids(store) == [1, 2, 3]


def test_store_encoder_failure_is_a_store_error(store: ParquetStore, tmp_path: Path) -> None:
    writer = store.open_writer("t", "enc1", "replace")
    writer.write(batch([1, 2]))
    # the staging folder vanishes under the writer (a cleaned-up disk, a dropped mount)
    shutil.rmtree(tmp_path / "_staging")
    with pytest.raises(StoreError, match="cannot write"):
        writer.write(batch([3, 4]))
        writer.commit_files(None, 4)
    writer.abort()
    assert table_files(store) == []
    assert not [t for t in threading.enumerate() if "enc1" in t.name]


def test_store_abort_stops_the_encoder(store: ParquetStore, tmp_path: Path) -> None:
    writer = store.open_writer("t", "enc1", "replace")
    for i in range(5):
        writer.write(batch([i]))
    writer.abort()
    assert not [t for t in threading.enumerate() if "enc1" in t.name]
    assert_no_staging(tmp_path)

"""Key-set reconciliation (hygge_tasks/keyset.py) and its storage (hygge_tasks/keyset_store.py).

Real files throughout: the stored key set is a Parquet file, the spills are Arrow IPC files on
disk, and the Store is a real local ParquetStore. Small chunk and bucket sizes push small inputs
through many chunks and buckets, the code paths 10M keys take.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.stores.parquet import ParquetStore
from hygge_core.errors import ConfigError, LedgerError
from hygge_tasks import keyset_buckets
from hygge_tasks.keyset import KeyCollector, KeyDiff, diff_keys
from hygge_tasks.keyset_store import fetch_keyset, file_sha256, store_keyset


@pytest.fixture(autouse=True)
def _small_spills(monkeypatch: pytest.MonkeyPatch) -> None:
    # a few rows per chunk and per bucket: many chunks, many buckets, as at 10M keys
    monkeypatch.setattr(keyset_buckets, "CHUNK_ROWS", 7)
    monkeypatch.setattr(keyset_buckets, "BUCKET_ROWS", 3)


def batches(table: pa.Table, size: int = 5) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches(max_chunksize=size)


def rows(path_or_diff: Path | KeyDiff) -> list[tuple[Any, ...]]:
    if isinstance(path_or_diff, KeyDiff):
        table = pa.Table.from_batches(list(path_or_diff.deleted_batches()), path_or_diff.schema)
    else:
        table = pq.read_table(path_or_diff)
    return sorted((tuple(r.values()) for r in table.to_pylist()), key=order)


def order(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    """A sort key for key tuples with NULLs in them (NULLs last)."""
    return tuple((v is None, v) for v in key)


def collect(keys: list[str], table: pa.Table, workdir: Path) -> KeyCollector:
    collector = KeyCollector(keys, workdir)
    for batch in batches(table):
        collector.add(batch)
    return collector


def ids(values: list[int | None]) -> pa.Table:
    return pa.table({"id": pa.array(values, pa.int64()), "payload": ["x"] * len(values)})


def test_first_run_keeps_the_source_and_what_was_written(tmp_path: Path) -> None:
    written = collect(["id"], ids([1, 2, 3, 10]), tmp_path)
    diff = diff_keys(["id"], batches(ids(list(range(1, 21)))), written, None, tmp_path)
    assert (diff.previous_count, diff.source_count, diff.deleted_count) == (None, 20, 0)
    assert rows(diff.path) == [(i,) for i in range(1, 21)]
    assert diff.count == 20
    assert list(diff.deleted_batches()) == []
    assert pq.read_schema(diff.path) == pa.schema([pa.field("id", pa.int64())])


def test_deleted_keys_and_the_new_set_value_by_value(tmp_path: Path) -> None:
    first = diff_keys(["id"], batches(ids(list(range(30)))), None, None, tmp_path)
    # the source lost 3, 7 and 25, gained 30 and 31; this run wrote 30, 31 and an update of 4
    source = ids([i for i in range(32) if i not in (3, 7, 25)])
    written = collect(["id"], ids([30, 31, 4]), tmp_path)
    diff = diff_keys(["id"], batches(source), written, first.path, tmp_path)
    assert rows(diff) == [(3,), (7,), (25,)]
    assert (diff.deleted_count, diff.previous_count, diff.source_count) == (3, 30, 29)
    assert rows(diff.path) == [(i,) for i in range(32) if i not in (3, 7, 25)]
    assert diff.count == 29


def test_a_key_the_source_gained_but_nobody_wrote_is_not_held(tmp_path: Path) -> None:
    first = diff_keys(["id"], batches(ids([1, 2, 3])), None, None, tmp_path)
    # 4 appeared at the source after the data pass: the destination does not hold it yet
    diff = diff_keys(["id"], batches(ids([1, 2, 3, 4])), None, first.path, tmp_path)
    assert rows(diff.path) == [(1,), (2,), (3,)]
    assert (diff.deleted_count, diff.source_count, diff.count) == (0, 4, 3)


TYPED: list[tuple[str, pa.DataType, list[Any]]] = [
    ("int32", pa.int32(), [1, -5, 2**31 - 1, 7, 8]),
    ("uint64", pa.uint64(), [0, 2**64 - 1, 3, 4, 5]),
    ("string", pa.string(), ["a", "é", "", "a ", "zz"]),
    ("large_string", pa.large_string(), ["k1", "k2", "k3", "k4", "k5"]),
    ("date", pa.date32(), [dt.date(2024, 1, d) for d in range(1, 6)]),
    (
        "timestamp_tz",
        pa.timestamp("us", "UTC"),
        [dt.datetime(2024, 1, 1, 0, 0, s, tzinfo=dt.UTC) for s in range(5)],
    ),
    ("timestamp_s", pa.timestamp("s"), [dt.datetime(2024, 1, 1, 0, 0, s) for s in range(5)]),
    ("decimal", pa.decimal128(12, 2), [decimal.Decimal(f"{i}.25") for i in range(5)]),
    ("binary", pa.binary(), [b"\x00", b"\x00\x00", b"\xff", b"a", b""]),
    ("fixed_binary", pa.binary(2), [b"\x00\x01", b"ab", b"cd", b"ef", b"\xff\xff"]),
    ("bool", pa.bool_(), [True, False, True, False, True]),
]


@pytest.mark.parametrize(("name", "type_", "values"), TYPED, ids=[t[0] for t in TYPED])
def test_typed_keys_come_back_in_the_source_types(
    tmp_path: Path, name: str, type_: pa.DataType, values: list[Any]
) -> None:
    held = pa.table({"k": pa.array(values, type_)})
    first = diff_keys(["k"], batches(held, 2), None, None, tmp_path)
    # Parquet has no second unit: it keeps milliseconds, which the next run casts back
    stored = pa.timestamp("ms") if type_ == pa.timestamp("s") else type_
    assert pq.read_schema(first.path).field("k").type == stored
    # bool has two values only: all but the first source row's value stay
    source = held.slice(1)
    diff = diff_keys(["k"], batches(source, 2), None, first.path, tmp_path)
    gone = sorted(set(held.column("k").to_pylist()) - set(source.column("k").to_pylist()))
    deleted = list(diff.deleted_batches())
    assert all(b.schema == diff.schema for b in deleted)
    assert diff.schema == pa.schema([pa.field("k", type_)])
    assert sorted(v for b in deleted for v in b.column("k").to_pylist()) == gone
    assert pq.read_schema(diff.path).field("k").type == stored


def test_multi_column_keys_compare_as_a_whole(tmp_path: Path) -> None:
    def table(pairs: list[tuple[int, str, dt.date]]) -> pa.Table:
        a, b, c = zip(*pairs, strict=True)
        return pa.table(
            {
                "region": pa.array(a, pa.int16()),
                "code": pa.array(b, pa.string()),
                "day": pa.array(c, pa.date32()),
            }
        )

    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    held = [(1, "a", d1), (1, "a", d2), (1, "b", d1), (2, "a", d1), (2, "b", d2)]
    keys = ["region", "code", "day"]
    first = diff_keys(keys, batches(table(held), 2), None, None, tmp_path)
    # (1, "a", d2) is gone, although (1, "a", d1) and (2, "b", d2) share parts of it
    now = [(1, "a", d1), (1, "b", d1), (2, "a", d1), (2, "b", d2), (2, "b", d1)]
    diff = diff_keys(keys, batches(table(now), 2), None, first.path, tmp_path)
    assert rows(diff) == [(1, "a", d2)]
    assert rows(diff.path) == sorted(held[:1] + held[2:])


def test_a_null_inside_a_key_matches_a_null(tmp_path: Path) -> None:
    def table(pairs: list[tuple[int | None, str | None]]) -> pa.Table:
        a, b = zip(*pairs, strict=True)
        return pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.string())})

    held = [(1, None), (None, None), (None, "x"), (2, "y"), (3, "")]
    first = diff_keys(["a", "b"], batches(table(held), 2), None, None, tmp_path)
    assert first.count == 5
    # the NULLs still match; (3, "") is gone: an empty string is not NULL
    now = [(1, None), (None, None), (None, "x"), (2, "y"), (3, None)]
    diff = diff_keys(["a", "b"], batches(table(now), 2), None, first.path, tmp_path)
    assert rows(diff) == [(3, "")]
    assert diff.source_count == 5
    assert rows(diff.path) == sorted(held[:4], key=order)


def test_float_keys_match_nan_and_signed_zero(tmp_path: Path) -> None:
    held = pa.table({"k": pa.array([1.5, float("nan"), 0.0, None])})
    first = diff_keys(["k"], batches(held), None, None, tmp_path)
    now = pa.table({"k": pa.array([float("nan"), -0.0, 2.5])})
    diff = diff_keys(["k"], batches(now), None, first.path, tmp_path)
    assert sorted(rows(diff), key=order) == [(1.5,), (None,)]
    assert (diff.count, diff.source_count) == (2, 3)


def test_duplicate_keys_count_once(tmp_path: Path) -> None:
    source = ids([1, 1, 2, 2, 2, None, None, 3])
    written = collect(["id"], ids([3, 3, 4, 4]), tmp_path)
    diff = diff_keys(["id"], batches(source, 3), written, None, tmp_path)
    assert diff.source_count == 4  # 1, 2, 3 and NULL
    assert written.count == 4  # rows added, duplicates included
    assert rows(diff.path) == sorted([(1,), (2,), (3,), (4,), (None,)], key=order)
    assert diff.count == 5
    again = diff_keys(["id"], batches(ids([1, 1, 3])), None, diff.path, tmp_path)
    assert sorted(rows(again), key=order) == sorted([(2,), (4,), (None,)], key=order)


def test_an_empty_source_deletes_every_held_key(tmp_path: Path) -> None:
    first = diff_keys(["id"], batches(ids([5, 6, 7])), None, None, tmp_path)
    diff = diff_keys(["id"], iter([]), None, first.path, tmp_path)
    # the caller's safety check reads these and refuses to delete: the counts must say so
    assert (diff.source_count, diff.previous_count, diff.deleted_count, diff.count) == (0, 3, 3, 0)
    assert rows(diff) == [(5,), (6,), (7,)]
    assert diff.schema == pa.schema([pa.field("id", pa.int64())])
    # batches of no rows are no keys
    empty = pa.record_batch({"id": pa.array([], pa.int64())})
    assert diff_keys(["id"], iter([empty, empty]), None, first.path, tmp_path).deleted_count == 3


def test_an_empty_first_run_keeps_an_empty_typed_set(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("id", pa.int32()), pa.field("v", pa.string())])
    diff = diff_keys(["id"], iter([]), None, None, tmp_path, schema=schema)
    assert (diff.count, diff.source_count, diff.previous_count) == (0, 0, None)
    assert pq.read_schema(diff.path) == pa.schema([pa.field("id", pa.int32())])
    # the next run compares against it as an empty set
    later = diff_keys(
        ["id"], batches(pa.table({"id": pa.array([1], pa.int32())})), None, diff.path, tmp_path
    )
    assert (later.previous_count, later.deleted_count, later.count) == (0, 0, 0)


def test_a_widened_key_type_still_matches(tmp_path: Path) -> None:
    first = diff_keys(
        ["id"], batches(pa.table({"id": pa.array([1, 2, 3], pa.int32())})), None, None, tmp_path
    )
    diff = diff_keys(["id"], batches(ids([1, 3])), None, first.path, tmp_path)
    assert rows(diff) == [(2,)]
    assert pq.read_schema(diff.path).field("id").type == pa.int64()


def test_a_key_whose_type_changed_family_is_refused(tmp_path: Path) -> None:
    first = diff_keys(["id"], batches(ids([1, 2])), None, None, tmp_path)
    text = pa.table({"id": pa.array(["1", "2"])})
    with pytest.raises(
        LedgerError,
        match=r"'id' is string at the source but int64 in the stored "
        r"key set.*--full-drop",
    ) as info:
        diff_keys(["id"], batches(text), None, first.path, tmp_path, entity="orders")
    assert info.value.entity == "orders"


def test_a_dictionary_encoded_key_matches_its_plain_values(tmp_path: Path) -> None:
    plain = pa.table({"code": pa.array(["a", "b", "c"])})
    first = diff_keys(["code"], batches(plain), None, None, tmp_path)
    encoded = pa.table({"code": pa.array(["a", "c", "a"]).dictionary_encode()})
    diff = diff_keys(["code"], batches(encoded), None, first.path, tmp_path)
    assert rows(diff) == [("b",)]
    assert diff.schema == pa.schema([pa.field("code", pa.string())])


@pytest.mark.parametrize(
    "type_",
    [pa.list_(pa.int64()), pa.month_day_nano_interval(), pa.decimal256(60, 2)],
    ids=["list", "interval", "decimal60"],
)
def test_a_key_type_that_cannot_be_compared_is_refused(tmp_path: Path, type_: pa.DataType) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("k", type_)])
    with pytest.raises(
        ConfigError, match=rf"key column 'k' is {re.escape(str(type_))}, which cannot be compared"
    ):
        diff_keys(["id", "k"], iter([]), None, None, tmp_path, schema=schema, entity="orders")
    collector = KeyCollector(["k"], tmp_path, entity="orders")
    one_row = pa.table({"id": pa.array([1]), "k": pa.array([None], type_)})
    with pytest.raises(ConfigError, match=r"entity 'orders': key column 'k'"):
        collector.add(one_row)


def test_a_missing_key_column_names_the_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\['code'\] are not in the data.*`keys`"):
        diff_keys(["id", "code"], batches(ids([1])), None, None, tmp_path)


def test_only_the_outputs_stay_in_the_workdir(tmp_path: Path) -> None:
    first = diff_keys(["id"], batches(ids(list(range(40)))), None, None, tmp_path / "w")
    diff = diff_keys(["id"], batches(ids(list(range(5, 40)))), None, first.path, tmp_path / "w")
    names = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert names == sorted(
        p.name for p in (first.path, first.deleted_path, diff.path, diff.deleted_path)
    )
    assert diff.deleted_count == 5


def test_a_small_side_gets_few_buckets_and_a_large_one_many(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("id", pa.int64())])
    small = keyset_buckets.BucketSpill(tmp_path / "s", schema)
    for batch in batches(ids([1, 2, 3, 4, 5]).select(["id"])):
        small.add(pa.Table.from_batches([batch]))
    small.close()
    assert small.n == 2  # its size known at the end: 5 keys, 3 a bucket
    large = keyset_buckets.BucketSpill(tmp_path / "l", schema, expected=4)
    for batch in batches(ids(list(range(40))).select(["id"])):
        large.add(pa.Table.from_batches([batch]))
    large.close()
    assert large.n == keyset_buckets.MIN_BUCKETS  # split before its end: never fewer
    held = [large.take(b).get_column("id").to_list() for b in range(large.n)]
    assert sorted(i for part in held for i in part) == list(range(40))
    assert sum(1 for part in held if part) > 1
    assert list((tmp_path / "l").iterdir()) == []  # taken buckets leave no file


def test_deleted_keys_come_in_batches_of_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hygge_tasks import keyset

    monkeypatch.setattr(keyset, "OUT_ROWS", 10)
    first = diff_keys(["id"], batches(ids(list(range(100)))), None, None, tmp_path)
    diff = diff_keys(["id"], batches(ids(list(range(50)))), None, first.path, tmp_path)
    sizes = [b.num_rows for b in diff.deleted_batches()]
    assert sum(sizes) == 50 and max(sizes) <= 10 and len(sizes) >= 5
    assert pq.ParquetFile(diff.path).metadata.num_row_groups > 1


Key = tuple[int | None, str | None]
key_lists = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(-3, 40)), st.one_of(st.none(), st.sampled_from("abc"))
    ),
    max_size=60,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    previous=key_lists,
    source=key_lists,
    written=key_lists,
    first_run=st.booleans(),
    chunk=st.integers(1, 9),
)
def test_matches_python_sets_on_random_keys(
    tmp_path_factory: pytest.TempPathFactory,
    previous: list[Key],
    source: list[Key],
    written: list[Key],
    first_run: bool,
    chunk: int,
) -> None:
    work = tmp_path_factory.mktemp("prop")

    def table(keys: list[Key]) -> pa.Table:
        return pa.table(
            {
                "a": pa.array([k[0] for k in keys], pa.int64()),
                "b": pa.array([k[1] for k in keys], pa.string()),
            }
        )

    prev_path = None
    if not first_run:
        prev_path = work / "previous.parquet"
        pq.write_table(table(sorted(set(previous), key=order)), prev_path)
    collector = collect(["a", "b"], table(written), work) if written else None
    diff = diff_keys(["a", "b"], batches(table(source), chunk), collector, prev_path, work)

    held = set() if first_run else set(previous)
    now, wrote = set(source), set(written)
    expected_new = (now if first_run else held & now) | wrote
    assert sorted(rows(diff), key=order) == sorted(held - now, key=order)
    assert sorted(rows(diff.path), key=order) == sorted(expected_new, key=order)
    assert (diff.deleted_count, diff.source_count, diff.count) == (
        len(held - now),
        len(now),
        len(expected_new),
    )
    assert diff.previous_count == (None if first_run else len(held))


# -- the key set in the Store ----------------------------------------------------------------


def test_a_key_set_goes_to_the_store_and_back(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path / "lake"))
    diff = diff_keys(["id"], batches(ids(list(range(25)))), None, None, tmp_path / "w")
    ref = store_keyset(store, "orders", "r1", diff.path)
    assert ref == {"name": "r1.keys.parquet", "count": 25, "sha256": file_sha256(diff.path)}
    assert store.state_names("orders") == ["r1.keys.parquet"]
    back = fetch_keyset(store, "orders", ref, tmp_path / "next")
    assert back.parent == tmp_path / "next"
    assert back.read_bytes() == diff.path.read_bytes()
    # the next run compares against what came back
    later = diff_keys(["id"], batches(ids(list(range(20)))), None, back, tmp_path / "next")
    assert rows(later) == [(i,) for i in range(20, 25)]


def test_the_key_set_goes_with_its_run(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path / "lake"))
    diff = diff_keys(["id"], batches(ids([1, 2])), None, None, tmp_path / "w")
    store_keyset(store, "orders", "r1", diff.path)
    store_keyset(store, "orders", "r2", diff.path)
    store.sweep_state("orders", {"r2"})  # recovery's sweep: only kept runs keep their state
    assert store.state_names("orders") == ["r2.keys.parquet"]


def test_a_missing_key_set_names_the_entity_and_the_fix(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path / "lake"))
    ref = {"name": "r9.keys.parquet", "count": 1_234_567, "sha256": "0" * 64}
    with pytest.raises(
        LedgerError,
        match=r"entity 'orders': the ledger's key set \(1,234,567 keys\) is kept in the Store as "
        r"'r9.keys.parquet', which is missing; .*--full-drop",
    ):
        fetch_keyset(store, "orders", ref, tmp_path / "w")
    assert not (tmp_path / "w" / "r9.keys.parquet").exists()


def test_a_changed_key_set_is_refused(tmp_path: Path) -> None:
    store = ParquetStore(path=str(tmp_path / "lake"))
    diff = diff_keys(["id"], batches(ids([1, 2, 3])), None, None, tmp_path / "w")
    ref = store_keyset(store, "orders", "r1", diff.path)
    other = diff_keys(["id"], batches(ids([1, 2])), None, None, tmp_path / "w")
    store.put_state_file("orders", "r1.keys.parquet", other.path)  # replaced behind the ledger
    with pytest.raises(
        LedgerError,
        match=r"entity 'orders': the Store's key set 'r1.keys.parquet' is not the one the ledger "
        r"recorded \(its SHA-256 differs.*--full-drop",
    ):
        fetch_keyset(store, "orders", ref, tmp_path / "next")
    assert not (tmp_path / "next" / "r1.keys.parquet").exists()  # never read as a key set


@pytest.mark.integration
def test_the_benchmark_runs_and_reports(tmp_path: Path) -> None:
    # no timings asserted: only that bench/keyset.py still runs and counts right
    cmd = [sys.executable, "-m", "bench.keyset", "--keys", "3000", "--types", "int64,string",
           "--no-duckdb", "--work", str(tmp_path)]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    hygge = [line.split() for line in proc.stdout.splitlines() if " hygge " in f" {line} "]
    # 1% of 3,000 deleted at random (30 expected), as many added: 3,000 - deleted + 30 held
    assert [row[:2] for row in hygge] == [["int64", "hygge"], ["string", "hygge"]]
    for row in hygge:
        deleted, held = int(row[-2].replace(",", "")), int(row[-1].replace(",", ""))
        assert 0 < deleted < 100 and held == 3000 - deleted + 30

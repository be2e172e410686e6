"""The SQLite Store against real SQLite databases, read back by the SQLite Home and sqlite3.

The Store's own methods first (modes, types, deletes, drift, errors, recovery after a fault),
then whole flow runs from SQLite into SQLite: an updated source row stays one row, a round
trip is value-exact, and a run killed by SIGKILL on either side of its transaction is
finished by the next run exactly once.
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from blocks import STORES, SqliteHome, SqliteStore
from blocks.base import ReadRequest
from blocks.stores import _sqlite_commit
from hygge_core import faults
from hygge_core.errors import StoreError, is_transient
from tests.conftest import ledger_of, run_flow
from tests.test_delta_store import Source as ItemsSource
from tests.test_delta_store import batch as timed_batch
from tests.test_delta_store import die_at, load
from tests.test_sqlite_types import MATRIX, make_matrix

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("wm", pa.int64())])


def batch(rows: list[tuple[int, str, int]], schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema
    )


def rows(store: SqliteStore, table: str = "t") -> list[tuple[Any, ...]]:
    con = sqlite3.connect(store.path)
    try:
        return con.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    finally:
        con.close()


def read_back(db: Path, table: str) -> pa.Table:
    """The table as the SQLite Home reads it."""
    home = SqliteHome(path=str(db), read_threads=1)
    return pa.Table.from_batches(list(home.read(ReadRequest(entity=table, table=table))))


@pytest.fixture
def keyed(tmp_path: Path) -> SqliteStore:
    return SqliteStore(path=str(tmp_path / "mart.sqlite")).for_entity(["id"], ["wm"])


class TestSqliteStore:
    def test_registered_as_type_sqlite(self) -> None:
        assert STORES["sqlite"] is SqliteStore
        assert STORES.by_slug("sqlite-store") is SqliteStore

    def test_full_drop_swaps_the_whole_table(self, keyed: SqliteStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 1), (2, "b", 1)]))
        manifest = load(keyed, "r2", "replace", batch([(3, "c", 1)]))
        assert manifest.state == "published"
        assert rows(keyed) == [(3, "c", 1)]
        assert keyed.published_rows("t") == 1
        assert not keyed.staging_dir("t", "r2").exists()
        assert _sqlite_commit.committed(keyed.db, "t", "r2")

    def test_upsert_keeps_one_current_row_per_key(self, keyed: SqliteStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 1), (2, "b", 1)]))
        load(keyed, "r2", "append", batch([(2, "b-new", 2), (3, "c", 2)]))
        assert rows(keyed) == [(1, "a", 1), (2, "b-new", 2), (3, "c", 2)]

    def test_the_highest_watermark_of_a_key_in_one_run_wins(self, keyed: SqliteStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "new", 5), (1, "old", 3)]))
        load(keyed, "r2", "append", batch([(2, "newer", 9), (2, "older", 1), (2, "mid", 4)]))
        assert rows(keyed) == [(1, "new", 5), (2, "newer", 9)]

    def test_without_keys_incremental_runs_append(self, tmp_path: Path) -> None:
        store = SqliteStore(path=str(tmp_path / "mart.sqlite"))
        load(store, "r1", "replace", batch([(1, "a", 1)]))
        load(store, "r2", "append", batch([(1, "a", 1), (2, "b", 2)]))
        assert rows(store) == [(1, "a", 1), (1, "a", 1), (2, "b", 2)]
        assert store.deletes_refusal([]) is not None

    def test_deletes_by_key_in_the_runs_transaction(self, keyed: SqliteStore) -> None:
        assert keyed.deletes_refusal(["id"]) is None
        load(keyed, "r1", "replace", batch([(1, "a", 1), (2, "b", 1), (3, "c", 1)]))
        writer = keyed.open_writer("t", "r2", "append")
        writer.write(batch([(4, "d", 2)]))
        writer.delete(pa.RecordBatch.from_pylist([{"id": 1}, {"id": 3}]))
        writer.commit_files(None, 1)
        assert rows(keyed) == [(2, "b", 1), (4, "d", 2)]

    def test_soft_deletes_set_the_column(self, keyed: SqliteStore) -> None:
        soft = pa.schema([*SCHEMA, pa.field("gone", pa.timestamp("us", "UTC"))])
        first = [(1, "a", 1, None), (2, "b", 1, None)]
        load(keyed, "r1", "replace", batch(first, soft))  # type: ignore[arg-type]
        writer = keyed.open_writer("t", "r2", "append")
        writer.write(batch([], soft))
        when = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
        writer.soft_delete(pa.RecordBatch.from_pylist([{"id": 2, "gone": when}]), "gone")
        writer.commit_files(None, 0)
        assert rows(keyed) == [(1, "a", 1, None), (2, "b", 1, "2024-06-01 00:00:00.000000+00:00")]
        assert read_back(keyed.db, "t").column("gone").to_pylist() == [None, when]

    def test_a_new_column_is_added_in_the_runs_transaction(self, keyed: SqliteStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 1)]))
        wider = pa.schema([*SCHEMA, pa.field("color", pa.string())])
        load(keyed, "r2", "append", batch([(2, "b", 2, "red")], wider))  # type: ignore[list-item]
        assert rows(keyed) == [(1, "a", 1, None), (2, "b", 2, "red")]

    def test_every_arrow_type_reads_back_exactly(self, tmp_path: Path) -> None:
        when = dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
        values: dict[str, tuple[pa.DataType, list[Any]]] = {
            "i8": (pa.int8(), [-128, 127, None]),
            "u32": (pa.uint32(), [0, 2**32 - 1, None]),
            "i64": (pa.int64(), [-(2**63), 2**63 - 1, None]),
            "u64": (pa.uint64(), [0, 2**63 - 1, None]),
            "f32": (pa.float32(), [1.5, -0.0, None]),
            "f64": (pa.float64(), [0.1, float("inf"), 5e-324]),
            "dec": (pa.decimal128(12, 2), [Decimal("12.30"), Decimal("-0.01"), None]),
            "wide": (
                pa.decimal128(38, 10),
                [Decimal("1234567890123456789012345678.0123456789"), Decimal("0.1"), None],
            ),
            "s": (pa.string(), ["Grüße 🧶", "", "a\x00b"]),
            "ls": (pa.large_string(), ["x" * 10_000, None, "NULL"]),
            "b": (pa.binary(), [b"\x00\xff", b"", None]),
            "fb": (pa.binary(2), [b"ab", b"\x00\x01", None]),
            "flag": (pa.bool_(), [True, False, None]),
            "d": (pa.date32(), [dt.date(1, 1, 1), dt.date(9999, 12, 31), None]),
            "ts": (pa.timestamp("us"), [when, dt.datetime(1, 1, 1), None]),
            "tss": (pa.timestamp("s"), [dt.datetime(2024, 1, 1), None, None]),
            "tz": (
                pa.timestamp("us", "Europe/Paris"),
                [when.replace(tzinfo=dt.UTC), dt.datetime(1970, 1, 1, tzinfo=dt.UTC), None],
            ),
            "nothing": (pa.null(), [None, None, None]),
        }
        source = pa.table({n: pa.array(v, t) for n, (t, v) in values.items()})
        store = SqliteStore(path=str(tmp_path / "mart.sqlite"))
        writer = store.open_writer("types", "r1", "replace")
        for b in source.to_batches(max_chunksize=2):
            writer.write(b)
        writer.commit_files(None, source.num_rows)
        got = read_back(store.db, "types")
        # what the Home reads each Arrow type as: the same values, in SQLite's widths
        widened = {"i8": pa.int64(), "u32": pa.int64(), "u64": pa.int64(), "f32": pa.float64()}
        widened |= {"ls": pa.string(), "fb": pa.binary(), "tss": pa.timestamp("us")}
        widened |= {"tz": pa.timestamp("us", "UTC"), "nothing": pa.string()}
        for name, (typ, _) in values.items():
            want = source.column(name).cast(widened.get(name, typ))
            assert got.schema.field(name).type == want.type, name
            assert got.column(name).to_pylist() == want.to_pylist(), name

    @pytest.mark.parametrize(
        ("column", "match"),
        [
            (pa.array([2**63], pa.uint64()), r"column 'v' holds 9223372036854775808.*DECIMAL"),
            (pa.array([float("nan")]), r"column 'v' holds NaN, which SQLite stores as NULL"),
            (pa.array([[1]]), r"column 'v' is list<item: int64>.*no column type"),
            (pa.array([dt.timedelta(1)]), r"column 'v' is duration"),
        ],
    )
    def test_values_sqlite_cannot_hold_are_refused_by_name(
        self, tmp_path: Path, column: pa.Array, match: str
    ) -> None:
        store = SqliteStore(path=str(tmp_path / "mart.sqlite"))
        writer = store.open_writer("t", "r1", "replace")
        with pytest.raises(StoreError, match=match) as caught:
            writer.write(pa.RecordBatch.from_arrays([column], names=["v"]))
            writer.commit_files(None, 1)
        assert caught.value.entity == "t"
        writer.abort()
        assert not store.has_data("t")

    def test_a_locked_database_is_a_transient_error(self, keyed: SqliteStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 1)]))
        # the holder uses the Store's SQLite library: sqlite3's own copy keeps other locks
        holder = _sqlite_commit.connect(keyed.db)
        holder_cursor = holder.cursor()
        _sqlite_commit.run(holder_cursor, "BEGIN IMMEDIATE")
        original = _sqlite_commit.BUSY_TIMEOUT_MS
        _sqlite_commit.BUSY_TIMEOUT_MS = 50
        try:
            with pytest.raises(StoreError, match="is locked by another connection") as caught:
                load(keyed, "r2", "append", batch([(2, "b", 2)]))
            assert is_transient(caught.value)
        finally:
            _sqlite_commit.BUSY_TIMEOUT_MS = original
            _sqlite_commit.run(holder_cursor, "ROLLBACK")
            holder_cursor.close()
            holder.close()
        assert rows(keyed) == [(1, "a", 1)]

    def test_a_database_that_cannot_be_written_says_how_to_fix_it(self, tmp_path: Path) -> None:
        folder = tmp_path / "mart.sqlite"
        folder.mkdir()  # `path` names a folder: SQLite cannot open it as a database
        store = SqliteStore(path=str(folder))
        with pytest.raises(StoreError, match=r"cannot be written.*write access") as caught:
            store.check()
        assert str(folder) in str(caught.value)
        with pytest.raises(StoreError, match="cannot be written"):
            load(store, "r1", "replace", batch([(1, "a", 1)]))
        with pytest.raises(StoreError, match="is a folder, not a database file"):
            store.recover("t")  # rolling the prepared run forward meets the same cause

    def test_a_read_only_place_is_named_in_the_error(self) -> None:
        # /proc refuses new files even to root
        store = SqliteStore(path="/proc/hygge-no-such/mart.sqlite")
        with pytest.raises(StoreError, match=r"cannot write '/proc/hygge-no-such'"):
            store.check()

    def test_a_key_held_twice_by_an_appended_table_is_refused(self, tmp_path: Path) -> None:
        plain = SqliteStore(path=str(tmp_path / "mart.sqlite"))
        load(plain, "r1", "replace", batch([(1, "a", 1)]))
        load(plain, "r2", "append", batch([(1, "a", 1)]))
        keyed = plain.for_entity(["id"], ["wm"])
        with pytest.raises(StoreError, match=r"more than one row for some key.*--full-drop"):
            load(keyed, "r3", "append", batch([(2, "b", 2)]))


class TestSqliteRecovery:
    """A process that died mid-publish (no `abort` ran), and the next run's recovery."""

    @pytest.mark.parametrize("point", ["publish.after_prepare", "publish.before_mark"])
    def test_a_run_that_died_is_applied_exactly_once(
        self, tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        keyed = SqliteStore(path=str(tmp_path / "mart.sqlite")).for_entity(["id"], ["ts"])
        load(keyed, "r1", "replace", timed_batch([(1, "a", 0), (2, "b", 0)]))
        die_at(keyed, point, monkeypatch)  # r2: an update of 2, a new 3
        assert len(rows(keyed)) == (2 if point == "publish.after_prepare" else 3)
        pending = keyed.recover("t")
        assert [m.run_id for m in pending] == ["r2"]
        assert pending[0].ledger_entry == {"watermark": "r2"}
        after = read_back(keyed.db, "t").to_pylist()
        hours = [(r["id"], r["v"], (r["ts"] - T0) // dt.timedelta(hours=1)) for r in after]
        assert hours == [(1, "a", 0), (2, "b-new", 2), (3, "c", 1)]
        assert keyed.recover("t")[0].run_id == "r2"  # again: nothing applied twice
        assert len(rows(keyed)) == 3

    def test_a_failed_attempt_is_rolled_back(
        self, keyed: SqliteStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 1)]))
        monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
        writer = keyed.open_writer("t", "r2", "append")
        writer.write(batch([(2, "b", 2)]))
        with pytest.raises(faults.InjectedFault):
            writer.commit_files(None, 1)
        writer.abort()
        assert keyed.recover("t") == []
        assert rows(keyed) == [(1, "a", 1)]
        assert not keyed.staging_dir("t", "r2").exists()


# -- whole runs from SQLite into SQLite ---------------------------------------------------------


class Source(ItemsSource):
    """The Delta tests' `items` source, moved into a SQLite Store instead."""

    def __init__(self, tmp: Path, name: str) -> None:
        super().__init__(tmp, name)
        self.mart = tmp / "mart.sqlite"
        self.spec["store"] = {"type": "sqlite", "path": str(self.mart)}

    def execute(self, sql: str) -> None:
        con = sqlite3.connect(self.db)
        con.execute(sql)
        con.commit()
        con.close()

    def assert_exact(self, context: str) -> None:
        want = read_back(self.db, "items").sort_by("id")
        got = read_back(self.mart, "items").sort_by("id")
        assert got.num_rows == want.num_rows, (
            f"{context}: {got.num_rows} rows, want {want.num_rows}"
        )
        assert got.equals(want), context
        ledger = ledger_of(self.spec)["items"]["watermark"]
        want_ts = max(want.column("ts").to_pylist())
        assert ledger["value"].replace("T", " ") == str(want_ts), context
        staging = Path(f"{self.mart}-hygge") / "_staging"
        assert not staging.exists() or not any(staging.rglob("*.arrow")), f"{context}: staging"


def test_flow_upserts_deletes_and_full_drops(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.spec["entities"][0]["deletes"] = "detect"
    src.insert(range(1, 1001))
    assert run_flow(src.spec).is_completed()
    src.assert_exact("first load")
    src.update(range(1, 11), "updated once")
    src.insert(range(1001, 1101))
    src.update(range(5, 8), "updated twice")
    src.execute("DELETE FROM items WHERE id IN (20, 21, 1050)")
    assert run_flow(src.spec).is_completed()
    src.assert_exact("after updates and deletes")
    assert run_flow(src.spec).is_completed()  # nothing new
    src.assert_exact("after a run with nothing new")
    assert run_flow(src.spec, run_type="full_drop").is_completed()
    src.assert_exact("after a full drop")


def test_flow_evolves_the_schema_in_place(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.spec["entities"][0]["schema"] = {"on_drift": "evolve"}
    src.insert(range(1, 201))
    assert run_flow(src.spec).is_completed()
    src.execute("ALTER TABLE items ADD COLUMN color TEXT")
    src.update(range(1, 6), "recoloured")
    src.execute("UPDATE items SET color = 'red' WHERE id <= 5")
    assert run_flow(src.spec).is_completed()
    src.assert_exact("after a new column")
    got = read_back(src.mart, "items").sort_by("id")
    assert got.column("color").to_pylist() == ["red"] * 5 + [None] * 195


def test_flow_round_trip_sqlite_to_sqlite_is_value_exact(tmp_path: Path, spec_name: str) -> None:
    db, mart = tmp_path / "types.sqlite", tmp_path / "mart.sqlite"
    make_matrix(db)
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(db)},
        "store": {"type": "sqlite", "path": str(mart)},
        "defaults": {"batch_size": 3},
        "entities": [{"name": "matrix", "table": "matrix"}],
    }
    assert run_flow(spec).is_completed()
    want = read_back(db, "matrix").sort_by("id")
    got = read_back(mart, "matrix").sort_by("id")
    assert got.schema == want.schema
    for name in want.schema.names:
        w, g = want.column(name).to_pylist(), got.column(name).to_pylist()
        if pa.types.is_floating(want.schema.field(name).type):  # NaN never equals itself
            w, g = [repr(v) for v in w], [repr(v) for v in g]
        assert g == w, name
    assert len(MATRIX) + 1 == len(want.schema)


# -- kills: SIGKILL at either side of the run's transaction, then a rerun -------------------------


def test_an_upsert_killed_before_its_commit_is_finished_once(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    point = "publish.after_prepare"
    src = Source(tmp_path, spec_name)
    src.insert(range(1, 501))
    assert src.cli(prefect_server) == 0, src.output
    src.update(range(1, 51), "changed")
    src.insert(range(501, 601))
    assert src.cli(prefect_server, fault=point) == -signal.SIGKILL, src.output
    assert read_back(src.mart, "items").num_rows == 500
    assert src.cli(prefect_server) == 0, src.output
    src.assert_exact(f"after a kill at {point}")


def test_an_append_killed_after_its_commit_is_not_doubled(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    src = Source(tmp_path, spec_name)
    src.spec["entities"][0]["watermark"]["keys"] = []  # no keys: incremental runs append
    src.insert(range(1, 501))
    assert src.cli(prefect_server) == 0, src.output
    src.insert(range(501, 801))
    assert src.cli(prefect_server, fault="publish.before_mark") == -signal.SIGKILL, src.output
    assert src.cli(prefect_server) == 0, src.output
    src.assert_exact("after a kill after the append's commit")


def test_a_full_drop_killed_shows_the_old_table_until_the_rerun(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    point = "publish.after_prepare"
    src = Source(tmp_path, spec_name)
    src.spec["run_type"] = "full_drop"
    src.insert(range(1, 401))
    assert src.cli(prefect_server) == 0, src.output
    src.update(range(1, 21), "changed")
    src.insert(range(401, 451))
    assert src.cli(prefect_server, fault=point) == -signal.SIGKILL, src.output
    assert read_back(src.mart, "items").num_rows == 400
    assert src.cli(prefect_server) == 0, src.output
    src.assert_exact(f"after a full drop killed at {point}")


def test_the_sqlite_example_follows_a_day_of_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_name: str
) -> None:
    from flows.example import REPO, ensure_example_data
    from flows.example_changes import change_example
    from flows.spec import expand_env

    db = ensure_example_data(tmp_path / "data" / "shop.sqlite", orders=5_000)
    monkeypatch.setenv("HYGGE_EXAMPLE_DIR", str(db.parent))
    monkeypatch.setenv("HYGGE_SQLITE_MART", str(tmp_path / "mart.sqlite"))
    spec = yaml.safe_load((REPO / "deployments" / "example_sqlite.yaml").read_text("utf-8"))
    spec = expand_env({**spec, "name": spec_name})
    mart = Path(spec["store"]["path"])
    tables = [e["table"] for e in spec["entities"]]

    def assert_current(context: str) -> None:
        for table in tables:
            want, got = read_back(db, table), read_back(mart, table)
            keys = [(n, "ascending") for n in want.schema.names[:2]]
            assert got.sort_by(keys).equals(want.sort_by(keys)), f"{context}: {table}"

    assert run_flow(spec).is_completed()
    assert_current("first run")
    changes = change_example(db)
    assert changes.deleted_orders > 0 and changes.updated_orders > 0
    state = run_flow(spec)
    assert state.is_completed()
    assert_current("after a day of changes")
    rows = {r["entity"]: r for r in state.result()}
    assert f"{changes.deleted_orders:,} deleted" in rows["orders"]["detail"]

"""The Delta Store against real Delta tables on local disk, read back by two readers.

The Store's own methods first (modes, types, the commit record, recovery), then whole flow
runs from SQLite: an updated source row stays one row, and a run killed by SIGKILL at the
commit's two sides is finished by the next run exactly once.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable

from blocks import HOMES, STORES, DeltaStore
from blocks.stores import _delta_log
from hygge_core import faults
from hygge_core.errors import StoreError, is_transient
from tests.conftest import ledger_of, run_flow
from tests.flow_helpers import run_cli

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


def batch(rows: list[tuple[int, str, int]]) -> pa.RecordBatch:
    """(id, value, hours after T0) rows with a naive timestamp, as the SQL Homes give them."""
    return pa.record_batch(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "v": pa.array([r[1] for r in rows], pa.string()),
            "ts": pa.array([T0 + dt.timedelta(hours=r[2]) for r in rows], pa.timestamp("us")),
        }
    )


def load(store: DeltaStore, run_id: str, mode: str, *batches: pa.RecordBatch) -> Any:
    writer = store.open_writer("t", run_id, mode)  # type: ignore[arg-type]
    for b in batches:
        writer.write(b)
    manifest = writer.commit_files({"watermark": run_id}, sum(b.num_rows for b in batches))
    store.mark_committed("t", run_id)  # as the parent flow does once the ledger holds it
    return manifest


def rows(store: DeltaStore) -> list[tuple[Any, ...]]:
    """The table by both readers, which must agree: delta-rs's dataset and Polars."""
    uri = store.table_uri("t")
    by_arrow = DeltaTable(uri).to_pyarrow_dataset().to_table().sort_by("id").to_pylist()
    by_polars = pl.read_delta(uri).sort("id").to_dicts()
    assert by_arrow == by_polars
    return [tuple(r.values()) for r in by_polars]


def utc(hours: int) -> dt.datetime:
    return (T0 + dt.timedelta(hours=hours)).replace(tzinfo=dt.UTC)


@pytest.fixture
def keyed(tmp_path: Path) -> DeltaStore:
    return DeltaStore(path=str(tmp_path / "lake")).for_entity(["id"], ["ts"])


class TestDeltaStore:
    def test_registered_as_type_delta(self) -> None:
        assert STORES["delta"] is DeltaStore
        assert STORES.by_slug("delta-store") is DeltaStore

    def test_full_drop_is_one_overwrite_commit(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0), (2, "b", 0), (3, "c", 0)]))
        load(keyed, "r2", "replace", batch([(7, "x", 1)]), batch([(8, "y", 1)]))
        assert rows(keyed) == [(7, "x", utc(1)), (8, "y", utc(1))]
        table = DeltaTable(keyed.table_uri("t"))
        assert table.version() == 1  # one commit per run, batches and all
        # the version before the overwrite is whole: a reader saw the old table or the new
        table.load_as_version(0)
        assert table.to_pyarrow_table().num_rows == 3
        assert table.history(1)[0]["operation"] == "WRITE"
        assert not (Path(keyed.path) / "_staging").exists()

    def test_merge_keeps_one_current_row_per_key(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0), (2, "b", 0), (3, "c", 0)]))
        manifest = load(keyed, "r2", "append", batch([(2, "b-new", 2), (4, "d", 1)]))
        assert manifest.extra["delta"] == "merge"
        assert rows(keyed) == [
            (1, "a", utc(0)),
            (2, "b-new", utc(2)),
            (3, "c", utc(0)),
            (4, "d", utc(1)),
        ]
        assert DeltaTable(keyed.table_uri("t")).history(1)[0]["operation"] == "MERGE"

    def test_merge_takes_the_highest_watermark_of_a_key_in_one_run(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0), (2, "b", 0)]))
        # key 2 three times, its newest version in the middle and in another batch than the
        # last one; key 5 twice at one watermark: the row staged last wins
        load(
            keyed,
            "r2",
            "append",
            batch([(2, "b@3", 3), (5, "e-first", 1)]),
            batch([(2, "b@5", 5), (2, "b@4", 4), (5, "e-last", 1)]),
        )
        assert rows(keyed) == [(1, "a", utc(0)), (2, "b@5", utc(5)), (5, "e-last", utc(1))]

    def test_a_merge_reads_only_files_that_can_hold_its_keys(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(i, "old", 0) for i in range(0, 100)]))
        for n, start in enumerate((100, 200, 300)):
            load(
                keyed,
                f"r{n + 2}",
                "append",
                batch([(i, "old", 1) for i in range(start, start + 100)]),
            )
        load(keyed, "r9", "append", batch([(150, "new", 2), (160, "new", 2), (999, "new", 2)]))
        metrics = DeltaTable(keyed.table_uri("t")).history(1)[0]["operationMetrics"]
        # the key range 150..999 excludes the first file (0..99) by its statistics
        assert metrics["num_target_files_skipped_during_scan"] >= 1
        got = rows(keyed)
        assert len(got) == 401 and len({r[0] for r in got}) == 401
        assert [r[1] for r in got if r[0] in (150, 160, 999)] == ["new"] * 3

    def test_first_incremental_load_of_a_keyed_entity_is_deduplicated(
        self, keyed: DeltaStore
    ) -> None:
        load(keyed, "r1", "append", batch([(1, "a@1", 1), (1, "a@0", 0)]))
        assert rows(keyed) == [(1, "a@1", utc(1))]

    def test_incremental_without_keys_appends(self, tmp_path: Path) -> None:
        store = DeltaStore(path=str(tmp_path / "lake")).for_entity([], ["ts"])
        load(store, "r1", "replace", batch([(1, "a", 0)]))
        manifest = load(store, "r2", "append", batch([(1, "a", 0), (2, "b", 1)]))
        assert manifest.extra["delta"] == "append"
        assert rows(store) == [(1, "a", utc(0)), (1, "a", utc(0)), (2, "b", utc(1))]
        assert store.published_rows("t") == 3

    def test_naive_timestamps_are_utc_unless_ntz_is_kept(self, tmp_path: Path) -> None:
        store = DeltaStore(path=str(tmp_path / "utc"))
        load(store, "r1", "replace", batch([(1, "a", 0)]))
        schema = pa.schema(DeltaTable(store.table_uri("t")).schema().to_arrow())
        assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
        ntz = DeltaStore(path=str(tmp_path / "ntz"), timestamp_ntz=True)
        load(ntz, "r1", "replace", batch([(1, "a", 0)]))
        table = DeltaTable(ntz.table_uri("t"))
        assert pa.schema(table.schema().to_arrow()).field("ts").type == pa.timestamp("us")
        assert "timestampNtz" in (table.protocol().writer_features or [])
        assert pl.read_delta(ntz.table_uri("t"))["ts"].to_list() == [T0]

    def test_decimals_dates_binaries_and_whole_nanoseconds_stay_exact(self, tmp_path: Path) -> None:
        store = DeltaStore(path=str(tmp_path / "lake"))
        values = {
            "id": pa.array([1, 2], pa.uint32()),
            "amount": pa.array([Decimal("12345678901234567890.12"), None], pa.decimal128(22, 2)),
            "wide": pa.array([Decimal("1.000000001"), Decimal("-2")], pa.decimal256(20, 9)),
            "day": pa.array([dt.date(1, 1, 1), dt.date(9999, 12, 31)], pa.date32()),
            "blob": pa.array([b"\x00\xff", b""], pa.binary()),
            "at": pa.array([1_000_000_000, 2_000], pa.timestamp("ns")),
        }
        load(store, "r1", "replace", pa.record_batch(values))
        got = DeltaTable(store.table_uri("t")).to_pyarrow_table().sort_by("id")
        assert got.schema.field("id").type == pa.int64()
        assert got.schema.field("wide").type == pa.decimal128(20, 9)
        assert got.column("amount").to_pylist() == [Decimal("12345678901234567890.12"), None]
        assert got.column("wide").to_pylist() == [Decimal("1.000000001"), Decimal("-2")]
        assert got.column("day").to_pylist() == [dt.date(1, 1, 1), dt.date(9999, 12, 31)]
        assert got.column("blob").to_pylist() == [b"\x00\xff", b""]
        assert got.column("at").to_pylist() == [
            dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC),
            dt.datetime(1970, 1, 1, 0, 0, 0, 2, tzinfo=dt.UTC),
        ]

    def test_values_delta_cannot_hold_exactly_are_refused_by_name(self, tmp_path: Path) -> None:
        store = DeltaStore(path=str(tmp_path / "lake"))
        ns = pa.record_batch({"at": pa.array([1_000_000_001], pa.timestamp("ns"))})
        with pytest.raises(StoreError, match=r"column 'at' .* does not fit Delta's timestamp"):
            load(store, "r1", "replace", ns)
        clock = pa.record_batch({"t": pa.array([1], pa.time64("us"))})
        with pytest.raises(StoreError, match=r"'t' \(time64\[us\]\): Delta has no time-of-day"):
            load(store, "r2", "replace", clock)
        assert not store.has_data("t")

    def test_a_merge_key_the_rows_lack_is_refused_by_name(self, tmp_path: Path) -> None:
        store = DeltaStore(path=str(tmp_path / "lake"), merge_keys=["sku"])
        with pytest.raises(StoreError, match=r"needs column\(s\) 'sku'.*`merge_keys`"):
            load(store, "r1", "append", batch([(1, "a", 0)]))

    def test_an_entity_sets_its_merge_keys_in_the_spec(self, tmp_path: Path) -> None:
        from flows.plan import entity_blocks, resolve_block
        from flows.spec import parse_spec

        spec = parse_spec(
            {
                "name": "x",
                "home": {"type": "sqlite", "path": str(tmp_path / "s.sqlite")},
                "store": {"type": "delta", "path": str(tmp_path / "lake")},
                "entities": [
                    {"name": "a", "watermark": {"column": "ts", "keys": ["id"]}},
                    {"name": "b", "watermark": {"column": "ts"}, "merge_keys": ["sku"]},
                    {"name": "c", "watermark": {"column": "ts"}},
                ],
            }
        )
        home = resolve_block(spec.home, HOMES, "home")
        store = resolve_block(spec.store, STORES, "store")
        got = {}
        for e in spec.entities:
            _, e_store = entity_blocks(e, home, store)  # type: ignore[arg-type]
            assert isinstance(e_store, DeltaStore)
            got[e.name] = (e_store.merge_keys, e_store.merge_order)
        assert got == {"a": (["id"], ["ts"]), "b": (["sku"], ["ts"]), "c": (None, ["ts"])}

    def test_an_append_with_another_schema_is_refused(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0)]))
        other = pa.record_batch({"id": [2], "v": [1.5], "ts": batch([(2, "b", 1)]).column(2)})
        with pytest.raises(StoreError, match=r"v: string -> double.*--full-drop"):
            load(keyed, "r2", "append", other)

    def test_new_columns_join_the_table_in_the_runs_own_commit(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0), (2, "b", 0)]))
        wider = batch([(2, "b-new", 1), (3, "c", 1)]).append_column("w", pa.array([7, None]))
        manifest = load(keyed, "r2", "append", wider)
        assert manifest.extra["add_columns"] is True
        assert rows(keyed) == [
            (1, "a", utc(0), None),
            (2, "b-new", utc(1), 7),
            (3, "c", utc(1), None),
        ]
        assert DeltaTable(keyed.table_uri("t")).version() == 1  # no rewrite of the table

    def test_reads_counts_and_names_the_table(self, keyed: DeltaStore) -> None:
        assert not keyed.has_data("t")
        assert keyed.published_rows("t") is None
        keyed.check()
        load(keyed, "r1", "replace", batch([(1, "a", 0), (2, "b", 0)]))
        assert keyed.has_data("t")
        assert keyed.published_rows("t") == 2
        table = pa.Table.from_batches(list(keyed.read_table("t")))
        assert table.sort_by("id").column("v").to_pylist() == ["a", "b"]
        assert keyed.describe("t") == f"delta {Path(keyed.path) / 't'}/"
        assert keyed.asset_key("t") == f"file://{keyed.table_uri('t')}"
        meta = DeltaTable(keyed.table_uri("t")).metadata()
        assert meta.name == "t"
        assert "hygge entity 't'" in (meta.description or "")
        journal = pa.table({"run_id": ["r1"], "rows": [2]})
        keyed.write_journal("r1", journal)
        read = keyed.read_journal()
        assert read is not None and read.to_pylist() == journal.to_pylist()
        keyed.put_state("t", "r1.boundary.parquet", b"keys")
        assert keyed.get_state("t", "r1.boundary.parquet") == b"keys"
        with keyed.exclusive("run-1"):
            other = DeltaStore(path=keyed.path)
            with pytest.raises(StoreError, match="another hygge run"), other.exclusive("run-2"):
                pass

    def test_delta_errors_are_classed_on_purpose(self, keyed: DeltaStore) -> None:
        from deltalake.exceptions import CommitFailedError, SchemaMismatchError

        conflict = keyed.backend_error(CommitFailedError("version 3 exists"), "cannot publish", "t")
        assert is_transient(conflict)
        assert "another writer committed" in str(conflict) and "retry is safe" in str(conflict)
        schema = keyed.backend_error(SchemaMismatchError("no"), "cannot publish", "t")
        assert not is_transient(schema)
        assert "--full-drop" in str(schema) and schema.entity == "t"

    def test_the_commit_records_the_run(self, keyed: DeltaStore) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0)]))
        manifest = load(keyed, "r2", "append", batch([(1, "b", 1)]))
        table = DeltaTable(keyed.table_uri("t"))
        assert table.transaction_version(_delta_log.APP_ID) == manifest.extra["txn"] == 2
        assert table.history(1)[0][_delta_log.RUN_KEY] == "r2"
        uri = keyed.table_uri("t")
        assert _delta_log.committed(uri, None, "r2", 2)
        # a stale manifest whose number another run's commit took is not that commit
        assert not _delta_log.committed(uri, None, "r-stale", 2)
        assert not _delta_log.committed(uri, None, "r3", 3)


def die_at(store: DeltaStore, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run r2 (an update of 2, a new 3) dies at `point`: no `abort` runs, as after a kill."""
    monkeypatch.setenv("HYGGE_FAULT", f"{point}:raise")
    writer = store.open_writer("t", "r2", "append")
    writer.write(batch([(2, "b-new", 2), (3, "c", 1)]))
    with pytest.raises(faults.InjectedFault):
        writer.commit_files({"watermark": "r2"}, 2)
    monkeypatch.delenv("HYGGE_FAULT")


class TestDeltaRecovery:
    """A process that died mid-publish (no `abort` ran), and the next run's recovery."""

    def _die_at(self, store: DeltaStore, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
        die_at(store, point, monkeypatch)

    def test_a_run_prepared_but_not_committed_rolls_forward_once(
        self, keyed: DeltaStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0), (2, "b", 0)]))
        self._die_at(keyed, "publish.after_prepare", monkeypatch)
        assert DeltaTable(keyed.table_uri("t")).version() == 0  # nothing committed yet
        pending = keyed.recover("t")
        assert [m.run_id for m in pending] == ["r2"]
        assert pending[0].ledger_entry == {"watermark": "r2"}
        assert rows(keyed) == [(1, "a", utc(0)), (2, "b-new", utc(2)), (3, "c", utc(1))]
        keyed.mark_committed("t", "r2")
        assert keyed.recover("t") == []
        assert DeltaTable(keyed.table_uri("t")).version() == 1  # applied exactly once

    def test_a_commit_made_before_the_crash_is_not_applied_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = DeltaStore(path=str(tmp_path / "lake"))  # no keys: an append would double
        load(store, "r1", "replace", batch([(1, "a", 0)]))
        self._die_at(store, "publish.before_mark", monkeypatch)
        assert DeltaTable(store.table_uri("t")).version() == 1  # committed, not marked
        manifest = store.load_manifest("t", "r2")
        assert manifest is not None and manifest.state == "prepared"
        store.abort_prepared(manifest)  # an in-process abort leaves a committed run be
        assert [m.run_id for m in store.recover("t")] == ["r2"]
        assert DeltaTable(store.table_uri("t")).version() == 1
        assert rows(store) == [(1, "a", utc(0)), (2, "b-new", utc(2)), (3, "c", utc(1))]

    def test_an_error_after_the_commit_is_not_retried(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = DeltaStore(path=str(tmp_path / "lake"))
        load(store, "r1", "replace", batch([(1, "a", 0)]))
        monkeypatch.setenv("HYGGE_FAULT", "publish.before_mark:transient")
        writer = store.open_writer("t", "r2", "append")
        writer.write(batch([(2, "b", 1)]))
        with pytest.raises(StoreError, match="commit is in the table") as caught:
            writer.commit_files({"watermark": "r2"}, 1)
        assert not is_transient(caught.value)  # a retry would append the rows again
        writer.abort()
        monkeypatch.delenv("HYGGE_FAULT")
        assert [m.run_id for m in store.recover("t")] == ["r2"]
        assert rows(store) == [(1, "a", utc(0)), (2, "b", utc(1))]

    def test_a_failed_attempt_is_rolled_back_and_leaves_the_table(
        self, keyed: DeltaStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        load(keyed, "r1", "replace", batch([(1, "a", 0)]))
        monkeypatch.setenv("HYGGE_FAULT", "publish.after_prepare:raise")
        writer = keyed.open_writer("t", "r2", "append")
        writer.write(batch([(1, "b", 1)]))
        with pytest.raises(faults.InjectedFault):
            writer.commit_files(None, 1)
        writer.abort()
        assert keyed.load_manifest("t", "r2") is None
        assert not (Path(keyed.path) / "_staging").exists()
        assert rows(keyed) == [(1, "a", utc(0))]


# -- whole runs from SQLite ---------------------------------------------------------------------


class Source:
    """A SQLite `items` table whose rows are inserted and updated between runs."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.db = tmp / "src.sqlite"
        self.lake = tmp / "lake"
        con = sqlite3.connect(self.db)
        con.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, ts DATETIME, price DECIMAL(10,2), "
            "label TEXT)"
        )
        con.commit()
        con.close()
        self.clock = 0
        self.spec: dict[str, Any] = {
            "name": name,
            "home": {"type": "sqlite", "path": str(self.db)},
            "store": {"type": "delta", "path": str(self.lake)},
            "retries": 0,
            "defaults": {"batch_size": 250},
            "entities": [
                {"name": "items", "table": "items", "watermark": {"column": "ts", "keys": ["id"]}}
            ],
        }

    def _ts(self) -> str:
        self.clock += 1
        return str(T0 + dt.timedelta(seconds=self.clock))

    def insert(self, ids: range) -> None:
        con = sqlite3.connect(self.db)
        stamp = self._ts()
        con.executemany(
            "INSERT INTO items VALUES (?,?,?,?)",
            [(i, stamp, f"{i}.25", f"item {i} ✓") for i in ids],
        )
        con.commit()
        con.close()

    def update(self, ids: range, label: str) -> None:
        con = sqlite3.connect(self.db)
        stamp = self._ts()
        con.executemany(
            "UPDATE items SET ts = ?, label = ? WHERE id = ?", [(stamp, label, i) for i in ids]
        )
        con.commit()
        con.close()

    def assert_exact(self, context: str) -> None:
        con = sqlite3.connect(self.db)
        want = con.execute("SELECT id, ts, price, label FROM items ORDER BY id").fetchall()
        con.close()
        got = pl.read_delta(str(self.lake / "items")).sort("id")
        other = DeltaTable(str(self.lake / "items")).to_pyarrow_dataset().to_table()
        assert other.num_rows == got.height, context
        assert got.height == len(want), f"{context}: {got.height} rows, source has {len(want)}"
        assert got["id"].to_list() == [w[0] for w in want], f"{context}: a key lost or doubled"
        assert got["ts"].dtype == pl.Datetime("us", "UTC"), context
        assert got["ts"].dt.strftime("%Y-%m-%d %H:%M:%S").to_list() == [w[1] for w in want]
        assert got["label"].to_list() == [w[3] for w in want], context
        assert [str(p) for p in got["price"].to_list()] == [f"{w[2]:.2f}" for w in want]
        ledger = ledger_of(self.spec)["items"]["watermark"]
        assert ledger["value"].replace("T", " ") == max(w[1] for w in want), context
        assert not (self.lake / "_staging").exists(), f"{context}: staging left behind"

    def cli(self, api_url: str, fault: str | None = None) -> int:
        spec = self.db.parent / "spec.yaml"
        spec.write_text(yaml.safe_dump(self.spec), encoding="utf-8")
        proc = run_cli(spec, api_url, fault)
        self.output = proc.stdout + proc.stderr
        return proc.returncode


def test_flow_updates_stay_one_row_per_key(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.insert(range(1, 1001))
    assert run_flow(src.spec).is_completed()
    src.assert_exact("first load")
    src.update(range(1, 11), "updated once")
    src.insert(range(1001, 1101))
    src.update(range(5, 8), "updated twice")
    state = run_flow(src.spec)
    assert state.is_completed()
    src.assert_exact("after updates")
    table = DeltaTable(str(src.lake / "items"))
    # a new table's first commit creates it with the run's files (committed where they lie)
    assert [h["operation"] for h in table.history()] == ["MERGE", "CREATE TABLE"]
    # a run with nothing new commits nothing
    assert run_flow(src.spec).is_completed()
    assert DeltaTable(str(src.lake / "items")).version() == 1
    assert run_flow(src.spec, run_type="full_drop").is_completed()
    src.assert_exact("after a full drop")
    assert DeltaTable(str(src.lake / "items")).history(1)[0]["operation"] == "WRITE"


def test_flow_evolves_the_schema_by_merge(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.spec["entities"][0]["schema"] = {"on_drift": "evolve"}
    src.insert(range(1, 201))
    assert run_flow(src.spec).is_completed()
    con = sqlite3.connect(src.db)
    con.execute("ALTER TABLE items ADD COLUMN color TEXT")
    con.commit()
    con.close()
    src.update(range(1, 6), "recoloured")
    con = sqlite3.connect(src.db)
    con.execute("UPDATE items SET color = 'red' WHERE id <= 5")
    con.commit()
    con.close()
    assert run_flow(src.spec).is_completed()
    src.assert_exact("after a new column")
    got = pl.read_delta(str(src.lake / "items")).sort("id")
    assert got["color"].to_list() == ["red"] * 5 + [None] * 195
    history = DeltaTable(str(src.lake / "items")).history()
    # merged, not rewritten
    assert [h["operation"] for h in history] == ["MERGE", "CREATE TABLE"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["publish.after_prepare", "publish.before_mark"])
def test_a_run_killed_at_the_commit_is_finished_once(
    tmp_path: Path, spec_name: str, prefect_server: str, point: str
) -> None:
    src = Source(tmp_path, spec_name)
    src.insert(range(1, 501))
    assert src.cli(prefect_server) == 0, src.output
    src.update(range(1, 51), "changed")
    src.insert(range(501, 601))
    assert src.cli(prefect_server, fault=point) == -signal.SIGKILL, src.output
    committed = DeltaTable(str(src.lake / "items")).version()
    assert committed == (1 if point == "publish.before_mark" else 0)
    assert src.cli(prefect_server) == 0, src.output
    src.assert_exact(f"after a kill at {point}")
    # the rerun found the run's commit (or made it) and added none of its own
    assert DeltaTable(str(src.lake / "items")).version() == 1


@pytest.mark.slow
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
    history = DeltaTable(str(src.lake / "items")).history()
    assert [h["operation"] for h in history] == ["WRITE", "CREATE TABLE"]
    assert history[0]["operationParameters"]["mode"] == "Append"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["publish.after_prepare", "publish.before_mark"])
def test_a_full_drop_killed_at_the_commit_shows_the_old_or_the_new_table(
    tmp_path: Path, spec_name: str, prefect_server: str, point: str
) -> None:
    src = Source(tmp_path, spec_name)
    src.spec["run_type"] = "full_drop"
    src.insert(range(1, 401))
    assert src.cli(prefect_server) == 0, src.output
    src.update(range(1, 21), "changed")
    src.insert(range(401, 451))
    assert src.cli(prefect_server, fault=point) == -signal.SIGKILL, src.output
    seen = pl.read_delta(str(src.lake / "items"))
    assert seen.height == (450 if point == "publish.before_mark" else 400)
    assert src.cli(prefect_server) == 0, src.output
    src.assert_exact(f"after a full drop killed at {point}")


@pytest.mark.slow
def test_merges_survive_kills_at_moments_nobody_chose(
    tmp_path: Path, spec_name: str, prefect_server: str
) -> None:
    import random
    import time

    src = Source(tmp_path, spec_name)
    src.insert(range(1, 3001))
    assert src.cli(prefect_server) == 0, src.output
    rng = random.Random(20261202)
    next_id = 3001
    for i in range(4):
        start = rng.randrange(1, next_id - 200)
        src.update(range(start, start + 200), f"round {i}")
        src.insert(range(next_id, next_id + 300))
        next_id += 300
        spec = src.db.parent / "spec.yaml"
        spec.write_text(yaml.safe_dump(src.spec), encoding="utf-8")
        env = {**os.environ, "PREFECT_API_URL": prefect_server}
        env.pop("HYGGE_FAULT", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.run", "--spec", str(spec)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(2.0, 7.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert src.cli(prefect_server) == 0, f"timed kill {i}: rerun failed\n{src.output}"
        src.assert_exact(f"after timed kill {i}")

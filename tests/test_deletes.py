"""Deletes by key-set reconciliation (`deletes: detect`), through whole flow runs.

A SQLite (and a PostgreSQL) source gets inserts, updates and deletes between runs; after each
run the destination must equal the source's current state, row for row: a Delta table read
by two readers, and the Open Mirroring landing zone (on Azurite) replayed by a small
reference applier that applies the row markers file by file, as Fabric does.
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from flows.spec import parse_spec
from hygge_core.errors import ConfigError
from tests.conftest import ledger_of, run_flow
from tests.flow_helpers import failed_row, run_cli, summary_row

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


class Source:
    """A SQLite `items` table that changes between runs, and a spec that mirrors it."""

    def __init__(self, tmp: Path, name: str, store: dict[str, Any] | None = None) -> None:
        self.db = tmp / "shop.sqlite"
        self.lake = tmp / "lake"
        self.clock = 0
        con = sqlite3.connect(self.db)
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, ts DATETIME, label TEXT)")
        con.commit()
        con.close()
        self.spec: dict[str, Any] = {
            "name": name,
            "home": {"type": "sqlite", "path": str(self.db)},
            "store": store or {"type": "delta", "path": str(self.lake)},
            "retry_delay_seconds": 0,
            "defaults": {"batch_size": 97},
            "entities": [
                {
                    "name": "items",
                    "table": "items",
                    "watermark": {"column": "ts", "keys": ["id"]},
                    "deletes": "detect",
                }
            ],
        }

    def sql(self, statement: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        con = sqlite3.connect(self.db)
        if rows is None:
            con.execute(statement)
        else:
            con.executemany(statement, rows)
        con.commit()
        con.close()

    def _ts(self) -> str:
        self.clock += 1
        return str(T0 + dt.timedelta(seconds=self.clock))

    def insert(self, ids: range | list[int]) -> None:
        stamp = self._ts()
        self.sql("INSERT INTO items VALUES (?,?,?)", [(i, stamp, f"item {i}") for i in ids])

    def update(self, ids: range | list[int], label: str) -> None:
        stamp = self._ts()
        self.sql(
            "UPDATE items SET ts = ?, label = ? WHERE id = ?", [(stamp, label, i) for i in ids]
        )

    def delete(self, ids: range | list[int]) -> None:
        self.sql("DELETE FROM items WHERE id = ?", [(i,) for i in ids])

    def rows(self) -> list[tuple[int, str]]:
        con = sqlite3.connect(self.db)
        out = con.execute("SELECT id, label FROM items ORDER BY id").fetchall()
        con.close()
        return [(int(i), str(label)) for i, label in out]

    def delta_rows(self) -> list[tuple[int, str]]:
        uri = str(self.lake / "items")
        by_polars = pl.read_delta(uri).sort("id").select("id", "label").rows()
        by_arrow = DeltaTable(uri).to_pyarrow_dataset().to_table().sort_by("id")
        pairs = zip(by_arrow["id"].to_pylist(), by_arrow["label"].to_pylist(), strict=True)
        assert list(pairs) == by_polars
        return by_polars

    def assert_exact(self, context: str) -> None:
        got, want = self.delta_rows(), self.rows()
        assert len(got) == len(want), f"{context}: {len(got)} rows, the source has {len(want)}"
        assert got == want, context
        keyset = ledger_of(self.spec)["items"]["keyset"]
        assert keyset["count"] == len(want), f"{context}: the key set is not the source's"

    def cli(self, api_url: str, fault: str | None = None) -> int:
        spec = self.db.parent / "spec.yaml"
        spec.write_text(yaml.safe_dump(self.spec), encoding="utf-8")
        proc = run_cli(spec, api_url, fault)
        self.output = proc.stdout + proc.stderr
        return proc.returncode


def test_delta_follows_inserts_updates_and_deletes(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.insert(range(1, 301))
    state = run_flow(src.spec)
    assert state.is_completed()
    src.assert_exact("first load")
    assert ledger_of(src.spec)["items"]["deleted"] == 0

    src.update(range(1, 11), "updated")
    src.delete(range(20, 30))
    src.insert(range(301, 321))
    state = run_flow(src.spec)
    assert state.is_completed()
    src.assert_exact("after updates, deletes and inserts")
    row = summary_row(state, "items")
    assert row["rows"] == 30  # the 10 updated and 20 new rows; the deletes are apart
    assert "10 deleted (gone from the source)" in row["detail"]
    assert ledger_of(src.spec)["items"]["deleted"] == 10
    history = DeltaTable(str(src.lake / "items")).history()
    # the first load creates the table; the changes and the deletes are one merge commit
    assert [h["operation"] for h in history] == ["MERGE", "CREATE TABLE"]

    # a run with only deletes, and a deleted key that comes back
    src.delete(range(301, 306))
    assert run_flow(src.spec).is_completed()
    src.assert_exact("after deletes alone")
    src.insert([25])
    src.delete([1])
    assert run_flow(src.spec).is_completed()
    src.assert_exact("after a key came back")
    assert (25, "item 25") in src.delta_rows()

    # nothing changed: nothing is committed
    version = DeltaTable(str(src.lake / "items")).version()
    assert run_flow(src.spec).is_completed()
    assert DeltaTable(str(src.lake / "items")).version() == version


def test_a_source_that_lost_most_keys_deletes_nothing(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.insert(range(1, 101))
    assert run_flow(src.spec).is_completed()
    src.delete(range(1, 61))  # 40 keys left of 100: below the default 50%
    state = run_flow(src.spec)
    row = failed_row(state, "items")
    assert (
        "the source returned 40 keys, fewer than 50% of the 100 the destination holds"
        in (row["detail"])
    )
    assert "nothing was deleted or published" in row["detail"]
    assert len(src.delta_rows()) == 100
    assert ledger_of(src.spec)["items"]["keyset"]["count"] == 100
    # an emptied source is refused too
    src.delete(range(61, 101))
    assert run_flow(src.spec).is_failed()
    assert len(src.delta_rows()) == 100
    # the user says it is real: the deletes go through
    src.insert(range(61, 101))
    src.spec["entities"][0]["deletes"] = {"mode": "detect", "min_fraction": 0.3}
    assert run_flow(src.spec).is_completed()
    src.assert_exact("after min_fraction was lowered")


def test_turning_deletes_on_later_starts_from_the_source(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    del src.spec["entities"][0]["deletes"]
    src.insert(range(1, 51))
    assert run_flow(src.spec).is_completed()
    src.delete([1, 2])  # before detection: stays at the destination
    src.spec["entities"][0]["deletes"] = "detect"
    # a run with nothing new records no key set (it commits nothing): the next one does
    assert run_flow(src.spec).is_completed()
    assert "keyset" not in ledger_of(src.spec)["items"]
    src.insert([51])
    assert run_flow(src.spec).is_completed()
    assert len(src.delta_rows()) == 51
    assert ledger_of(src.spec)["items"]["keyset"]["count"] == 49
    src.delete([3])
    assert run_flow(src.spec).is_completed()
    assert [i for i, _ in src.delta_rows()][:2] == [1, 2]  # as the first run's warning says
    assert 3 not in [i for i, _ in src.delta_rows()]
    assert run_flow(src.spec, run_type="full_drop").is_completed()
    src.assert_exact("after a full drop")


def test_deletes_need_keys_and_a_store_that_can_delete(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    no_keys = {**src.spec, "entities": [{**src.spec["entities"][0], "watermark": {"column": "ts"}}]}
    with pytest.raises(ConfigError, match="give the watermark `keys` that identify a row"):
        parse_spec(no_keys)
    bad_mode = {**src.spec, "entities": [{**src.spec["entities"][0], "deletes": "soft_ish"}]}
    with pytest.raises(ConfigError, match="deletes"):
        parse_spec(bad_mode)
    src.insert(range(1, 11))
    # refused while planning, before anything connects: no server listens here
    account = "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a"
    adls = {
        "type": "adls",
        "container": "lake",
        "credentials": {"connection_string": f"DefaultEndpointsProtocol=http;{account}"},
    }
    state = run_flow({**src.spec, "store": adls})
    assert state.is_failed()
    with pytest.raises(Exception, match="does not write tombstones yet"):
        state.result()
    merges_other = {**src.spec, "store": {**src.spec["store"], "merge_keys": ["label"]}}
    with pytest.raises(Exception, match="deletes rows by the keys it merges by"):
        run_flow(merges_other).result()
    assert not (src.lake / "items").exists()


def test_parquet_lake_keeps_tombstones_and_a_current_view(tmp_path: Path, spec_name: str) -> None:
    from blocks.stores.parquet_current import current_view

    src = Source(tmp_path, spec_name, {"type": "parquet", "path": str(tmp_path / "lake")})

    def current() -> list[tuple[int, str]]:
        return (
            current_view(src.lake / "items", ["id"])
            .sort("id")
            .select("id", "label")
            .collect()
            .rows()
        )

    src.insert(range(1, 51))
    assert run_flow(src.spec).is_completed()
    src.update([1, 2], "updated")
    src.delete(range(10, 15))
    assert run_flow(src.spec).is_completed()
    assert current() == src.rows()
    # the log keeps every version; the tombstones sit apart, where `*.parquet` readers skip them
    assert pl.read_parquet(sorted((src.lake / "items").glob("*.parquet"))).height == 52
    tombstones = sorted((src.lake / "items" / "_deletes").glob("*.parquet"))
    assert [sorted(pq.read_table(t)["id"].to_pylist()) for t in tombstones] == [list(range(10, 15))]
    # a deleted key that comes back is current again; deletes alone publish a tombstone file
    src.insert([12])
    src.delete([3])
    assert run_flow(src.spec).is_completed()
    assert current() == src.rows()
    src.delete([4])
    assert run_flow(src.spec).is_completed()
    assert current() == src.rows()
    assert len(sorted((src.lake / "items" / "_deletes").glob("*.parquet"))) == 3
    # a full drop starts the table over, tombstones and all
    assert run_flow(src.spec, run_type="full_drop").is_completed()
    assert not (src.lake / "items" / "_deletes").exists()
    assert current() == src.rows()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["deletes.after_stage", "publish.after_prepare"])
def test_a_run_with_deletes_killed_is_finished_exactly(
    tmp_path: Path, spec_name: str, prefect_server: str, point: str
) -> None:
    src = Source(tmp_path, spec_name)
    src.insert(range(1, 201))
    assert src.cli(prefect_server) == 0, src.output
    src.update(range(1, 6), "changed")
    src.delete(range(50, 70))
    assert src.cli(prefect_server, fault=point) == -signal.SIGKILL, src.output
    assert src.cli(prefect_server) == 0, src.output
    src.assert_exact(f"after a kill at {point}")
    assert len(DeltaTable(str(src.lake / "items")).history()) == 2  # applied once
    keys = sorted(src.lake.glob("_state/items/*.keys.parquet"))
    assert pq.read_metadata(keys[-1]).num_rows == 180


def replay_landing_zone(c: Any, folder: str) -> dict[int, str]:
    """What a mirrored table holds after Fabric applies the landing zone's files in number
    order: 0 inserts, 1 updates, 4 upserts and 2 deletes by key (the reference applier)."""
    from tests.test_open_mirroring import data_files, read

    table: dict[int, str] = {}
    for name in data_files(c, folder):
        for row in read(c, folder, name).to_pylist():
            if row.get("__rowMarker__", 0) == 2:  # no marker: inserts
                table.pop(row["id"], None)
            else:
                table[row["id"]] = row["label"]
    return table


def test_open_mirroring_sends_deletes_as_markers(
    azurite: Any, tmp_path: Path, spec_name: str
) -> None:
    from tests.test_open_mirroring import ITEM, data_files, read

    ws = azurite.new_container()
    store = {
        "type": "open_mirroring",
        "workspace": ws,
        "item": ITEM,
        "credentials": {"connection_string": azurite.connection_string},
        "drop_wait_seconds": 1,
    }
    src = Source(tmp_path, spec_name, store)
    src.spec["entities"][0]["key_columns"] = ["id"]
    src.sql("DROP TABLE items")
    # NOT NULL at the source: the delete rows leave `label` NULL all the same
    src.sql("CREATE TABLE items (id INTEGER PRIMARY KEY, ts DATETIME, label TEXT NOT NULL)")
    c = azurite.container(ws)

    def assert_mirrored(context: str) -> None:
        assert replay_landing_zone(c, "items") == dict(src.rows()), context

    src.insert(range(1, 101))
    assert run_flow(src.spec).is_completed()
    assert_mirrored("first load")
    src.update(range(1, 6), "updated")
    src.delete(range(40, 50))
    assert run_flow(src.spec).is_completed()
    assert_mirrored("after updates and deletes")
    names = data_files(c, "items")
    last = read(c, "items", names[-1])
    # the deletes have a file of their own, after the changes: keys only, every other column NULL
    assert set(last["__rowMarker__"].to_pylist()) == {2}
    assert sorted(last["id"].to_pylist()) == list(range(40, 50))
    assert set(last["label"].to_pylist()) == {None}
    assert set(read(c, "items", names[-2])["__rowMarker__"].to_pylist()) == {4}

    src.delete([1, 2, 3])  # deletes alone: a run with no changed row
    state = run_flow(src.spec)
    assert state.is_completed()
    assert "3 deleted" in summary_row(state, "items")["detail"]
    assert_mirrored("after deletes alone")


@pytest.mark.parametrize("kind", ["delta", "parquet", "open_mirroring"])
def test_postgres_source_with_a_composite_key(
    pg: Any, pg_schema: str, tmp_path: Path, spec_name: str, request: Any, kind: str
) -> None:
    """Each Store equals the PostgreSQL source after each run: the Delta table, the Parquet
    lake's current view, and the landing zone replayed in file order (Fabric is the one part
    emulated: `replay` applies the markers as it would)."""
    from blocks.stores.parquet_current import current_view
    from tests.pg_server import pg_home
    from tests.test_open_mirroring import ITEM, data_files, read

    table = f'"{pg_schema}".lines'
    pg.execute(
        f"CREATE TABLE {table} (order_id bigint, line text, ts timestamptz, qty numeric(10,2),"
        " PRIMARY KEY (order_id, line))",
        f"INSERT INTO {table} SELECT o, l, timestamptz '2024-05-01 12:00+00', o * 1.5"
        " FROM generate_series(1, 200) o, unnest(array['a', 'b', 'c']) l",
    )
    lake = tmp_path / "lake"
    keys = ["order_id", "line"]
    store: dict[str, Any] = {"type": kind, "path": str(lake)}
    if kind == "open_mirroring":
        azurite = request.getfixturevalue("azurite")
        ws = azurite.new_container()
        c = azurite.container(ws)
        store = {
            "type": kind,
            "workspace": ws,
            "item": ITEM,
            "credentials": {"connection_string": azurite.connection_string},
            "key_columns": keys,
        }
    spec = {
        "name": spec_name,
        "home": pg_home(pg),
        "store": store,
        "retry_delay_seconds": 0,
        "entities": [
            {
                "name": "lines",
                "table": f"{pg_schema}.lines",
                "watermark": {"column": "ts", "keys": keys},
                "deletes": "detect",
            }
        ],
    }

    def held() -> list[tuple[Any, ...]]:
        if kind == "delta":
            got = pl.read_delta(str(lake / "lines"))
        elif kind == "parquet":
            got = current_view(lake / "lines", keys).collect()
        else:
            rows: dict[tuple[Any, ...], Any] = {}
            for name in data_files(c, "lines"):
                for r in read(c, "lines", name).to_pylist():
                    if r.get("__rowMarker__", 0) == 2:
                        rows.pop((r["order_id"], r["line"]), None)
                    else:
                        rows[(r["order_id"], r["line"])] = r["qty"]
            return sorted((o, li, str(q)) for (o, li), q in rows.items())
        return sorted((o, li, str(q)) for o, li, q in got.select(*keys, "qty").rows())

    def assert_exact(context: str) -> None:
        want = pg.query(f"SELECT order_id, line, qty FROM {table} ORDER BY 1, 2")
        assert held() == [(o, li, str(q)) for o, li, q in want], context

    assert run_flow(spec).is_completed()
    assert_exact("first load")
    # deletes of one line of an order, of a whole order, and an update
    pg.execute(
        f"DELETE FROM {table} WHERE (order_id = 7 AND line = 'b') OR order_id = 9",
        f"UPDATE {table} SET qty = 0, ts = ts + interval '1 hour' WHERE order_id = 10",
    )
    state = run_flow(spec)
    assert state.is_completed()
    assert_exact("after deletes by composite key")
    assert ledger_of(spec)["lines"]["deleted"] == 4
    assert ledger_of(spec)["lines"]["keyset"]["count"] == 596
    # an insert, and a deleted key that comes back
    pg.execute(
        f"INSERT INTO {table} VALUES (9, 'a', timestamptz '2024-05-01 14:00+00', 1.25),"
        " (201, 'a', timestamptz '2024-05-01 14:00+00', 2.5)"
    )
    assert run_flow(spec).is_completed()
    assert_exact("after a key came back")


def test_soft_deletes_keep_the_row_with_when_it_went(tmp_path: Path, spec_name: str) -> None:
    from blocks.stores.parquet_current import current_view

    src = Source(tmp_path, spec_name, {"type": "parquet", "path": str(tmp_path / "lake")})
    src.spec["entities"][0]["deletes"] = {"mode": "soft"}
    src.insert(range(1, 21))
    assert run_flow(src.spec).is_completed()
    src.delete([3, 4])
    before = dt.datetime.now(dt.UTC)
    assert run_flow(src.spec).is_completed()

    def view() -> pl.DataFrame:
        frame = current_view(src.lake / "items", ["id"], soft_column="_deleted_at")
        return frame.sort("id").collect()

    got = view()
    assert got.height == 20  # soft: every row stays
    gone = got.filter(pl.col("_deleted_at").is_not_null())
    assert gone["id"].to_list() == [3, 4]
    assert all(t >= before - dt.timedelta(seconds=5) for t in gone["_deleted_at"])
    assert got["_deleted_at"].dtype == pl.Datetime("us", "UTC")
    # a soft-deleted key that comes back is current again, its mark cleared
    src.insert([3])
    assert run_flow(src.spec).is_completed()
    got = view()
    assert got.filter(pl.col("_deleted_at").is_not_null())["id"].to_list() == [4]
    assert ledger_of(src.spec)["items"]["keyset"]["count"] == 19
    # without the soft column the same tombstones read as deletes
    hard = current_view(src.lake / "items", ["id"]).collect()
    assert sorted(hard["id"].to_list()) == [i for i, _ in src.rows()]


def test_delta_soft_deletes_keep_the_row_in_the_runs_merge(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.spec["entities"][0]["deletes"] = {"mode": "soft"}
    src.insert(range(1, 21))
    assert run_flow(src.spec).is_completed()
    src.update([5], "updated")
    src.delete([3, 4])
    before = dt.datetime.now(dt.UTC)
    assert run_flow(src.spec).is_completed()

    def table() -> pl.DataFrame:
        return pl.read_delta(str(src.lake / "items")).sort("id")

    got = table()
    assert got.height == 20  # soft: every row stays
    gone = got.filter(pl.col("_deleted_at").is_not_null())
    assert gone["id"].to_list() == [3, 4]
    assert all(t >= before - dt.timedelta(seconds=5) for t in gone["_deleted_at"])
    assert got["_deleted_at"].dtype == pl.Datetime("us", "UTC")
    assert got.filter(pl.col("id") == 5)["label"].to_list() == ["updated"]
    history = DeltaTable(str(src.lake / "items")).history()
    assert [h["operation"] for h in history] == ["MERGE", "CREATE TABLE"]  # one commit
    # a soft-deleted key that comes back is current again, its mark cleared; the other keeps
    # the time it went
    marked = gone.filter(pl.col("id") == 4)["_deleted_at"].to_list()
    src.insert([3])
    assert run_flow(src.spec).is_completed()
    got = table()
    assert got.filter(pl.col("_deleted_at").is_not_null())["id"].to_list() == [4]
    assert got.filter(pl.col("id") == 4)["_deleted_at"].to_list() == marked
    live = got.filter(pl.col("_deleted_at").is_null())
    assert sorted(live["id"].to_list()) == [i for i, _ in src.rows()]


def test_soft_deletes_are_refused_where_a_row_cannot_stay(tmp_path: Path, spec_name: str) -> None:
    src = Source(
        tmp_path,
        spec_name,
        {
            "type": "open_mirroring",
            "workspace": "ws",
            "item": "Shop.MountedRelationalDatabase",
            "credentials": {
                "connection_string": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a"
            },
        },
    )
    src.spec["entities"][0] |= {"deletes": "soft", "key_columns": ["id"]}
    src.insert(range(1, 3))
    state = run_flow(src.spec)
    with pytest.raises(Exception, match="a soft delete would blank the row's other columns"):
        state.result()


def test_delta_deletes_the_rows_a_delete_column_marks(tmp_path: Path, spec_name: str) -> None:
    src = Source(tmp_path, spec_name)
    src.sql("DROP TABLE items")
    src.sql("CREATE TABLE items (id INTEGER PRIMARY KEY, ts DATETIME, label TEXT, gone BOOLEAN)")
    del src.spec["entities"][0]["deletes"]
    src.spec["entities"][0]["delete_column"] = "gone"
    src.sql(
        "INSERT INTO items VALUES (?,?,?,?)",
        [(i, "2024-05-01 12:00:00", f"item {i}", int(i == 5)) for i in range(1, 11)],
    )

    def alive() -> list[int]:
        con = sqlite3.connect(src.db)
        out = [r[0] for r in con.execute("SELECT id FROM items WHERE NOT gone ORDER BY id")]
        con.close()
        return out

    state = run_flow(src.spec)
    assert state.is_completed()
    assert [i for i, _ in src.delta_rows()] == alive()  # a full load leaves 5 out
    assert summary_row(state, "items")["rows"] == 10
    # the source marks 2 and 3 deleted (a soft-delete flag the application keeps)
    src.sql("UPDATE items SET gone = 1, ts = '2024-05-01 13:00:00' WHERE id IN (2, 3)")
    src.sql("INSERT INTO items VALUES (11, '2024-05-01 13:00:00', 'item 11', 0)")
    assert run_flow(src.spec).is_completed()
    assert [i for i, _ in src.delta_rows()] == alive() == [1, 4, 6, 7, 8, 9, 10, 11]
    history = DeltaTable(str(src.lake / "items")).history()
    assert [h["operation"] for h in history] == ["MERGE", "CREATE TABLE"]

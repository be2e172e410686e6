"""A run's upserts and deletes as one Delta MERGE (`_delta_log.write_run(..., deletes=...)`),
on real tables on local disk, read back value by value by delta-rs and by Polars."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, WriterProperties

from blocks.stores import _delta_log as log
from blocks.stores._delta_merge import merge_predicate

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


class Run:
    """Stages files as the Store's writer does and applies them with `write_run`."""

    def __init__(self, tmp: Path, keys: list[str] | None = None) -> None:
        self.tmp = tmp
        self.uri = str(tmp / "table")
        self.keys = keys or ["id"]
        self.n = 0

    def stage(self, name: str, table: pa.Table) -> Path:
        path = self.tmp / "staged" / f"{name}-{self.n}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return path

    def merge(self, changes: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> dict[str, Any]:
        self.n += 1
        files = [self.stage("changes", rows_table(changes))] if changes else []
        gone = [self.stage("deletes", keys_table(deletes, self.keys))] if deletes else []
        return log.write_run(
            self.uri,
            None,
            "merge",
            files,
            add_columns=False,
            keys=self.keys,
            order=["ts"],
            props=log.commit_properties(f"r{self.n}", self.n, "t"),
            writer=WriterProperties(),
            name="t",
            description="test",
            deletes=gone,
        )

    def rows(self) -> list[dict[str, Any]]:
        by_arrow = DeltaTable(self.uri).to_pyarrow_table().sort_by(self.sort()).to_pylist()
        by_polars = pl.read_delta(self.uri).sort(self.keys).to_dicts()
        assert by_arrow == by_polars
        return by_polars

    def sort(self) -> list[tuple[str, str]]:
        return [(k, "ascending") for k in self.keys]


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("code", pa.string()),
            ("v", pa.string()),
            ("ts", pa.timestamp("us", "UTC")),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def keys_table(rows: list[dict[str, Any]], keys: list[str]) -> pa.Table:
    types = {"id": pa.int64(), "code": pa.string()}
    return pa.Table.from_pylist(rows, schema=pa.schema([(k, types[k]) for k in keys]))


def row(i: int, v: str, hours: int = 0, code: str = "a") -> dict[str, Any]:
    return {"id": i, "code": code, "v": v, "ts": T0 + dt.timedelta(hours=hours)}


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


def test_upserts_and_deletes_are_one_commit(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.merge([row(i, "old") for i in range(1, 7)], [])
    metrics = run.merge([row(2, "new", 1), row(9, "ins", 1)], [{"id": 3}, {"id": 5}])
    assert run.rows() == [
        row(1, "old"),
        row(2, "new", 1),
        row(4, "old"),
        row(6, "old"),
        row(9, "ins", 1),
    ]
    assert metrics["num_target_rows_deleted"] == 2
    assert metrics["num_target_rows_updated"] == 1
    assert metrics["num_target_rows_inserted"] == 1
    table = DeltaTable(run.uri)
    assert table.version() == 1  # the upserts and the deletes: one commit
    assert table.history(1)[0]["operation"] == "MERGE"
    assert table.transaction_version(log.APP_ID) == 2
    # the delete flag never reaches the table
    assert pa.schema(table.schema().to_arrow()).names == ["id", "code", "v", "ts"]


def test_a_key_changed_and_deleted_in_one_run_is_deleted(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.merge([row(1, "old"), row(2, "old")], [])
    # 2 exists and is both updated and deleted; 7 is new, inserted and deleted: neither stays
    run.merge([row(2, "new", 1), row(7, "new", 1), row(8, "kept", 1)], [{"id": 2}, {"id": 7}])
    assert run.rows() == [row(1, "old"), row(8, "kept", 1)]


def test_deleting_keys_the_table_lacks_changes_nothing_else(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.merge([row(1, "old"), row(2, "old")], [])
    metrics = run.merge([], [{"id": 40}, {"id": 41}, {"id": 40}])
    assert metrics["num_target_rows_deleted"] == 0
    assert run.rows() == [row(1, "old"), row(2, "old")]
    # delta-rs commits nothing for a merge that changes nothing; repeating it is as harmless
    assert DeltaTable(run.uri).version() == 0


def test_only_deletes_in_a_run(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.merge([row(i, "old") for i in range(1, 5)], [])
    run.merge([], [{"id": 1}, {"id": 4}])
    assert ids(run.rows()) == [2, 3]


def test_no_deletes_is_the_plain_upsert(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.merge([row(1, "a"), row(2, "b")], [])
    # two versions of key 1 in one run: the highest watermark wins
    run.merge([row(1, "a@3", 3), row(1, "a@2", 2), row(3, "c", 1)], [])
    assert run.rows() == [row(1, "a@3", 3), row(2, "b"), row(3, "c", 1)]


def test_a_new_tables_first_rows_leave_out_the_deleted_keys(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.merge([row(1, "a"), row(2, "b"), row(3, "c")], [{"id": 2}])
    assert run.rows() == [row(1, "a"), row(3, "c")]
    assert DeltaTable(run.uri).version() == 0


def test_deletes_by_a_two_column_key(tmp_path: Path) -> None:
    run = Run(tmp_path, keys=["id", "code"])
    run.merge([row(1, "a", code="x"), row(1, "b", code="y"), row(2, "c", code="x")], [])
    run.merge([row(2, "c2", 1, code="x")], [{"id": 1, "code": "y"}, {"id": 2, "code": "y"}])
    assert run.rows() == [row(1, "a", code="x"), row(2, "c2", 1, code="x")]


def test_deletes_need_a_merge(tmp_path: Path) -> None:
    staged = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1]}), staged)
    with pytest.raises(ValueError, match="deletes by key need a merge"):
        log.write_run(
            str(tmp_path / "t"),
            None,
            "append",
            [staged],
            add_columns=False,
            keys=[],
            order=[],
            props=log.commit_properties("r1", 1, "t"),
            writer=WriterProperties(),
            name="t",
            description="",
            deletes=[staged],
        )


def test_the_predicate_bounds_integer_and_text_keys() -> None:
    source = pa.table({"id": [5, 2, 9], "code": ["b'x", "a", None], "f": [1.0, 2.0, 3.0]})
    got = merge_predicate(["id", "code", "f"], source)
    assert got == (
        "t.`id` >= 2 AND t.`id` <= 9 AND t.`code` >= 'a' AND t.`code` <= 'b''x' AND "
        "t.`id` = s.`id` AND t.`code` = s.`code` AND t.`f` = s.`f`"
    )
    assert merge_predicate(["id"], source.slice(0, 0)) == "t.`id` = s.`id`"


def test_a_range_that_rules_out_no_file_is_left_out() -> None:
    source = pa.table({"id": [5, 2, 9]})
    spread = pa.table({"min.id": [0, 4], "max.id": [6, 12]})  # both files can hold 2..9
    assert merge_predicate(["id"], source, spread) == "t.`id` = s.`id`"
    apart = pa.table({"min.id": [0, 10], "max.id": [6, 12]})  # the second holds 10..12 only
    assert merge_predicate(["id"], source, apart).startswith("t.`id` >= 2 AND t.`id` <= 9 AND")
    unknown = pa.table({"size_bytes": [1, 2]})  # no statistics: the range could skip nothing
    assert merge_predicate(["id"], source, unknown) == "t.`id` = s.`id`"

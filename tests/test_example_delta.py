"""The Delta example (deployments/example_delta.yaml) run twice, with a day of changes at the
source in between: every table equals the source's current state, row for row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest
import yaml
from deltalake import DeltaTable

from flows.example import REPO, ensure_example_data
from flows.example_changes import change_example, main
from tests.conftest import run_flow

KEYS = {
    "orders": ["order_id"],
    "order_lines": ["order_id", "line_no"],
    "customers": ["customer_id"],
    "products": ["product_id"],
}


def source(db: Path, table: str) -> pl.DataFrame:
    with sqlite3.connect(db) as con:
        cur = con.execute(f"SELECT * FROM {table} ORDER BY {', '.join(KEYS[table])}")
        names = [d[0] for d in cur.description]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row", infer_schema_length=None)


def assert_current(db: Path, lake: Path, context: str) -> None:
    for table, keys in KEYS.items():
        want = source(db, table)
        got = pl.read_delta(str(lake / table)).sort(keys)
        assert got.height == want.height, f"{context}: {table} has {got.height} rows"
        assert got.columns == want.columns
        for column in want.columns:
            mine = got[column]
            if mine.dtype == pl.Datetime("us", "UTC"):
                mine = mine.dt.strftime("%Y-%m-%d %H:%M:%S")
            elif mine.dtype == pl.Date:
                mine = mine.dt.strftime("%Y-%m-%d")
            elif isinstance(mine.dtype, pl.Decimal):
                mine = mine.cast(pl.String)
                want_col = want[column].cast(pl.String)
                assert [float(v) for v in mine] == [float(v) for v in want_col], column
                continue
            assert mine.to_list() == want[column].to_list(), f"{context}: {table}.{column}"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_name: str) -> tuple[Path, dict]:
    db = ensure_example_data(tmp_path / "data" / "shop.sqlite", orders=20_000)
    monkeypatch.setenv("HYGGE_EXAMPLE_DIR", str(db.parent))
    monkeypatch.setenv("HYGGE_DELTA_LAKE", str(tmp_path / "delta_lake"))
    spec = yaml.safe_load((REPO / "deployments" / "example_delta.yaml").read_text("utf-8"))
    spec["name"] = spec_name
    return db, spec


def test_the_delta_example_follows_a_day_of_changes(example: tuple[Path, dict]) -> None:
    db, spec = example
    from flows.spec import expand_env

    spec = expand_env(spec)
    lake = Path(spec["store"]["path"])
    assert run_flow(spec).is_completed()
    assert_current(db, lake, "first run")

    changes = change_example(db)
    assert changes.deleted_orders > 0 and changes.updated_orders > 0
    assert changes.updated_lines > 0 and changes.deleted_lines > 0
    state = run_flow(spec)
    assert state.is_completed()
    assert_current(db, lake, "after a day of changes")
    rows = {r["entity"]: r for r in state.result()}
    assert f"{changes.deleted_orders:,} deleted" in rows["orders"]["detail"]
    assert rows["orders"]["rows"] == changes.updated_orders + changes.new_orders
    # orders: the first write and one merge holding the day's upserts and deletes
    assert [h["operation"] for h in DeltaTable(str(lake / "orders")).history()] == [
        "MERGE",
        "CREATE TABLE",
    ]
    assert change_example(db).day == 2
    assert run_flow(spec).is_completed()
    assert_current(db, lake, "after a second day")


def test_the_changes_command_names_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(tmp_path / "none.sqlite")]) == 1
    assert "run `python -m flows.run` once to create it" in capsys.readouterr().err

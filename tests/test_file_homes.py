"""ParquetHome and CsvHome end to end: real files in, a real Parquet lake out, through the flow."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from blocks import CsvHome, ParquetHome
from blocks.base import ReadRequest
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import file_spec_for as spec_for
from tests.flow_helpers import write_parquet as write

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)
SCHEMA = {"id": pl.Int64, "ts": pl.Datetime("us"), "amount": pl.Float64, "label": pl.String}


def rows(start: int, count: int, per_minute: int = 1) -> pl.DataFrame:
    """`count` rows from id `start`; `per_minute` rows share each timestamp (boundary ties)."""
    ids = list(range(start, start + count))
    return pl.DataFrame(
        {
            "id": ids,
            "ts": [T0 + dt.timedelta(minutes=i // per_minute) for i in ids],
            "amount": [i * 1.25 for i in ids],
            "label": [f"rad {i} ✓" for i in ids],
        },
        schema=SCHEMA,
    )


def rows_by_entity(state: Any) -> dict[str, int]:
    return {r["entity"]: r["rows"] for r in state.result()}


def test_parquet_home_reads_a_file_a_directory_and_a_glob(tmp_path: Path, spec_name: str) -> None:
    src = tmp_path / "src"
    single = write(rows(0, 10), src / "one.parquet")
    # a directory as Spark or an export tool leaves it: parts (one nested), markers, debris
    write(rows(100, 50), src / "folder" / "part-00000.parquet")
    write(rows(150, 25), src / "folder" / "2024" / "part-00001.parquet")
    (src / "folder" / "_SUCCESS").write_bytes(b"")
    (src / "folder" / "notes.txt").write_text("not data")
    (src / "folder" / "_tmp-part-00002.parquet").write_bytes(os.urandom(512))
    (src / "folder" / ".part-00003.parquet").write_bytes(os.urandom(512))
    write(rows(900, 5), src / "folder" / "_staging" / "part-00004.parquet")
    # a glob under a folder whose own name starts with `_`: only matched names can hide a file
    write(rows(200, 7), src / "_landing" / "2024-05-01.parquet")
    write(rows(207, 8), src / "_landing" / "2024-05-02.parquet")
    (src / "_landing" / "_partial.parquet").write_bytes(os.urandom(512))
    write(rows(300, 3), src / "_landing" / "other.txt.parquet.bak")
    lake = tmp_path / "lake"
    spec = spec_for(
        spec_name,
        {"type": "parquet", "path": str(src)},
        lake,
        [
            {"name": "single", "path": str(single)},  # absolute: the Home's path is ignored
            {"name": "folder", "path": "folder"},
            {"name": "daily", "path": "_landing/*.parquet"},
            {"name": "subset", "path": "folder", "columns": ["id", "label"], "where": "id >= 170"},
        ],
    )

    state = run_flow(spec)
    assert state.is_completed()
    assert rows_by_entity(state) == {"single": 10, "folder": 75, "daily": 15, "subset": 5}
    assert_frame_equal(read_lake(lake, "single").sort("id"), rows(0, 10))
    assert_frame_equal(read_lake(lake, "folder").sort("id"), rows(100, 75))
    assert_frame_equal(read_lake(lake, "daily").sort("id"), rows(200, 15))
    assert_frame_equal(read_lake(lake, "subset").sort("id"), rows(170, 5).select("id", "label"))
    assert set(ledger_of(spec)) == {"single", "folder", "daily", "subset"}


def test_file_homes_hand_text_over_as_views_and_nested_columns_as_before(
    tmp_path: Path, spec_name: str
) -> None:
    # flat files leave Polars as views (no copy of the text); a nested or categorical column
    # keeps the whole file on the large types, which every step computes on
    flat = write(rows(0, 5), tmp_path / "flat.parquet")
    nested_rows = rows(0, 5).with_columns(
        tags=pl.Series([["a", "b"], [], None, ["ü"], ["c"]], dtype=pl.List(pl.String)),
        kind=pl.Series(["x", "y", "x", None, "y"], dtype=pl.Categorical),
    )
    nested = write(nested_rows, tmp_path / "nested.parquet")
    home = ParquetHome()
    [batch] = home.read(ReadRequest(entity="flat", path=str(flat)))
    assert batch.schema.field("label").type == pa.string_view()
    [batch] = home.read(ReadRequest(entity="nested", path=str(nested)))
    assert batch.schema.field("label").type == pa.large_string()
    [batch] = CsvHome().read(ReadRequest(entity="csv", path=str(_csv(tmp_path, rows(0, 3)))))
    assert batch.schema.field("label").type == pa.string_view()

    lake = tmp_path / "lake"
    entities = [{"name": "flat", "path": str(flat)}, {"name": "nested", "path": str(nested)}]
    state = run_flow(spec_for(spec_name, {"type": "parquet"}, lake, entities))
    assert rows_by_entity(state) == {"flat": 5, "nested": 5}
    assert_frame_equal(read_lake(lake, "flat"), rows(0, 5))
    assert_frame_equal(read_lake(lake, "nested"), nested_rows, check_dtypes=False)
    assert read_lake(lake, "nested")["kind"].cast(pl.String).to_list() == ["x", "y", "x", None, "y"]


def test_file_homes_bound_polars_read_ahead_unless_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # read-ahead only holds memory while the Store encodes (bench/RESULTS.md: peak RSS)
    monkeypatch.delenv("POLARS_ROW_GROUP_PREFETCH_SIZE", raising=False)
    monkeypatch.setenv("POLARS_CSV_CHUNK_PREFETCH_LIMIT", "8")  # the user's choice
    src = write(rows(0, 200), tmp_path / "r.parquet")
    got = list(ParquetHome().read(ReadRequest(entity="e", path=str(src), batch_size=64)))
    assert sum(b.num_rows for b in got) == 200
    assert os.environ["POLARS_ROW_GROUP_PREFETCH_SIZE"] == "1"
    assert os.environ["POLARS_CSV_CHUNK_PREFETCH_LIMIT"] == "8"


def _csv(folder: Path, df: pl.DataFrame) -> Path:
    path = folder / "rows.csv"
    df.write_csv(path)
    return path


def test_parquet_directory_incremental_loads_only_the_new_rows(
    tmp_path: Path, spec_name: str
) -> None:
    events = tmp_path / "events"
    write(rows(0, 100, per_minute=4), events / "part-000.parquet")
    lake = tmp_path / "lake"
    spec = spec_for(
        spec_name,
        {"type": "parquet"},
        lake,
        [{"name": "events", "path": str(events), "watermark": {"column": "ts", "keys": ["id"]}}],
    )
    first = run_flow(spec)
    assert first.is_completed()
    assert rows_by_entity(first) == {"events": 100}
    wm = ledger_of(spec)["events"]["watermark"]
    assert wm["value"] == (T0 + dt.timedelta(minutes=24)).isoformat()
    assert wm["boundary"] == ["96", "97", "98", "99"]

    # a new file: two rows tied with the stored watermark (new ids), then later rows
    later = rows(100, 60, per_minute=4).with_columns(
        pl.when(pl.col("id") < 102)
        .then(pl.lit(T0 + dt.timedelta(minutes=24)))
        .otherwise(pl.col("ts"))
        .alias("ts")
    )
    write(later, events / "part-001.parquet")
    second = run_flow(spec)
    assert second.is_completed()
    row = next(r for r in second.result() if r["entity"] == "events")
    assert (row["rows"], row["mode"]) == (60, "append")
    got = read_lake(lake, "events").sort("id")
    assert_frame_equal(got, pl.concat([rows(0, 100, per_minute=4), later]))
    assert len(list((lake / "events").glob("*.parquet"))) == 2
    wm = ledger_of(spec)["events"]["watermark"]
    assert wm["value"] == (T0 + dt.timedelta(minutes=39)).isoformat()
    assert wm["boundary"] == ["156", "157", "158", "159"]

    third = run_flow(spec)
    assert rows_by_entity(third) == {"events": 0}
    assert read_lake(lake, "events").height == 160
    assert ledger_of(spec)["events"]["watermark"] == wm


def test_csv_home_header_delimiter_encoding_and_overrides(tmp_path: Path, spec_name: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "header.csv").write_text(
        'id,day,price,name\n1,2024-05-01,9.50,apple\n2,2024-05-02,10.25,"pear, green"\n',
        encoding="utf-8",
    )
    (src / "bare.csv").write_text("1,007,a\n2,008,b\n", encoding="utf-8")
    (src / "semi.csv").write_text("id;amount;note\n1;1,5;a,b\n2;2,75;c\n", encoding="utf-8")
    latin = "id,name,city\n1,Müller,Zürich\n2,Ørsted,København\n3,Façade,Besançon\n"
    (src / "latin.csv").write_bytes(latin.encode("latin-1"))
    assert b"M\xfcller" in (src / "latin.csv").read_bytes()  # really not UTF-8
    # leading zeros that inference would eat, and a decimal after the inference window
    pinned = ["zip,qty"] + [f"{i:05d},{i}" for i in range(1, 41)] + ["00041,2.5"]
    (src / "pinned.csv").write_text("\n".join(pinned) + "\n", encoding="utf-8")
    lake = tmp_path / "lake"
    spec = spec_for(
        spec_name,
        {"type": "csv", "path": str(src)},
        lake,
        [
            {"name": "header", "path": "header.csv"},
            {
                "name": "bare",
                "path": "bare.csv",
                "has_header": False,
                "schema_overrides": {"column_2": "String"},
            },
            {"name": "semi", "path": "semi.csv", "delimiter": ";"},
            {"name": "latin", "path": "latin.csv", "encoding": "latin-1"},
            {
                "name": "pinned",
                "path": "pinned.csv",
                "infer_schema_length": 10,
                "schema_overrides": {"zip": "String", "qty": "Float64"},
            },
        ],
    )

    state = run_flow(spec)
    assert state.is_completed()
    assert rows_by_entity(state) == {"header": 2, "bare": 2, "semi": 2, "latin": 3, "pinned": 41}
    assert_frame_equal(
        read_lake(lake, "header").sort("id"),
        pl.DataFrame(
            {
                "id": [1, 2],
                "day": [dt.date(2024, 5, 1), dt.date(2024, 5, 2)],
                "price": [9.5, 10.25],
                "name": ["apple", "pear, green"],
            }
        ),
    )
    # no header: stable 1-based names, which `schema_overrides` uses too
    bare = read_lake(lake, "bare").sort("column_1")
    assert bare.schema == pl.Schema(
        {"column_1": pl.Int64, "column_2": pl.String, "column_3": pl.String}
    )
    assert bare.rows() == [(1, "007", "a"), (2, "008", "b")]
    semi = read_lake(lake, "semi").sort("id")
    assert semi.rows() == [(1, "1,5", "a,b"), (2, "2,75", "c")]
    latin_lake = read_lake(lake, "latin").sort("id")
    assert latin_lake["name"].to_list() == ["Müller", "Ørsted", "Façade"]
    assert latin_lake["city"].to_list() == ["Zürich", "København", "Besançon"]
    pinned_lake = read_lake(lake, "pinned").sort("zip")
    assert pinned_lake.schema == pl.Schema({"zip": pl.String, "qty": pl.Float64})
    assert pinned_lake["zip"].to_list() == [f"{i:05d}" for i in range(1, 42)]
    assert pinned_lake["qty"].to_list() == [float(i) for i in range(1, 41)] + [2.5]


def test_parquet_nanosecond_watermark_is_exact_across_runs(tmp_path: Path, spec_name: str) -> None:
    """`timestamp[ns]` values 1 ns apart, ties at the boundary, across three runs."""
    ns0 = 1_714_564_800_000_000_000
    schema = {"id": pl.Int64, "ts": pl.Datetime("ns")}

    def frame(ids: list[int], nanos: list[int]) -> pl.DataFrame:
        return pl.DataFrame({"id": ids, "ts": [ns0 + n for n in nanos]}).cast(schema)

    events = tmp_path / "events"
    write(frame([1, 2, 3, 4], [0, 123_456_788, 123_456_789, 123_456_789]), events / "a.parquet")
    lake = tmp_path / "lake"
    spec = spec_for(
        spec_name,
        {"type": "parquet"},
        lake,
        [{"name": "events", "path": str(events), "watermark": {"column": "ts", "keys": ["id"]}}],
    )
    assert rows_by_entity(run_flow(spec)) == {"events": 4}
    wm = ledger_of(spec)["events"]["watermark"]
    assert (wm["kind"], wm["value"]) == ("timestamp_ns", "2024-05-01T12:00:00.123456789")
    assert wm["boundary"] == ["3", "4"]

    # 5 ties with the stored value; 6 is 1 ns earlier (an old row, correctly skipped);
    # 7 is 1 ns later
    later = frame([5, 6, 7], [123_456_789, 123_456_788, 123_456_790])
    write(later, events / "b.parquet")
    second = run_flow(spec)
    assert rows_by_entity(second) == {"events": 2}
    got = read_lake(lake, "events").sort("id")
    assert got["id"].to_list() == [1, 2, 3, 4, 5, 7]
    assert got.schema["ts"] == pl.Datetime("ns")
    assert got["ts"].dt.nanosecond().to_list()[-2:] == [123_456_789, 123_456_790]
    wm = ledger_of(spec)["events"]["watermark"]
    assert (wm["value"], wm["boundary"]) == ("2024-05-01T12:00:00.123456790", ["7"])
    assert rows_by_entity(run_flow(spec)) == {"events": 0}

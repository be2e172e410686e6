"""JsonHome against real JSON files: NDJSON and arrays, plain and gzip, nested and flattened,
bad lines failed with their line number or skipped and counted, and whole flow runs."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from blocks import HOMES, JsonHome
from blocks.base import ReadRequest
from hygge_core.errors import ConfigError, HomeError
from tests.conftest import read_lake, run_flow
from tests.flow_helpers import summary_row

RECORDS = [
    {"id": 1, "name": "Åsa", "tags": ["a", "b"], "address": {"city": "Oslo", "geo": {"lat": 59.9}}},
    {"id": 2, "name": "José", "tags": [], "address": {"city": "Porto", "geo": {"lat": 41.1}}},
    {"id": 3, "name": None, "tags": ["c"], "address": None},
]


def ndjson(path: Path, records: list[dict[str, Any]], *, gz: bool = False, extra: str = "") -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + extra
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def rows(home: JsonHome, path: Path, **request: Any) -> tuple[pa.Table, str | None]:
    gen = home.read(ReadRequest(entity="e", path=str(path), **request))
    batches = []
    while True:
        try:
            batches.append(next(gen))
        except StopIteration as done:
            return pa.Table.from_batches(batches), done.value


def test_registered_as_type_json() -> None:
    assert HOMES["json"] is JsonHome


@pytest.mark.parametrize("gz", [False, True])
def test_ndjson_keeps_nested_values(tmp_path: Path, gz: bool) -> None:
    path = ndjson(tmp_path / ("e.ndjson.gz" if gz else "e.ndjson"), RECORDS, gz=gz)
    table, note = rows(JsonHome(), path)
    assert note is None
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("name").to_pylist() == ["Åsa", "José", None]
    assert table.column("tags").to_pylist() == [["a", "b"], [], ["c"]]
    assert pa.types.is_struct(table.schema.field("address").type)
    assert table.column("address").to_pylist()[0] == {"city": "Oslo", "geo": {"lat": 59.9}}


def test_an_array_reads_item_by_item(tmp_path: Path) -> None:
    path = tmp_path / "api.json"
    path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    table, _ = rows(JsonHome(), path)
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("address").to_pylist()[1]["city"] == "Porto"
    gz = tmp_path / "api.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(RECORDS).encode()))
    assert rows(JsonHome(), gz)[0].column("name").to_pylist() == ["Åsa", "José", None]


def test_flatten_makes_parent_child_columns(tmp_path: Path) -> None:
    path = ndjson(tmp_path / "e.jsonl", RECORDS)
    table, _ = rows(JsonHome(flatten=True), path)
    assert table.schema.names == ["id", "name", "tags", "address__city", "address__geo__lat"]
    assert table.column("address__city").to_pylist() == ["Oslo", "Porto", None]
    assert table.column("address__geo__lat").to_pylist() == [59.9, 41.1, None]


def test_a_bad_line_fails_with_file_and_line(tmp_path: Path) -> None:
    path = ndjson(tmp_path / "e.ndjson", RECORDS[:2], extra='{"id": 3, "name": \n{"id": 4}\n')
    with pytest.raises(HomeError, match=r"line 3 is not a JSON object") as caught:
        rows(JsonHome(), path)
    assert "on_bad_line: skip" in str(caught.value)
    # the same inside gzip, where the line is checked while decompressing
    gz = ndjson(tmp_path / "e.ndjson.gz", [*RECORDS[:2]], gz=True, extra="[1, 2]\n")
    with pytest.raises(HomeError, match=r"line 3 is not a JSON object \(not an object\)"):
        rows(JsonHome(), gz)


def test_skip_counts_and_names_bad_lines(tmp_path: Path) -> None:
    path = ndjson(tmp_path / "e.ndjson", RECORDS, extra='not json\n\n{"id": 9, "name": "z"}\n"x"\n')
    table, note = rows(JsonHome(on_bad_line="skip"), path)
    assert table.column("id").to_pylist() == [1, 2, 3, 9]  # the blank line is no record
    assert note is not None and note.startswith("2 lines that are not JSON objects skipped")
    assert "e.ndjson line 4" in note and "e.ndjson line 7" in note


def test_schema_overrides_pin_types(tmp_path: Path) -> None:
    path = ndjson(tmp_path / "e.ndjson", [{"id": 1, "v": 1}, {"id": 2, "v": 2}])
    table, _ = rows(JsonHome(schema_overrides={"v": "Float64"}), path)
    assert table.schema.field("v").type == pa.float64()
    with pytest.raises(ConfigError, match="'Floaty' for column 'v' is not a Polars type"):
        rows(JsonHome(schema_overrides={"v": "Floaty"}), path)


def test_a_large_array_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        for i in range(200_000):
            f.write(("," if i else "") + json.dumps({"id": i, "text": "x" * 100}))
        f.write("]")
    tracemalloc.start()
    count = 0
    for batch in JsonHome().read(ReadRequest(entity="e", path=str(path), batch_size=10_000)):
        count += batch.num_rows
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 200_000
    # the ~22 MB array never sits in Python memory at once (Polars' own buffers are native)
    assert peak < 8 * 1024 * 1024


def test_a_flow_loads_json_files_incrementally(tmp_path: Path, spec_name: str) -> None:
    folder = tmp_path / "drops"
    folder.mkdir()
    ndjson(
        folder / "day1.ndjson", [{"id": i, "at": f"2024-05-01 12:00:{i:02d}"} for i in range(10)]
    )
    lake = tmp_path / "lake"
    spec = {
        "name": spec_name,
        "home": {"type": "json", "path": str(folder), "on_bad_line": "skip"},
        "store": {"type": "parquet", "path": str(lake)},
        "entities": [{"name": "events", "path": "*.ndjson"}],
    }
    assert run_flow(spec).is_completed()
    assert read_lake(lake, "events")["id"].to_list() == list(range(10))
    ndjson(folder / "day2.ndjson", [{"id": 10, "at": "2024-05-01 12:01:00"}], extra="oops\n")
    state = run_flow(spec)
    assert state.is_completed()
    assert sorted(read_lake(lake, "events")["id"].to_list()) == list(range(11))
    assert "1 line that is not a JSON object skipped" in summary_row(state, "events")["detail"]

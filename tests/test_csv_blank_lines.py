"""Blank lines in CSV files are skipped and counted, never read as rows (issue 21).

Real files on disk, read by `CsvHome` and moved by the engine into a real Parquet lake.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from blocks import CsvHome, ParquetStore
from blocks.base import ReadRequest
from blocks.homes._csv_blank import copy_without_blank_lines, might_have_blank_lines
from flows.summary import SummaryRow, render
from hygge_tasks.entity import EntityPlan
from hygge_tasks.move import move
from tests.conftest import read_lake


def read_all(home: CsvHome, path: Path) -> tuple[pl.DataFrame, str | None]:
    """Every row the Home reads, and the note its read returns."""
    batches: list[pa.RecordBatch] = []
    reader: Iterator[pa.RecordBatch] = home.read(ReadRequest(entity="e", path=str(path)))
    while True:
        try:
            batches.append(next(reader))
        except StopIteration as stop:
            note = stop.value
            break
    table = pa.Table.from_batches(batches)
    return pl.from_arrow(table), note  # type: ignore[return-value]


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_csv_blank_lines_inside_and_at_the_end_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "id,name\n1,x\n\n2,y\n\n")
    df, note = read_all(CsvHome(), path)
    assert df.to_dicts() == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    assert note == f"skipped 2 blank line(s) in {str(path)!r}"


def test_csv_blank_lines_with_crlf_and_before_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "\r\nid,name\r\n1,x\r\n\r\n\r\n2,y\r\n")
    df, note = read_all(CsvHome(), path)
    assert df.to_dicts() == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    assert note is not None and note.startswith("skipped 3 blank line(s)")


def test_csv_a_blank_line_inside_a_quoted_field_is_data(tmp_path: Path) -> None:
    text = 'id,text\n1,"first\n\nthird ""quoted""\n"\n\n2,plain\n'
    path = write(tmp_path, "q.csv", text)
    df, note = read_all(CsvHome(), path)
    assert df.to_dicts() == [
        {"id": 1, "text": 'first\n\nthird "quoted"\n'},
        {"id": 2, "text": "plain"},
    ]
    assert note is not None and note.startswith("skipped 1 blank line(s)")


def test_csv_only_quoted_blank_lines_leave_the_file_as_it_is(tmp_path: Path) -> None:
    path = write(tmp_path, "q.csv", 'id,text\n1,"a\n\nb"\n')
    assert might_have_blank_lines(path)
    assert copy_without_blank_lines(path, tmp_path / "copy.csv", '"') == 0
    df, note = read_all(CsvHome(), path)
    assert df.to_dicts() == [{"id": 1, "text": "a\n\nb"}]
    assert note is None


def test_csv_a_row_of_empty_fields_is_a_row_not_a_blank_line(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "id,name\n1,x\n,\n2,y\n")
    df, note = read_all(CsvHome(), path)
    assert df.height == 3
    assert df.row(1) == (None, None)
    assert note is None


def test_csv_without_quoting_every_blank_line_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", "id;v\n1;a\n\n2;b\n")
    df, note = read_all(CsvHome(delimiter=";", quote_char=None), path)
    assert df.to_dicts() == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    assert note is not None and note.startswith("skipped 1 blank line(s)")


def test_csv_blank_lines_in_a_headerless_latin1_file_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes("\n1,caf\xe9\n\n2,na\xefve\n\n".encode("latin-1"))
    df, note = read_all(CsvHome(has_header=False, encoding="latin-1"), path)
    assert df.to_dicts() == [
        {"column_1": 1, "column_2": "café"},
        {"column_1": 2, "column_2": "naïve"},
    ]
    assert note is not None and note.startswith("skipped 3 blank line(s)")


def test_csv_blank_lines_across_files_are_counted_together(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    write(folder, "1.csv", "id\n1\n\n")
    write(folder, "2.csv", "id\n2\n")
    write(folder, "3.csv", "id\n\n3\n\n\n")
    df, note = read_all(CsvHome(), folder)
    assert sorted(df["id"].to_list()) == [1, 2, 3]
    assert note == "skipped 4 blank line(s) in 3 CSV files"


def test_csv_blank_lines_are_reported_in_the_result_and_the_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    src = write(tmp_path, "orders.csv", "id,amount\n1,2.5\n\n2,3.5\n3,4.5\n\n\n")
    lake = tmp_path / "lake"
    plan = EntityPlan(
        name="orders", request=ReadRequest(entity="orders", path=str(src)), mode="replace"
    )
    logger = logging.getLogger("test-csv-blank")
    result = move(plan, CsvHome(), ParquetStore(path=str(lake)), "run1", logger)
    assert result.rows == 3
    assert result.home_note == f"skipped 3 blank line(s) in {str(src)!r}"
    got = read_lake(lake, "orders").sort("id")
    assert got["id"].to_list() == [1, 2, 3]
    assert got["amount"].to_list() == [2.5, 3.5, 4.5]
    row = SummaryRow.ok(result)
    assert row.detail.endswith(f"; skipped 3 blank line(s) in {str(src)!r}")
    assert f"  orders: {row.detail}" in render([row]).splitlines()
    logged = [r.getMessage() for r in caplog.records]
    assert f"orders: skipped 3 blank line(s) in {str(src)!r}" in logged

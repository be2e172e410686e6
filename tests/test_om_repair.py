"""`hygge status --repair`: a file Fabric rejected is sent again under exactly its own name.

What is faked: Fabric. The tests write its monitor (`Files/Monitoring/tables.json`) on a real
Azurite in the shape Fabric reports a rejected table, and where a test needs a file that
strays from the landing-zone contract it rewrites one hygge published, as a damaged upload or
an earlier writer would have left it. Finding the file, checking it against the manifests,
conforming it and re-uploading it run for real.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from blocks.stores._blob import BlobArea
from blocks.stores._om_contract import partner_events_findings, table_findings
from flows.cli import main
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import events_rows
from tests.test_om_verdict import entry, mirrored, write_monitor
from tests.test_open_mirroring import LZ, data_files, read

__all__ = ["mirrored"]  # the fixture, shared with the verdict tests

SECOND = "00000000000000000002.parquet"


def published_twice(c: Any, spec: dict[str, Any], tmp_path: Path) -> Path:
    """A first load (file 1) and an incremental run of 40 upserts (file 2); the spec file."""
    spec["store"]["verify_seconds"] = 0
    assert run_flow(spec).is_completed()
    make_events_db(Path(spec["home"]["path"]), events_rows(300, 40))
    assert run_flow(spec).is_completed()
    assert data_files(c, "events") == ["00000000000000000001.parquet", SECOND]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def rejected(c: Any, name: str = SECOND) -> None:
    message = f"Failed to process file {name}: schema mismatch"
    write_monitor(c, entry("Error", 300, errorCode="FileProcessingError", errorMessage=message))


def replace_file(c: Any, table: pa.Table, name: str = SECOND) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    c.upload_blob(f"{LZ}/events/{name}", sink.getvalue(), overwrite=True)


def repair(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", "--spec", str(path), "--repair", *extra])
    return code, capsys.readouterr().out


def test_a_file_fabric_rejected_is_conformed_and_resent_under_its_own_name(
    mirrored: tuple[Any, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, spec = mirrored
    path = published_twice(c, spec, tmp_path)
    sent = read(c, "events", SECOND)
    before = ledger_of(spec)["events"]
    # the file as a damaged writer left it: the marker first, amounts as floats
    stray = sent.select(["__rowMarker__", *sent.column_names[:-1]])
    at = stray.column_names.index("amount")
    stray = stray.set_column(at, "amount", pc.cast(stray.column("amount"), pa.float64()))
    replace_file(c, stray)
    landing = BlobArea(c, LZ)
    assert [f.file for f in table_findings(landing, "events")] == [SECOND, SECOND]
    rejected(c)
    code, out = repair(path, capsys)
    assert code == 0, out
    assert f"events: {SECOND} re-uploaded under its own name (40 rows of run" in out
    assert "conformed to the table" in out
    # the same batch, in the table's shape, under the same name; nothing renumbered or added
    assert data_files(c, "events") == ["00000000000000000001.parquet", SECOND]
    assert read(c, "events", SECOND).equals(sent)
    assert table_findings(landing, "events") == []
    assert ledger_of(spec)["events"] == before  # the data already counted: no watermark move


def test_a_rejection_on_fabrics_side_resends_the_same_bytes(
    mirrored: tuple[Any, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, spec = mirrored
    path = published_twice(c, spec, tmp_path)
    blob = c.get_blob_client(f"{LZ}/events/{SECOND}")
    first = blob.get_blob_properties()
    sent = read(c, "events", SECOND)
    rejected(c)
    code, out = repair(path, capsys)
    assert code == 0, out
    assert "its bytes re-sent" in out
    again = blob.get_blob_properties()
    assert again.etag != first.etag  # a new commit under the same name: Fabric reads it again
    assert read(c, "events", SECOND).equals(sent)
    # a healthy table is left alone
    write_monitor(c, entry("Running", 340))
    code, out = repair(path, capsys)
    assert (code, out.strip()) == (
        0,
        "events: nothing to repair (Fabric: Running (340 rows processed))",
    )


def test_a_repair_never_changes_a_value_nor_replaces_what_hygge_did_not_send(
    mirrored: tuple[Any, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, spec = mirrored
    path = published_twice(c, spec, tmp_path)
    sent = read(c, "events", SECOND)
    # amounts with a third decimal cannot go back into the table's decimal(10, 2)
    lossy = sent.set_column(
        2, "amount", pc.add(pc.cast(sent.column("amount"), pa.float64()), 0.001)
    )
    replace_file(c, lossy)
    rejected(c)
    code, out = repair(path, capsys)
    assert code == 1
    assert f"events: not repaired: {SECOND} column 'amount' is double" in out
    assert "the cast would change values" in out and "--full-drop" in out
    assert read(c, "events", SECOND).equals(lossy)  # left as it was
    # a file another tool put there is not hygge's batch: not replaced
    replace_file(c, sent, "00000000000000000003.parquet")
    code, out = repair(path, capsys, "--entity", "events", "--file", "3")
    assert code == 1
    assert "no kept manifest of this table names 00000000000000000003.parquet" in out
    # a file that lost rows is not the batch that was sent either
    replace_file(c, sent.slice(0, 10))
    code, out = repair(path, capsys, "--entity", "events", "--file", SECOND)
    assert code == 1
    assert f"{SECOND} holds 10 rows but run" in out and "published 40 in it" in out


def test_what_hygge_publishes_keeps_the_contract_file_by_file(
    mirrored: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    c, spec = mirrored
    spec["entities"][0]["deletes"] = "detect"
    published_twice(c, spec, tmp_path)
    con = sqlite3.connect(spec["home"]["path"])
    con.execute("DELETE FROM events WHERE id < 5")
    con.commit()
    con.close()
    make_events_db(Path(spec["home"]["path"]), events_rows(340, 3))
    assert run_flow(spec).is_completed()
    landing = BlobArea(c, LZ)
    names = data_files(c, "events")
    assert names == [f"{n:020d}.parquet" for n in range(1, len(names) + 1)]
    assert len(names) == 4  # the first load, the 40 upserts, the 3 upserts, the 5 deletes
    assert table_findings(landing, "events") == []
    assert partner_events_findings(landing) == []
    assert "__rowMarker__" not in read(c, "events", names[0]).column_names  # inserts only
    last = read(c, "events", names[-1])
    assert last.column_names[-1] == "__rowMarker__"
    assert set(last.column("__rowMarker__").to_pylist()) == {2}
    assert sorted(last.column("id").to_pylist()) == [0, 1, 2, 3, 4]

"""`file_detection: last_update_time`: Fabric's LastUpdateTimeFileDetection, for a landing zone
other producers also write to. Unique, never reused names; Fabric applies them in LastModified
order, so no two of a run's files may share a LastModified second.

What is faked: Fabric, which would consume the files; where a test needs a file Fabric has
consumed, it deletes it, as Fabric does. Everything else runs on a real Azurite.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from blocks.stores._blob import BlobArea
from blocks.stores._om_contract import table_findings
from tests.azurite import Azurite
from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import events_rows, failed_row
from tests.test_open_mirroring import LZ, om_spec, read

LUT = "LastUpdateTimeFileDetection"


def in_fabrics_order(c: Any) -> list[tuple[str, Any]]:
    """The table's data files as Fabric orders them: by LastModified."""
    blobs = [
        b for b in c.list_blobs(name_starts_with=f"{LZ}/events/") if b.name.endswith(".parquet")
    ]
    return sorted((b.last_modified, b.name.rsplit("/", 1)[1]) for b in blobs)


def replay(c: Any, names: list[str]) -> dict[int, str]:
    """A small reference applier: markers in file order (no marker: inserts)."""
    rows: dict[int, str] = {}
    for name in names:
        t = read(c, "events", name).to_pylist()
        for r in t:
            if r.get("__rowMarker__") == 2:
                rows.pop(r["id"], None)
            else:
                rows[r["id"]] = r["label"]
    return rows


def source(db: Path) -> dict[int, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT id, label FROM events").fetchall())
    finally:
        con.close()


@pytest.fixture
def lut(azurite: Azurite, tmp_path: Path, spec_name: str) -> tuple[Any, dict[str, Any], Path]:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 250))
    spec = om_spec(
        spec_name, db, azurite, ws, file_detection="last_update_time", max_rows_per_file=100
    )
    spec["defaults"]["batch_size"] = 50
    spec["entities"][0]["deletes"] = "detect"
    return azurite.container(ws), spec, db


def test_files_are_unique_and_ordered_by_last_modified_beside_another_producer(
    lut: tuple[Any, dict[str, Any], Path],
) -> None:
    c, spec, db = lut
    assert run_flow(spec).is_completed()
    first = in_fabrics_order(c)
    assert [n.rsplit("-", 1)[1] for _, n in first] == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]
    meta = c.download_blob(f"{LZ}/events/_metadata.json").readall()
    assert meta == b'{"keyColumns": ["id"], "fileDetectionStrategy": "LastUpdateTimeFileDetection"}'
    # another producer drops a file of its own (valid, no rows) into the same table folder
    empty = read(c, "events", first[0][1]).slice(0, 0)
    sink = io.BytesIO()
    pq.write_table(empty, sink)
    c.upload_blob(f"{LZ}/events/other-producer-0001.parquet", sink.getvalue())
    make_events_db(db, events_rows(250, 30))
    con = sqlite3.connect(db)
    con.execute("DELETE FROM events WHERE id < 5")
    con.commit()
    con.close()
    assert run_flow(spec).is_completed()
    files = in_fabrics_order(c)
    names = [n for _, n in files]
    assert len(names) == len(set(names))
    stamps = [t for t, _ in files]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # no tie, ever
    assert table_findings(BlobArea(c, LZ), "events") == []
    assert names[3] == "other-producer-0001.parquet"  # hygge's next files came after it
    assert len(names) == 6  # 3 first-load files, the other producer's, 30 upserts, 5 deletes
    # Fabric, applying the files in LastModified order, arrives at the source's rows
    assert replay(c, names) == source(db)


def test_a_publish_broken_midway_sends_each_file_once_even_after_fabric_consumed_some(
    lut: tuple[Any, dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, spec, db = lut
    spec["retries"] = 0
    assert run_flow(spec).is_completed()
    make_events_db(db, events_rows(250, 250))
    monkeypatch.setenv("HYGGE_FAULT", "publish.between_files@1:transient")
    assert run_flow(spec).is_failed()
    monkeypatch.delenv("HYGGE_FAULT")
    published = [n for _, n in in_fabrics_order(c)][3:]  # the second run's files
    ids = sorted(r["id"] for n in published for r in read(c, "events", n).to_pylist())
    assert ids == list(range(250, 500))  # the failed run's abort finished publishing them
    # Fabric consumes every file published so far: the folder no longer shows them
    for _, name in in_fabrics_order(c):
        c.delete_blob(f"{LZ}/events/{name}")
    # the rerun's recovery commits the run from its manifest's record of what was sent:
    # nothing is sent again, and the watermark moves past the rows
    state = run_flow(spec)
    assert state.is_completed(), state.message
    assert in_fabrics_order(c) == []
    assert ledger_of(spec)["events"]["watermark"]["value"] == "2024-05-01T12:01:39"


def test_a_table_keeps_how_fabric_finds_its_files(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    ws = azurite.new_container()
    db = make_events_db(tmp_path / "src.db", events_rows(0, 20))
    spec = om_spec(spec_name, db, azurite, ws)
    spec["retries"] = 0
    assert run_flow(spec).is_completed()
    spec["store"]["file_detection"] = "last_update_time"
    make_events_db(db, events_rows(20, 5))
    row = failed_row(run_flow(spec), "events")
    assert "is read with SequentialFileName, but the spec says `file_detection: " in row["detail"]
    assert "run --full-drop to recreate the table" in row["detail"]
    assert run_flow(spec, run_type="full_drop").is_completed()
    c = azurite.container(ws)
    assert LUT.encode() in c.download_blob(f"{LZ}/events/_metadata.json").readall()
    [(_, name)] = in_fabrics_order(c)  # the rebuilt table, under a unique name
    assert name.startswith("part-") and read(c, "events", name).num_rows == 25

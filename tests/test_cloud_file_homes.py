"""File Homes that read from object storage: S3 (moto's server) and Azure Blob (Azurite).

Parquet, CSV and JSON files (one file, a folder, a glob) read through the real flow into a
local Parquet lake, with exact values; `incremental: files` on S3 (a new file, a changed file
under `changed_files: fail|reload`, by ETag); and the errors of a wrong key, a missing bucket
or container and no file matched, which name the entity and the fix and never a secret.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from blocks import CsvHome, ParquetHome
from blocks.base import ReadRequest
from blocks.homes._place import _glob_regex
from hygge_core.errors import HomeError
from tests.azurite import Azurite
from tests.conftest import ledger_of, read_lake, run_flow
from tests.flow_helpers import failed_row, summary_row
from tests.s3_server import S3Server

ROWS = pl.DataFrame(
    {
        "id": [1, 2, 3, 4],
        "label": ["a", "b", "ć", None],
        "amount": [1.5, -2.25, 0.0, 1e10],
    }
)


def encoded(kind: str, df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    if kind == "parquet":
        df.write_parquet(buf)
    elif kind == "csv":
        df.write_csv(buf)
    else:
        df.write_ndjson(buf)
    return buf.getvalue()


class Place:
    """An S3 bucket or an Azurite container the test writes objects into."""

    def __init__(self, home: dict[str, Any], put: Any) -> None:
        self.home = home
        self.put = put


@pytest.fixture
def s3_place(s3_server: S3Server) -> Place:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    home = {"bucket": bucket, "aws_credentials": s3_server.credentials()}
    return Place(home, lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data))


@pytest.fixture
def azure_place(azurite: Azurite) -> Place:
    name = azurite.new_container()
    container = azurite.container(name)
    home = {"container": name, "credentials": {"connection_string": azurite.connection_string}}
    return Place(home, lambda key, data: container.upload_blob(key, data, overwrite=True))


def spec_for(name: str, home: dict[str, Any], lake: Path, *entities: dict[str, Any]) -> dict:
    return {
        "name": name,
        "home": home,
        "store": {"type": "parquet", "path": str(lake)},
        "retry_delay_seconds": 0,
        "entities": list(entities),
    }


def by_id(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(ROWS.columns).sort("id")


@pytest.mark.parametrize("kind", ["parquet", "csv", "json"])
@pytest.mark.parametrize("where", ["s3", "azure"])
def test_files_read_from_object_storage(
    where: str, kind: str, tmp_path: Path, spec_name: str, request: pytest.FixtureRequest
) -> None:
    place: Place = request.getfixturevalue(f"{where}_place")
    ext = "json" if kind == "json" else kind
    first, second = ROWS.head(2), ROWS.tail(2)
    place.put(f"exports/one/data.{ext}", encoded(kind, ROWS))
    place.put(f"exports/many/a.{ext}", encoded(kind, first))
    place.put(f"exports/many/sub/b.{ext}", encoded(kind, second))
    place.put(f"exports/many/_staging.{ext}", encoded(kind, ROWS))  # skipped: starts with `_`
    place.put(f"exports/glob/2024-01.{ext}", encoded(kind, first))
    place.put(f"exports/glob/2024-02.{ext}", encoded(kind, second))
    place.put("exports/glob/notes.txt", b"not data")
    lake = tmp_path / "lake"
    home = {"type": kind, "path": "exports", **place.home}
    spec = spec_for(
        spec_name,
        home,
        lake,
        {"name": "single", "path": f"one/data.{ext}"},
        {"name": "folder", "path": "many"},
        {"name": "glob", "path": f"glob/2024-*.{ext}"},
    )
    state = run_flow(spec)
    assert state.is_completed(), state
    for entity in ("single", "folder", "glob"):
        assert summary_row(state, entity)["rows"] == 4
        got = by_id(read_lake(lake, entity))
        assert got.to_dicts() == ROWS.to_dicts(), entity
    assert read_lake(lake, "single").schema["id"] == pl.Int64


def test_onelake_files_read_through_the_blob_api(
    azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    # OneLake is a Blob endpoint whose container is the workspace: `<item>/Files/<path>`
    workspace = azurite.new_container()
    azurite.container(workspace).upload_blob(
        "Sales.Lakehouse/Files/raw/orders.parquet", encoded("parquet", ROWS)
    )
    home = {
        "type": "parquet",
        "workspace": workspace,
        "item": "Sales.Lakehouse",
        "path": "raw",
        "credentials": {"connection_string": azurite.connection_string},
    }
    lake = tmp_path / "lake"
    state = run_flow(spec_for(spec_name, home, lake, {"name": "orders", "path": "orders.parquet"}))
    assert state.is_completed(), state
    assert by_id(read_lake(lake, "orders")).to_dicts() == ROWS.to_dicts()


def test_new_files_only_on_s3(
    s3_server: S3Server, s3_place: Place, tmp_path: Path, spec_name: str
) -> None:
    lake = tmp_path / "lake"
    home = {"type": "csv", "path": "drops", **s3_place.home}
    entity = {"name": "orders", "path": "*.csv", "incremental": "files"}
    spec = spec_for(spec_name, home, lake, entity)
    s3_place.put("drops/2024-05-01.csv", encoded("csv", ROWS.head(2)))
    assert run_flow(spec).is_completed()
    loaded = ledger_of(spec)["orders"]["files"]["loaded"]
    bucket = s3_place.home["bucket"]
    assert [e[0] for e in loaded] == [f"s3://{bucket}/drops/2024-05-01.csv"]
    assert loaded[0][3].strip('"')  # the object's ETag

    s3_place.put("drops/2024-05-02.csv", encoded("csv", ROWS.tail(2)))
    state = run_flow(spec)
    row = summary_row(state, "orders")
    assert (row["mode"], row["rows"]) == ("append", 2)  # the new object only
    assert sorted(read_lake(lake, "orders")["id"].to_list()) == [1, 2, 3, 4]

    # the same size, other bytes: only the ETag tells
    s3_place.put(
        "drops/2024-05-01.csv", encoded("csv", ROWS.head(2).with_columns(id=pl.Series([7, 8])))
    )
    row = failed_row(run_flow(spec), "orders")
    assert "1 file(s) changed since they were loaded" in row["detail"]
    assert f"s3://{bucket}/drops/2024-05-01.csv" in row["detail"]
    spec["entities"][0]["changed_files"] = "reload"
    state = run_flow(spec)
    assert summary_row(state, "orders")["rows"] == 2
    assert sorted(read_lake(lake, "orders")["id"].to_list()) == [1, 2, 3, 4, 7, 8]


def test_refusals_name_the_entity_and_the_fix(
    s3_server: S3Server, azurite: Azurite, tmp_path: Path, spec_name: str
) -> None:
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="x/a.parquet", Body=encoded("parquet", ROWS))
    wrong = "WRONG-secret-value-1234567890"
    container = azurite.new_container()
    bad_key = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=Zby8")
    azure = {"credentials": {"connection_string": azurite.connection_string}}
    cases = [
        (
            {"bucket": bucket, "aws_credentials": s3_server.credentials(secret=wrong)},
            "x",
            ["refused the credentials", "SignatureDoesNotMatch", "credentials block"],
        ),
        (
            {"bucket": "no-such-bucket", "aws_credentials": s3_server.credentials()},
            "x",
            ["S3 bucket 'no-such-bucket' does not exist", "create it"],
        ),
        (
            {"bucket": bucket, "aws_credentials": s3_server.credentials()},
            "x/*.csv",
            [f"no object matches 's3://{bucket}/x/*.csv'", "check the entity's `path`"],
        ),
        (
            {"bucket": bucket, "aws_credentials": s3_server.credentials()},
            "missing",
            [f"nothing at 's3://{bucket}/missing'", "check the entity's `path`"],
        ),
        (
            {"container": "nocontainer", **azure},
            "x",
            ["container 'nocontainer'", "does not exist"],
        ),
        (
            {"container": container, "credentials": {"connection_string": bad_key}},
            "x",
            ["refused the credentials", "AuthorizationFailure"],
        ),
    ]  # fmt: skip
    for i, (place, path, expected) in enumerate(cases):
        home = {"type": "parquet", **place}
        spec = spec_for(
            f"{spec_name}-{i}", home, tmp_path / "lake", {"name": "orders", "path": path}
        )
        state = run_flow(spec)
        detail = failed_row(state, "orders")["detail"]
        for text in expected:
            assert text in detail, (i, detail)
        shown = json.dumps(state.result(raise_on_failure=False), default=str)
        assert wrong not in detail and wrong not in shown
        assert "Zby8" not in detail and s3_server.secret_key not in detail


def test_a_cloud_parquet_file_is_read_not_copied(s3_place: Place, tmp_path: Path) -> None:
    s3_place.put("t/a.parquet", encoded("parquet", ROWS))
    home = ParquetHome(**s3_place.home)
    request = ReadRequest(entity="t", path="t/a.parquet")
    assert home.copy_sources(request) is None  # the byte copy takes local files only
    assert home.estimate_rows(request) == 4
    home.check(request)  # `hygge check`: the listing and the footer, no rows
    with pytest.raises(HomeError, match=r"nothing at 's3://.*/t/b\.parquet'"):
        home.check(ReadRequest(entity="t", path="t/b.parquet"))
    s3_place.put("t/cut.parquet", encoded("parquet", ROWS)[:-20])  # a truncated upload
    with pytest.raises(HomeError, match=r"'s3://.*/t/cut\.parquet' is not a readable Parquet"):
        home.check(ReadRequest(entity="t", path="t/cut.parquet"))
    # footers are read several at once; the error still names the first bad file in order
    for name in ("a", "d", "e"):
        s3_place.put(f"t/many/{name}.parquet", encoded("parquet", ROWS))
    for name in ("b", "c"):
        s3_place.put(f"t/many/{name}.parquet", encoded("parquet", ROWS)[:-20])
    with pytest.raises(HomeError, match=r"'s3://.*/t/many/b\.parquet' is not a readable Parquet"):
        home.check(ReadRequest(entity="t", path="t/many"))
    assert home.location() == f"parquet path=None bucket={s3_place.home['bucket']}"
    assert ParquetHome(path="./data").location() == "parquet path=data"  # as before


def test_object_globs_match_as_local_globs_do() -> None:
    deep, flat = _glob_regex("in/**/*.csv"), _glob_regex("in/202?-*.csv")
    assert all(deep.fullmatch(k) for k in ("in/a.csv", "in/x/y/b.csv"))
    assert not deep.fullmatch("in/a.json")
    assert flat.fullmatch("in/2024-01.csv") and not flat.fullmatch("in/sub/2024-01.csv")
    assert _glob_regex("in/[!_]*.csv").fullmatch("in/a.csv")
    assert not _glob_regex("in/[!_]*.csv").fullmatch("in/_a.csv")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bucket": "b", "container": "c"}, "`bucket` and `container` name two places"),
        ({"workspace": "w"}, "OneLake needs both `workspace` and `item`"),
        ({"container": "c"}, "an ADLS/Blob container needs `credentials`"),
        ({"path": "x", "aws_credentials": {}}, "`aws_credentials` are for a `bucket`"),
        ({"credentials": {"connection_string": "k"}}, "`credentials` are for a `container`"),
    ],
)
def test_a_home_names_one_place(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CsvHome(**settings)

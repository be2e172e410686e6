"""`deployments/example_s3.yaml` as a user runs it: nightly Parquet exports in a bucket, on a
real S3 server (moto's, on loopback), moved to the local Parquet lake with new-files-only.

What is faked: AWS itself; moto's server speaks the S3 API with signed requests.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.example import ensure_example_data
from tests.s3_server import S3Server
from tests.test_azure_examples import run_spec
from tests.test_cli import source_table


def put(s3: S3Server, bucket: str, key: str, frame: pl.DataFrame) -> None:
    sink = io.BytesIO()
    frame.write_parquet(sink)
    s3.client().put_object(Bucket=bucket, Key=key, Body=sink.getvalue())


def lake(root: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(sorted((root / table).glob("*.parquet")))


@pytest.mark.slow
def test_example_s3_loads_each_nightly_part_once(
    s3_server: S3Server, tmp_path: Path, prefect_server: str
) -> None:
    db = ensure_example_data(tmp_path / "example_data" / "shop.sqlite", orders=3000)
    orders = source_table(db, "orders").sort("order_id")
    bucket = s3_server.new_bucket()
    put(s3_server, bucket, "shop/orders/day-1.parquet", orders.slice(0, 1000))
    put(s3_server, bucket, "shop/orders/day-2.parquet", orders.slice(1000, 1000))
    for table in ("customers", "products"):
        put(s3_server, bucket, f"shop/{table}.parquet", source_table(db, table))
    creds: dict[str, Any] = s3_server.credentials()
    env = {
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_REGION": creds["region_name"],
        "HYGGE_S3_BUCKET": bucket,
        "HYGGE_S3_ENDPOINT": s3_server.endpoint,
        "HYGGE_LAKE": str(tmp_path / "lake"),
    }
    done = run_spec("example_s3.yaml", env, prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    got = lake(tmp_path / "lake", "orders").sort("order_id")
    assert got.equals(orders.slice(0, 2000))
    for table in ("customers", "products"):
        assert lake(tmp_path / "lake", table).equals(source_table(db, table)), table
    # the next night's part: only it moves
    put(s3_server, bucket, "shop/orders/day-3.parquet", orders.slice(2000, 1000))
    done = run_spec("example_s3.yaml", env, prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    got = lake(tmp_path / "lake", "orders").sort("order_id")
    assert got.equals(orders)  # every order once: day 1 and 2 were not loaded again

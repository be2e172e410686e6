"""`deployments/example_mysql.yaml` as a user runs it: the example shop in a real MariaDB
(Debian's server, started on loopback by the tests), moved to Delta tables, then a day of
changes (updates, deletes, new orders) followed exactly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest

from flows.example import ensure_example_data
from tests.mariadb_server import MariaServer
from tests.test_azure_examples import KEYS, run_spec

DDL = [
    "CREATE TABLE customers (customer_id INT PRIMARY KEY, name TEXT NOT NULL, email TEXT,"
    " country TEXT, created_at DATETIME NOT NULL)",
    "CREATE TABLE products (product_id INT PRIMARY KEY, title TEXT NOT NULL,"
    " price DECIMAL(10,2) NOT NULL, active BOOLEAN NOT NULL)",
    "CREATE TABLE orders (order_id INT PRIMARY KEY, customer_id INT NOT NULL,"
    " status TEXT NOT NULL, amount DECIMAL(12,2) NOT NULL, discount DOUBLE, note TEXT,"
    " order_date DATE NOT NULL, updated_at DATETIME NOT NULL, KEY (updated_at))",
    "CREATE TABLE order_lines (order_id INT NOT NULL, line_no INT NOT NULL,"
    " product_id INT NOT NULL, quantity INT NOT NULL, updated_at DATETIME NOT NULL,"
    " PRIMARY KEY (order_id, line_no), KEY (updated_at))",
]


def copy_shop(db: Path, server: MariaServer, database: str) -> None:
    src = sqlite3.connect(db)
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:
            for ddl in DDL:
                cur.execute(ddl)
            for table in KEYS:
                rows = src.execute(f"SELECT * FROM {table}").fetchall()
                marks = ", ".join(["%s"] * len(rows[0]))
                cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        conn.commit()
    finally:
        conn.close()
        src.close()


def assert_follows(server: MariaServer, database: str, lake: Path) -> None:
    for table, keys in KEYS.items():
        cols = ", ".join(keys)
        want = server.query(f"SELECT {cols} FROM {table} ORDER BY {cols}", database)
        got = pl.read_delta(str(lake / table)).sort(keys).select(keys).rows()
        assert got == [tuple(r) for r in want], table
    amounts = server.query("SELECT order_id, amount FROM orders ORDER BY order_id", database)
    got = pl.read_delta(str(lake / "orders")).sort("order_id")
    assert list(zip(got["order_id"], got["amount"], strict=True)) == [tuple(r) for r in amounts]


@pytest.mark.slow
def test_example_mysql_follows_the_shop_into_delta(
    mariadb: MariaServer, maria_db: str, tmp_path: Path, prefect_server: str
) -> None:
    db = ensure_example_data(tmp_path / "example_data" / "shop.sqlite", orders=2000)
    copy_shop(db, mariadb, maria_db)
    lake = tmp_path / "delta_lake"
    env = {
        "HYGGE_MYSQL_HOST": mariadb.host,
        "HYGGE_MYSQL_PORT": str(mariadb.port),
        "HYGGE_MYSQL_DATABASE": maria_db,
        "HYGGE_MYSQL_USER": mariadb.user,
        "HYGGE_MYSQL_PASSWORD": mariadb.password,
        "HYGGE_DELTA_LAKE": str(lake),
    }
    done = run_spec("example_mysql.yaml", env, prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_follows(mariadb, maria_db, lake)
    # a day at the shop: an order changes, one is cancelled with its lines, one is new
    mariadb.execute(
        "UPDATE orders SET amount = amount + 1, updated_at = '2030-01-01 00:00:00'"
        " WHERE order_id = 10",
        "DELETE FROM order_lines WHERE order_id = 11",
        "DELETE FROM orders WHERE order_id = 11",
        "INSERT INTO orders VALUES (99999, 1, 'new', 5.25, NULL, NULL, '2030-01-01',"
        " '2030-01-01 00:00:00')",
        database=maria_db,
    )
    done = run_spec("example_mysql.yaml", env, prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_follows(mariadb, maria_db, lake)
    assert "deleted (gone from the source)" in done.stdout

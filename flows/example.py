"""The bundled example's source: a deterministic sample shop database in SQLite.

Four tables with the shapes real sources have: timestamps with many ties (second
granularity), decimals, NULLs, unicode text. `orders` has 1,000,000 rows. Values are
derived arithmetically from the row number, so every machine builds the same database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import polars as pl

ORDERS = 1_000_000
CUSTOMERS = 50_000
PRODUCTS = 500
LINES = 300_000
#: where `python -m flows.run`, run from the checkout root, and the `shop-example` deployment
#: keep the sample database: an absolute path, the same from any working directory
#: the checkout this code runs from, and the bundled example's specs in it (a run of either
#: creates the sample database when it is missing)
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = REPO / "deployments" / "example.yaml"
EXAMPLE_SPECS = (EXAMPLE_SPEC, REPO / "deployments" / "example_blocks.yaml")
CHECKOUT_DATABASE = REPO / "example_data" / "shop.sqlite"

_DDL = """
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    country TEXT,
    created_at DATETIME NOT NULL
);
CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    price DECIMAL(10,2) NOT NULL,
    active BOOLEAN NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    amount DECIMAL(12,2) NOT NULL,
    discount REAL,
    note TEXT,
    order_date DATE NOT NULL,
    updated_at DATETIME NOT NULL
);
CREATE TABLE order_lines (
    order_id INTEGER NOT NULL,
    line_no INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX orders_updated_at ON orders(updated_at);
CREATE INDEX order_lines_updated_at ON order_lines(updated_at);
"""

_NAMES = ["Søren", "Åsa", "Zoë", "José", "Łukasz", "Nguyễn", "山田", "Мария", "Ana", "Björk"]
_COUNTRIES = ["DK", "SE", "NO", "DE", "PL", "VN", "JP", "UA", "PT", "IS"]
_STATUS = ["new", "paid", "shipped", "delivered", "returned"]
_NOTES = ["gift wrap ✨", "leave at door", "fragile — handle with care", "ring twice", "café order"]


def _cents(cents: pl.Expr) -> pl.Expr:
    """A whole number of cents as its decimal text, `2567.49`, for a DECIMAL(p,2) column.

    SQLite stores the text as the double nearest to it, which reads back exactly; a float
    division in Polars can land one double off (2567.4900000000002), which is no DECIMAL(p,2).
    """
    return (cents // 100).cast(pl.String) + pl.lit(".") + (cents % 100).cast(pl.String).str.zfill(2)


#: `PRAGMA user_version` of the example database this hygge builds. An older one (0: built
#: before the amounts were written as exact decimals, which exact reads now refuse) is rebuilt.
EXAMPLE_VERSION = 2


def example_dir() -> Path:
    return Path(os.environ.get("HYGGE_EXAMPLE_DIR", "example_data"))


def ensure_example_data(path: Path | None = None, orders: int = ORDERS) -> Path:
    """Create the sample database unless it exists (and is current); return its path."""
    db = path or example_dir() / "shop.sqlite"
    if db.exists():
        if _version(db) >= EXAMPLE_VERSION:
            return db
        print(
            f"hygge: the example database {db} was built by an earlier hygge (its amounts are "
            "not exact decimals); building it anew",
            flush=True,
        )
    db.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two first runs at once each build a copy and the last one wins
    tmp = db.with_name(f".{db.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    print(f"hygge: creating the example database {db} ({orders:,} orders) ...", flush=True)
    try:
        write_example(tmp, orders)
        tmp.replace(db)
    finally:
        tmp.unlink(missing_ok=True)
    return db


def _version(db: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(db)) as con:
            return int(con.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error:
        return EXAMPLE_VERSION  # unreadable: the run says why, this does not replace it


def _pick(values: list[str], index: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(values)).gather(index % len(values))


def _ts(seconds: pl.Expr) -> pl.Expr:
    # second granularity and few distinct values: real sources have many ties
    base = pl.datetime(2024, 1, 1)
    return (base + pl.duration(seconds=seconds)).dt.strftime("%Y-%m-%d %H:%M:%S")


def example_frames(orders: int = ORDERS) -> dict[str, pl.DataFrame]:
    """The example tables as frames (text timestamps, as SQLite stores them)."""
    customers = pl.DataFrame({"n": range(CUSTOMERS)}).select(
        customer_id=pl.col("n") + 1,
        name=_pick(_NAMES, pl.col("n")) + pl.lit(" #") + pl.col("n").cast(pl.String),
        email=pl.when(pl.col("n") % 7 == 0)
        .then(None)
        .otherwise(pl.lit("c") + pl.col("n").cast(pl.String) + pl.lit("@example.com")),
        country=_pick(_COUNTRIES, pl.col("n") * 7),
        created_at=_ts(pl.col("n") * 300),
    )
    products = pl.DataFrame({"n": range(PRODUCTS)}).select(
        product_id=pl.col("n") + 1,
        title=pl.lit("Product ")
        + pl.col("n").cast(pl.String)
        + pl.lit(" - ")
        + _pick(_NAMES, pl.col("n")),
        price=_cents((pl.col("n") * 7919) % 100_000 + 99),
        active=(pl.col("n") % 5 != 0).cast(pl.Int64),
    )
    order_frame = pl.DataFrame({"n": range(orders)}).select(
        order_id=pl.col("n") + 1,
        customer_id=(pl.col("n") * 48271) % CUSTOMERS + 1,
        status=_pick(_STATUS, pl.col("n") * 31),
        amount=_cents((pl.col("n") * 104729) % 1_000_000 + 1),
        discount=pl.when(pl.col("n") % 4 == 0).then(None).otherwise((pl.col("n") % 30) / 100),
        note=pl.when(pl.col("n") % 3 == 0).then(_pick(_NOTES, pl.col("n"))).otherwise(None),
        order_date=(pl.date(2024, 1, 1) + pl.duration(days=pl.col("n") // 3000)).dt.strftime(
            "%Y-%m-%d"
        ),
        # ten orders share each second: the watermark boundary is full of ties
        updated_at=_ts(pl.col("n") // 10),
    )
    lines = pl.DataFrame({"n": range(LINES)}).select(
        order_id=pl.col("n") // 3 + 1,
        line_no=pl.col("n") % 3 + 1,
        product_id=(pl.col("n") * 7) % PRODUCTS + 1,
        quantity=pl.col("n") % 9 + 1,
        updated_at=_ts(pl.col("n") // 30),
    )
    return {
        "customers": customers,
        "products": products,
        "orders": order_frame,
        "order_lines": lines,
    }


def write_example(path: Path, orders: int = ORDERS) -> None:
    """Write the example database to `path` (which must not exist)."""
    import adbc_driver_sqlite.dbapi as adbc

    with contextlib.closing(sqlite3.connect(path)) as con:
        con.executescript(_DDL)
        con.execute(f"PRAGMA user_version = {EXAMPLE_VERSION}")
        con.commit()
    frames = example_frames(orders)
    with adbc.connect(str(path)) as conn:
        cur = conn.cursor()
        for table, frame in frames.items():
            cur.adbc_ingest(table, frame.to_arrow(), mode="append")
        conn.commit()

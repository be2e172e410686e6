"""The benchmark's source data: a deterministic orders-like table in every format a Home reads.

Eleven columns derived arithmetically from the row number (so every machine builds the same
bytes): int64 id, two int32s, float64, decimal(12,2), a short and a ~30-character string, a
timestamp, a date, a bool and a float64 with 10% NULLs. `write_sources` writes it once per size
as one Parquet file, a directory of ten Parquet parts, a CSV file and a SQLite database, and
reuses what is already there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl

_STATUS = ["new", "paid", "shipped", "delivered", "returned"]
_WORDS = ["gift wrap", "leave at door", "fragile, handle with care", "ring twice", "café order"]

# SqliteHome maps these declared types onto Arrow types (blocks/homes/sqlite.py)
_SQLITE_DDL = """
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,
    amount DECIMAL(12,2) NOT NULL,
    status TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at DATETIME NOT NULL,
    order_date DATE NOT NULL,
    is_paid BOOLEAN NOT NULL,
    discount REAL
)
"""

PARTS = 10


def _pick(values: list[str], index: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(values)).gather(index % len(values))


def orders(start: int, count: int) -> pl.DataFrame:
    """Rows `start` .. `start + count - 1` of the table; the same on every machine."""
    n = pl.col("n")
    return pl.DataFrame({"n": pl.int_range(start, start + count, eager=True)}).select(
        id=n + 1,
        customer_id=((n * 48271) % 100_000 + 1).cast(pl.Int32),
        quantity=(n % 9 + 1).cast(pl.Int32),
        unit_price=((n * 7919) % 100_000 + 99).cast(pl.Float64) / 100,
        amount=(((n * 104729) % 1_000_000 + 1).cast(pl.Float64) / 100).cast(pl.Decimal(12, 2)),
        status=_pick(_STATUS, n * 31),
        # ~30 characters, many distinct values
        comment=_pick(_WORDS, n) + pl.lit(" #") + (n * 2654435761 % 10**12).cast(pl.String),
        created_at=pl.datetime(2024, 1, 1) + pl.duration(seconds=n * 3),
        order_date=pl.date(2024, 1, 1) + pl.duration(days=n // 3000),
        is_paid=n % 3 != 0,
        discount=pl.when(n % 10 == 0).then(None).otherwise((n % 30).cast(pl.Float64) / 100),
    )


def chunks(rows: int, size: int = 1_000_000) -> list[tuple[int, int]]:
    return [(s, min(size, rows - s)) for s in range(0, rows, size)]


def write_parquet(work: Path, rows: int) -> Path:
    """Write (once) the table as one Parquet file under `work`; its path."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "orders.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        frames = [orders(s, c).lazy() for s, c in chunks(rows)]
        pl.concat(frames).sink_parquet(tmp, compression="zstd", row_group_size=100_000)
        tmp.replace(path)
    return path


def write_parts(work: Path, rows: int, parts: int = PARTS) -> Path:
    """Write (once) the table as `parts` Parquet files under `work/orders_parts`; the directory.

    Built from the rows themselves rather than sliced from `orders.parquet`, so the largest
    sizes (100M rows, ~5 GB) need no single file beside the parts.
    """
    work.mkdir(parents=True, exist_ok=True)
    path = work / "orders_parts"
    if not path.exists():
        tmp_dir = path.with_suffix(".tmp")
        tmp_dir.mkdir(exist_ok=True)
        per = -(-rows // parts)
        for i in range(parts):
            start = i * per
            if start >= rows:
                break
            count = min(per, rows - start)
            frames = [orders(start + s, c).lazy() for s, c in chunks(count)]
            out = tmp_dir / f"part-{i:05d}.parquet"
            pl.concat(frames).sink_parquet(out, compression="zstd", row_group_size=100_000)
        tmp_dir.replace(path)
    return path


def write_csv(work: Path, rows: int) -> Path:
    """Write (once) the table as one CSV file under `work`, from its parts; its path."""
    path = work / "orders.csv"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        pl.scan_parquet(write_parts(work, rows) / "*.parquet").sink_csv(tmp)
        tmp.replace(path)
    return path


def write_sqlite(work: Path, rows: int) -> Path:
    """Write (once) the table as a SQLite database under `work`; its path."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "orders.sqlite"
    if not path.exists():
        _write_sqlite(path, rows)
    return path


def write_sources(work: Path, rows: int) -> dict[str, Path]:
    """Write (once) the table as Parquet, Parquet parts, CSV and SQLite under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {
        "parquet": work / "orders.parquet",
        "parts": work / "orders_parts",
        "csv": work / "orders.csv",
        "sqlite": work / "orders.sqlite",
    }
    write_parquet(work, rows)
    if not paths["parts"].exists():
        tmp_dir = paths["parts"].with_suffix(".tmp")
        tmp_dir.mkdir(exist_ok=True)
        per = -(-rows // PARTS)
        for i in range(PARTS):
            start = i * per
            if start >= rows:
                break
            part = pl.scan_parquet(paths["parquet"]).slice(start, min(per, rows - start))
            part.sink_parquet(tmp_dir / f"part-{i:05d}.parquet", compression="zstd")
        tmp_dir.replace(paths["parts"])
    if not paths["csv"].exists():
        tmp = paths["csv"].with_suffix(".tmp")
        pl.scan_parquet(paths["parquet"]).sink_csv(tmp)
        tmp.replace(paths["csv"])
    if not paths["sqlite"].exists():
        _write_sqlite(paths["sqlite"], rows)
    return paths


def _write_sqlite(path: Path, rows: int) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as con:
        con.executescript(_SQLITE_DDL)
    with adbc.connect(str(tmp)) as conn:
        cur = conn.cursor()
        for start, count in chunks(rows):
            # SQLite keeps timestamps and dates as text, decimals as REAL, booleans as 0/1
            frame = orders(start, count).with_columns(
                amount=pl.col("amount").cast(pl.Float64),
                created_at=pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M:%S"),
                order_date=pl.col("order_date").dt.strftime("%Y-%m-%d"),
                is_paid=pl.col("is_paid").cast(pl.Int64),
            )
            cur.adbc_ingest("orders", frame.to_arrow(), mode="append")
        conn.commit()
    tmp.replace(path)

"""A day of changes to the example shop database: updates, deletes and new orders.

Run it between two runs of an example spec to watch an incremental run carry them over:

    python -m flows.run --spec deployments/example_delta.yaml
    python -m flows.example_changes
    python -m flows.run --spec deployments/example_delta.yaml

Each call is one "day": it updates about 0.1% of the orders and of the order lines (their
`updated_at` moves past every earlier value), deletes about 0.1% of the orders with their
lines, and adds 1,000 orders with 3 lines each. The changes are derived from the day number
(kept in the database), so every machine makes the same ones.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from flows.example import example_dir

NEW_ORDERS = 1_000


@dataclass(frozen=True)
class Changes:
    day: int
    updated_orders: int
    updated_lines: int
    deleted_orders: int
    deleted_lines: int
    new_orders: int

    def describe(self) -> str:
        return (
            f"day {self.day}: {self.updated_orders:,} orders and {self.updated_lines:,} order "
            f"lines updated, {self.deleted_orders:,} orders deleted with their "
            f"{self.deleted_lines:,} lines, {self.new_orders:,} new orders"
        )


def change_example(db: Path) -> Changes:
    """Apply the next day's changes to the example database at `db`."""
    if not db.exists():
        msg = f"no example database at {db}: run `python -m flows.run` once to create it"
        raise FileNotFoundError(msg)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE IF NOT EXISTS _example_days (day INTEGER NOT NULL)")
        day = 1 + (con.execute("SELECT COUNT(*) FROM _example_days").fetchone()[0] or 0)
        # a second after the newest change of either table: every change is past the watermark
        now = "datetime(MAX((SELECT MAX(updated_at) FROM orders), "
        now += "(SELECT MAX(updated_at) FROM order_lines)), '+1 second')"
        stamp = con.execute(f"SELECT {now}").fetchone()[0]
        pick = f"(order_id * 7 + {day}) % 1000"
        updated_orders = con.execute(
            f"UPDATE orders SET status = 'returned', updated_at = ? WHERE {pick} = 0", (stamp,)
        ).rowcount
        updated_lines = con.execute(
            f"UPDATE order_lines SET quantity = quantity + 1, updated_at = ? WHERE {pick} = 1",
            (stamp,),
        ).rowcount
        gone = f"SELECT order_id FROM orders WHERE {pick} = 2"
        deleted_lines = con.execute(f"DELETE FROM order_lines WHERE order_id IN ({gone})").rowcount
        deleted_orders = con.execute(f"DELETE FROM orders WHERE {pick} = 2").rowcount
        # past both tables: the example has lines only for its first orders
        first = con.execute(
            "SELECT MAX((SELECT COALESCE(MAX(order_id), 0) FROM orders), "
            "(SELECT COALESCE(MAX(order_id), 0) FROM order_lines)) + 1"
        ).fetchone()[0]
        ids = range(first, first + NEW_ORDERS)
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, 'new', ?, NULL, NULL, date(?), ?)",
            [(i, i % 50_000 + 1, f"{i % 997}.{i % 100:02d}", stamp, stamp) for i in ids],
        )
        con.executemany(
            "INSERT INTO order_lines VALUES (?, ?, ?, ?, ?)",
            [(i, n, (i * n) % 500 + 1, n, stamp) for i in ids for n in (1, 2, 3)],
        )
        con.execute("INSERT INTO _example_days VALUES (?)", (day,))
        con.commit()
    return Changes(day, updated_orders, updated_lines, deleted_orders, deleted_lines, NEW_ORDERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.example_changes",
        description="Apply a day of updates, deletes and new orders to the example database.",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="the example database (default: $HYGGE_EXAMPLE_DIR/shop.sqlite, or "
        "example_data/shop.sqlite)",
    )
    args = parser.parse_args(argv)
    db = args.db or example_dir() / "shop.sqlite"
    try:
        changes = change_example(db)
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"hygge: {exc}", file=sys.stderr)
        return 1
    print(f"hygge: {db}: {changes.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

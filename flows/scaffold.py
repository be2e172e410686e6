"""`hygge init DIR`: a small project that runs as it is, with its own sample data.

It writes `hygge.yml`, one flow (`flows/shop/flow.yml`) with two entity files, and a small
SQLite database (`data/shop.sqlite`: 200 customers, 500 orders) for the flow to read, so
`hygge run` in the new folder moves data straight away into `lake/`. Every key carries a
comment saying what it does. Values are derived from the row number: every machine builds the
same database.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from pathlib import Path

from flows.project import FLOW_FILE, PROJECT_FILE
from hygge_core.errors import ConfigError

CUSTOMERS = 200
ORDERS = 500
_T0 = dt.datetime(2024, 1, 1, 9, 0, 0)

_PROJECT = """\
# A hygge project. `hygge` commands find this file in the folder they run in or above it.
name: {name}  # names the project; each flow's ledger is named <project>_<flow>
flows_dir: flows  # the folder with one folder per flow (each holding a flow.yml)
options:  # settings for the whole project
  concurrency: 4  # how many entities of a flow move at once (a flow.yml may set its own)
"""

_FLOW = """\
# A flow moves entities (tables, file sets) from one Home to one Store.
# Its entities are the files in entities/, one per entity. Relative paths are relative to
# the folder holding hygge.yml.
home: data/shop.sqlite  # where data comes from: a SQLite file (its type comes from the suffix);
                        # a saved block is written as `sqlite-home/<block name>`
store: lake  # where data lands: a folder of Parquet tables, one folder per entity
run_type: incremental  # entities with a watermark load new rows only; the others reload fully
defaults:  # settings every entity gets unless it sets its own
  batch_size: 10000  # rows read from the Home per batch
  polish:  # last-mile finishing of each batch
    load_timestamp: _loaded_at  # add a column holding the run's load time (UTC)
"""

_ORDERS = """\
# One entity: the `orders` table, written to the Store as lake/orders/.
name: orders  # the entity's name (and its folder in the Store); default: this file's name
table: orders  # the source table (or `query: SELECT ...`); default: the entity's name
watermark:  # load incrementally: each run reads only rows at or after the last value seen
  column: updated_at  # the column that grows as rows are added or changed
  keys: [order_id]  # columns that identify a row, so rows tied on the last value load once
"""

_CUSTOMERS = """\
# One entity: the `customers` table. It has no watermark, so every run reloads it whole.
name: customers  # the entity's name; with no `table:` it is also the source table's name
"""

_DDL = """
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at DATETIME NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    amount DECIMAL(10,2) NOT NULL,
    status TEXT NOT NULL,
    updated_at DATETIME NOT NULL
);
"""
_NAMES = ["Søren", "Åsa", "Zoë", "José", "Mette", "Lars", "Ingrid", "Björk"]
_COUNTRIES = ["DK", "SE", "NO", "IS", "FI"]
_STATUS = ["new", "paid", "shipped", "delivered"]


def scaffold(target: Path) -> list[Path]:
    """Write a new project into `target` (created if missing); the files written, in order.

    Raises:
        ConfigError: `target` already holds a hygge.yml (or another file this would write).
    """
    target = Path(target).resolve()
    flow = target / "flows" / "shop"
    files = {
        target / PROJECT_FILE: _PROJECT.format(name=json.dumps(project_name(target))),
        flow / FLOW_FILE: _FLOW,
        flow / "entities" / "customers.yml": _CUSTOMERS,
        flow / "entities" / "orders.yml": _ORDERS,
    }
    db = target / "data" / "shop.sqlite"
    taken = [p for p in [*files, db] if p.exists()]
    if taken:
        msg = (
            f"{taken[0]} already exists: `hygge init` does not overwrite a project; "
            "choose a new or empty folder"
        )
        raise ConfigError(msg)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    make_sample_db(db)
    return [*files, db]


def project_name(folder: Path) -> str:
    """A project name from a folder name: lowercase letters, digits and `_`."""
    name = re.sub(r"[^a-z0-9_]+", "_", folder.name.lower()).strip("_")
    return name or "my_project"


def make_sample_db(path: Path, orders: int = ORDERS) -> Path:
    """The sample shop: `customers` and `orders` (timestamps tie in fives, as real ones do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(_DDL)
        con.executemany("INSERT INTO customers VALUES (?,?,?,?)", _customers(CUSTOMERS))
        con.executemany("INSERT INTO orders VALUES (?,?,?,?,?)", order_rows(1, orders))
        con.commit()
    finally:
        con.close()
    return path


def _customers(count: int) -> list[tuple[object, ...]]:
    return [
        (
            i,
            f"{_NAMES[i % len(_NAMES)]} {i}",
            _COUNTRIES[i % len(_COUNTRIES)],
            str(_T0 + dt.timedelta(hours=i)),
        )
        for i in range(1, count + 1)
    ]


def order_rows(start: int, count: int) -> list[tuple[object, ...]]:
    """Orders `start` .. `start + count - 1`; five share each `updated_at` second."""
    return [
        (
            i,
            1 + i % CUSTOMERS,
            f"{(i * 37) % 1000}.{i % 100:02d}",
            _STATUS[i % len(_STATUS)],
            str(_T0 + dt.timedelta(seconds=i // 5)),
        )
        for i in range(start, start + count)
    ]

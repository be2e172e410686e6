"""The bundled example's database: built once, and rebuilt when an earlier hygge built it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flows.example import EXAMPLE_VERSION, ensure_example_data


def version_of(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("PRAGMA user_version").fetchone()[0])


def test_a_current_example_is_kept_and_an_older_one_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ensure_example_data(tmp_path / "shop.sqlite", orders=100)
    assert version_of(db) == EXAMPLE_VERSION
    stamp = db.stat().st_mtime_ns
    assert ensure_example_data(db, orders=100) == db
    assert db.stat().st_mtime_ns == stamp  # current: not touched

    with sqlite3.connect(db) as con:  # as an earlier hygge left it: no version, a REAL amount
        con.execute("PRAGMA user_version = 0")
        con.execute("UPDATE orders SET amount = 2567.4900000000002 WHERE order_id = 1")
    capsys.readouterr()
    ensure_example_data(db, orders=100)
    assert "built by an earlier hygge" in capsys.readouterr().out
    assert version_of(db) == EXAMPLE_VERSION
    with sqlite3.connect(db) as con:
        amount, kind = con.execute(
            "SELECT amount, typeof(amount) FROM orders WHERE order_id = 1"
        ).fetchone()
        assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == 100
    assert (repr(amount), kind) != ("2567.4900000000002", "real")
    assert round(amount, 2) == amount  # an exact 2-digit decimal again

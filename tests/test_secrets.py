"""A secret never reaches a message: validation errors of credentials, blocks and specs carry
no input values, through the Python API and through the command line (a canary password)."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from blocks import AdlsStore, PostgresCredentials, PostgresHome, SqlServerCredentials
from flows.spec import parse_spec

CANARY = "Canary-7f3a9c"
DSN = f"postgresql://reader:{CANARY}@db.example/x"


def pg_spec(credentials: dict[str, Any], **home: Any) -> dict[str, Any]:
    return {
        "name": "secrets",
        "home": {"type": "postgres", "database": "x", "credentials": credentials, **home},
        "store": {"type": "parquet", "path": "lake"},
        "entities": [{"name": "t", "table": "t"}],
    }


CASES: dict[str, Callable[[], object]] = {
    "dsn and a password": lambda: PostgresCredentials(dsn=DSN, username="u", password=CANARY),
    "dsn and a host in the spec": lambda: parse_spec(pg_spec({"dsn": DSN}, host="db")),
    "user, password and dsn in the spec": lambda: parse_spec(
        pg_spec({"username": "u", "password": CANARY, "dsn": DSN})
    ),
    "a Home's nested credentials": lambda: PostgresHome(
        host="db", database="x", credentials={"dsn": DSN, "password": CANARY}
    ),
    "SQL Server password and a secret": lambda: SqlServerCredentials(
        username="u", password=CANARY, client_secret=CANARY
    ),
    "a Store's nested credentials": lambda: AdlsStore(
        container="c", credentials={"connection_string": 12, "client_secret": CANARY}
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_validation_error_carries_no_secret(case: str) -> None:
    with pytest.raises(Exception) as err:
        CASES[case]()
    # everything a user or a log could see: the message, the repr and the chained traceback
    shown = "".join(traceback.format_exception(err.value)) + repr(err.value)
    assert CANARY not in shown
    assert "input_value" not in shown


def test_the_command_line_shows_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(pg_spec({"dsn": DSN, "password": CANARY}, host="db")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYGGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(path)],
        capture_output=True,
        text=True,
        env={**env, "HYGGE_LOCAL_SERVER": "0"},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "credentials" in done.stdout + done.stderr  # the error is there, naming the field
    assert CANARY not in done.stdout + done.stderr


def test_a_dsn_password_counts_as_a_secret_on_its_own() -> None:
    uri = PostgresCredentials(dsn=f"postgresql://u:{CANARY}%25zz@[::1/x")
    assert {f"{CANARY}%25zz", f"{CANARY}%zz"} <= set(uri.secrets())
    pairs = PostgresCredentials(dsn=f"host=db user=u password='{CANARY} x' dbname=x")
    assert f"{CANARY} x" in pairs.secrets()


def test_a_driver_error_that_echoes_a_secret_is_chained_without_it() -> None:
    from hygge_core.errors import HomeError, RedactedError, scrubbed

    creds = PostgresCredentials(dsn=f"postgresql://u:{CANARY}@[::1/x")
    echoed = f'invalid percent-encoded token: "{CANARY}"'
    try:
        try:
            raise OSError(echoed)
        except OSError as exc:
            msg = "cannot connect"
            raise HomeError(msg, entity="t") from scrubbed(exc, creds.secrets())
    except HomeError as err:
        shown = "".join(traceback.format_exception(err))
        assert isinstance(err.__cause__, RedactedError)
        assert "OSError: invalid percent-encoded token" in shown
        assert CANARY not in shown
    clean = ValueError("nothing secret here")
    assert scrubbed(clean, creds.secrets()) is clean

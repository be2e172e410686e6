"""MssqlHome's ODBC read path pointed at PostgreSQL through psqlODBC (`tests/test_mssql_home.py`).

Its own module, so the tests that borrow it do not import a test module a second time (which
would register its block classes twice).
"""

from __future__ import annotations

from typing import Any, ClassVar

from blocks import MssqlHome
from blocks.base import ReadRequest
from blocks.homes._sql import POSTGRES, Dialect
from blocks.homes.mssql import Column
from tests.pg_server import PgServer


class PgOdbcHome(MssqlHome):
    """MssqlHome's read path against PostgreSQL via psqlODBC (see the module docstring)."""

    _block_type_slug = "test-pg-odbc-home"
    spec_type = "pg-odbc"
    dialect: ClassVar[Dialect] = POSTGRES

    def connection_string(self) -> str:
        # psqlODBC reads values literally (no `{}`); BoolsAsChar=0 keeps booleans boolean
        assert self.credentials.password is not None
        return (
            f"Driver={{PostgreSQL Unicode}};Server={self.host};Port={self.port};"
            f"Database={self.database};UID={self.credentials.username};"
            f"PWD={self.credentials.password.get_secret_value()};BoolsAsChar=0;"
        )

    def columns(self, opts: Any, base: str, request: ReadRequest) -> list[Column]:
        return self.probe_columns(opts, base, request)


def pg_odbc_home(pg: PgServer, **extra: Any) -> dict[str, Any]:
    return {
        "type": "pg-odbc",
        "host": pg.host,
        "port": pg.port,
        "database": pg.dbname,
        "credentials": {"username": pg.user, "password": pg.password},
        **extra,
    }

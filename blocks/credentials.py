"""Credentials blocks for the SQL Homes: who connects, with which secret.

A Home references a saved credentials block, so rotating a password means editing one block.
Secrets are `SecretStr` (shown as `********` in the UI and CLI); `.get_secret_value()` is only
called while building a connection string, and those strings never reach a log or an error.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, model_validator

from blocks.base import LOGO

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_KV_KEY = re.compile(r"(?:^|\s)([A-Za-z_]+)\s*=")


def libpq_value(value: str) -> str:
    """Quote a libpq keyword/value for a conninfo string: `'...'` with `\\` and `'` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PostgresCredentials(CredentialsBlock):
    """A PostgreSQL login: user name and password, or a full libpq connection string.

    Example:
        ```python
        from blocks import PostgresCredentials
        credentials = PostgresCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "PostgreSQL Credentials"
    _block_type_slug = "hygge-postgres-credentials"
    _logo_url = LOGO
    _documentation_url = "https://www.postgresql.org/docs/current/libpq-connect.html"  # type: ignore[assignment]
    _description = "A PostgreSQL user and password (or a full DSN) for hygge's PostgreSQL Home."

    username: str | None = Field(default=None, description="The user to log in as.")
    password: SecretStr | None = Field(
        default=None, description="The user's password (none for trust or certificate login)."
    )
    dsn: SecretStr | None = Field(
        default=None,
        title="DSN",
        description=(
            "A full libpq connection string or URI; when set, the Home's host, port and "
            "database stay empty."
        ),
    )
    sslmode: SslMode = Field(
        default="prefer",
        title="SSL mode",
        description="libpq `sslmode`: disable, allow, prefer, require, verify-ca or verify-full.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_login(cls, values: Any) -> Any:
        if isinstance(values, dict):
            has_user = values.get("username") not in (None, "")
            has_dsn = values.get("dsn") not in (None, "")
            if has_user == has_dsn:
                msg = "give either `username` (with `password`) or `dsn`, not both or neither"
                raise ValueError(msg)
            if has_dsn and values.get("password") not in (None, ""):
                msg = "`password` goes inside the `dsn` when a DSN is given"
                raise ValueError(msg)
        return values

    def conninfo(
        self,
        host: str | None,
        port: int | None,
        database: str | None,
        options: dict[str, str],
    ) -> str:
        """The libpq connection string (it holds the secret: never log it)."""
        if self.dsn is not None:
            return _extend_dsn(self.dsn.get_secret_value(), {"sslmode": self.sslmode, **options})
        pairs: dict[str, str | None] = {
            "host": host,
            "port": str(port) if port else None,
            "dbname": database,
            "user": self.username,
            "password": self.password.get_secret_value() if self.password else None,
            "sslmode": self.sslmode,
            **options,
        }
        return " ".join(f"{k}={libpq_value(v)}" for k, v in pairs.items() if v is not None)

    def secrets(self) -> list[str]:
        """Secret values, so messages can be scrubbed of them whatever a driver echoes."""
        found = [s.get_secret_value() for s in (self.password, self.dsn) if s is not None]
        return [s for s in found if s]

    def get_client(self, **connect_args: Any) -> Any:
        """An ADBC connection (autocommit); `connect_args` are `conninfo`'s arguments."""
        import adbc_driver_postgresql.dbapi as pg

        return pg.connect(self.conninfo(**connect_args), autocommit=True)


def _extend_dsn(dsn: str, extra: dict[str, str]) -> str:
    """Add settings the DSN does not already make (the user's own choices win)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlsplit(dsn)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        for key, value in extra.items():
            query.setdefault(key, value)
        return urllib.parse.urlunsplit(
            parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote))
        )
    present = {m.group(1).lower() for m in _KV_KEY.finditer(dsn)}
    added = [f"{k}={libpq_value(v)}" for k, v in extra.items() if k.lower() not in present]
    return " ".join([dsn, *added])

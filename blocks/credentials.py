"""Credentials blocks for the SQL Homes (PostgreSQL, MySQL, SQL Server): who connects, how.

A Home references a saved credentials block, so rotating a password means editing one block.
Secrets are `SecretStr` (shown as `********` in the UI and CLI); `.get_secret_value()` is only
called while building a connection string, and those strings never reach a log or an error.
"""

from __future__ import annotations

import re
import struct
import urllib.parse
from functools import partial
from typing import Any, Literal

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, model_validator

from blocks.base import HIDE_INPUT, LOGO
from hygge_core.errors import ConfigError, HomeError

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_KV_KEY = re.compile(r"(?:^|\s)([A-Za-z_]+)\s*=")
#: one `key=value` of a libpq keyword/value DSN (a value may be quoted: 'a b')
_KV_PAIR = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def dsn_passwords(dsn: str) -> list[str]:
    """The password a DSN holds, as written and decoded (a URI's or a `password=` pair's).

    Parsed by hand: a DSN too broken for a URL parser is the kind a driver echoes back.
    """
    found: list[str] = []
    if "://" in dsn:
        rest = dsn.split("://", 1)[1]
        userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
        if ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            found += [raw, urllib.parse.unquote(raw)]
    for key, value in _KV_PAIR.findall(dsn):
        if key.lower() == "password":
            found += [value, value.strip("'")]
    return list(dict.fromkeys(v for v in found if v))


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

    model_config = HIDE_INPUT

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

    def dsn_location(self) -> str:
        """The server and database the DSN names: never its user, password or other settings.

        For the ledger, which remembers where each watermark was read (`HomeBlock.location`).
        """
        dsn = self.dsn.get_secret_value() if self.dsn is not None else ""
        if dsn.startswith(("postgresql://", "postgres://")):
            try:
                parts = urllib.parse.urlsplit(dsn)
            except ValueError as exc:
                # its text names the broken part, never the DSN itself
                msg = (
                    f"the PostgreSQL DSN is not a valid URI ({exc}); check the credentials "
                    "block's `dsn` (a host in brackets needs its closing `]`; a password with "
                    "`@`, `:` or `/` must be percent-encoded)"
                )
                raise ConfigError(msg) from None
            query = dict(urllib.parse.parse_qsl(parts.query))
            found = {
                "host": parts.netloc.rsplit("@", 1)[-1] or query.get("host"),  # host[:port],...
                "port": query.get("port"),
                "dbname": parts.path.lstrip("/") or query.get("dbname"),
            }
        else:
            pairs = {k.lower(): v for k, v in _KV_PAIR.findall(dsn)}
            found = {k: pairs.get(k) for k in ("host", "hostaddr", "port", "dbname")}
        values = {k: v.strip("'") for k, v in found.items() if v}
        return " ".join(f"{k}={v}" for k, v in values.items())

    def secrets(self) -> list[str]:
        """Secret values, so messages can be scrubbed of them whatever a driver echoes.

        A DSN's password counts on its own too: libpq quotes just that part of a DSN it cannot
        parse (`invalid percent-encoded token: "..."`).
        """
        found = [s.get_secret_value() for s in (self.password, self.dsn) if s is not None]
        if self.dsn is not None:
            found += dsn_passwords(self.dsn.get_secret_value())
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


class MysqlCredentials(CredentialsBlock):
    """A MySQL or MariaDB login: user name and password.

    Example:
        ```python
        from blocks import MysqlCredentials
        credentials = MysqlCredentials.load("BLOCK_NAME")
        ```
    """

    model_config = HIDE_INPUT

    _block_type_name = "MySQL Credentials"
    _block_type_slug = "hygge-mysql-credentials"
    _logo_url = LOGO
    _documentation_url = "https://mariadb.com/kb/en/create-user/"  # type: ignore[assignment]
    _description = "A MySQL or MariaDB user and password for hygge's MySQL Home."

    username: str = Field(description="The user to log in as.")
    password: SecretStr | None = Field(
        default=None, description="The user's password (none for a user without one)."
    )

    def url(self, host: str, port: int, database: str | None) -> str:
        """connectorx's `mysql://` URL (it holds the secret: never log it)."""
        quote = partial(urllib.parse.quote, safe="")
        secret = f":{quote(self.password.get_secret_value())}" if self.password else ""
        return f"mysql://{quote(self.username)}{secret}@{host}:{port}/{quote(database or '')}"

    def secrets(self) -> list[str]:
        """The password as given and as it stands in a URL, to scrub from any message."""
        if self.password is None or not self.password.get_secret_value():
            return []
        raw = self.password.get_secret_value()
        return list(dict.fromkeys([raw, urllib.parse.quote(raw, safe="")]))

    def get_client(self, host: str, port: int, database: str | None, **connect_args: Any) -> Any:
        """A pymysql connection (autocommit, utf8mb4)."""
        import pymysql

        return pymysql.connect(
            host=host,
            port=port,
            user=self.username,
            password=self.password.get_secret_value() if self.password else "",
            database=database,
            autocommit=True,
            charset="utf8mb4",
            **connect_args,
        )


SqlServerAuth = Literal[
    "sql_login", "service_principal", "managed_identity", "access_token", "default_credential"
]
#: the OAuth scope of an access token for Azure SQL Database, Managed Instance and Fabric SQL
ENTRA_SCOPE = "https://database.windows.net/.default"
#: msodbcsql's pre-connect attribute that carries an access token (msodbcsql.h)
SQL_COPT_SS_ACCESS_TOKEN = 1256


def access_token_struct(token: str) -> bytes:
    """The ACCESSTOKEN structure Microsoft's ODBC driver takes for `SQL_COPT_SS_ACCESS_TOKEN`.

    `typedef struct AccessToken { unsigned int dataSize; char data[]; } ACCESSTOKEN;`: a 4-byte
    length, then the token with every byte followed by a zero byte (UTF-16-LE of the ASCII
    token), `dataSize` counting those expanded bytes.
    """
    if not token or not token.isascii() or any(c.isspace() for c in token):
        msg = "the access token must be a non-empty ASCII string without spaces (a JWT)"
        raise ConfigError(msg)
    data = token.encode("utf-16-le")
    return struct.pack("<I", len(data)) + data


def _default_azure_credential() -> Any:
    """azure-identity's DefaultAzureCredential (tests replace this: no Entra ID here)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class SqlServerCredentials(CredentialsBlock):
    """A SQL Server login: SQL authentication or Microsoft Entra ID.

    Service principal and managed identity logins are handed to Microsoft's ODBC Driver 17/18
    itself (`Authentication=ActiveDirectoryServicePrincipal` / `ActiveDirectoryMsi`), which
    fetches and refreshes the token. An `access_token`, or one that azure-identity's
    `DefaultAzureCredential` fetches for each connection (scope `ENTRA_SCOPE`), is given to
    the driver as the pre-connect attribute `SQL_COPT_SS_ACCESS_TOKEN`, never in the
    connection string. FreeTDS supports SQL logins only.

    Example:
        ```python
        from blocks import SqlServerCredentials
        credentials = SqlServerCredentials.load("BLOCK_NAME")
        ```
    """

    model_config = HIDE_INPUT

    _block_type_name = "SQL Server Credentials"
    _block_type_slug = "hygge-sql-server-credentials"
    _logo_url = LOGO
    _documentation_url = (
        "https://learn.microsoft.com/sql/connect/odbc/dsn-connection-string-attribute"  # type: ignore[assignment]
    )
    _description = "A SQL Server or Azure SQL login (SQL or Microsoft Entra ID) for hygge."

    username: str | None = Field(default=None, description="SQL login name.")
    password: SecretStr | None = Field(default=None, description="SQL login password.")
    tenant_id: str | None = Field(
        default=None, title="Tenant ID", description="Entra tenant of the service principal."
    )
    client_id: str | None = Field(
        default=None,
        title="Client ID",
        description="Service principal application ID, or a user-assigned managed identity.",
    )
    client_secret: SecretStr | None = Field(default=None, description="Service principal secret.")
    managed_identity: bool = Field(
        default=False, description="Log in as the machine's Azure managed identity."
    )
    access_token: SecretStr | None = Field(
        default=None,
        description=(
            "A Microsoft Entra ID access token for scope `https://database.windows.net/.default`, "
            "passed to the driver as is (it expires, often within an hour)."
        ),
    )
    default_credential: bool = Field(
        default=False,
        title="DefaultAzureCredential",
        description=(
            "Log in with a token from azure-identity's DefaultAzureCredential (environment, "
            "workload identity, managed identity, Azure CLI), fetched for each connection."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _one_auth_mode(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        given = {k for k, v in values.items() if v not in (None, "", False)}
        modes = [
            "sql_login" if given & {"username", "password"} else None,
            "service_principal" if given & {"client_secret", "tenant_id"} else None,
            "managed_identity" if "managed_identity" in given else None,
            "access_token" if "access_token" in given else None,
            "default_credential" if "default_credential" in given else None,
        ]
        chosen = [m for m in modes if m]
        if len(chosen) != 1:
            msg = (
                "give exactly one login: `username` + `password` (SQL login), `tenant_id` + "
                "`client_id` + `client_secret` (service principal), `managed_identity: true` "
                "(with an optional `client_id`), `access_token`, or `default_credential: true`; "
                f"got {', '.join(chosen) or 'none'}"
            )
            raise ValueError(msg)
        need = {
            "sql_login": {"username", "password"},
            "service_principal": {"tenant_id", "client_id", "client_secret"},
            "managed_identity": set(),
            "access_token": set(),
            "default_credential": set(),
        }[chosen[0]]
        if missing := sorted(need - given):
            msg = f"{chosen[0]} needs {', '.join(missing)}"
            raise ValueError(msg)
        return values

    @property
    def auth(self) -> SqlServerAuth:
        if self.access_token is not None:
            return "access_token"
        if self.default_credential:
            return "default_credential"
        if self.managed_identity:
            return "managed_identity"
        return "service_principal" if self.client_secret is not None else "sql_login"

    @property
    def uses_token(self) -> bool:
        """Whether the login is an access token given before connecting (not in the string)."""
        return self.auth in ("access_token", "default_credential")

    def odbc_login(self, family: str) -> dict[str, str | None]:
        """Connection-string pairs for the login (they hold the secret: never log them)."""
        if self.auth == "sql_login":
            assert self.password is not None
            return {"UID": self.username, "PWD": self.password.get_secret_value()}
        if family != "msodbc":
            msg = (
                f"a {self.auth} login needs Microsoft's ODBC Driver 17 or 18; "
                "FreeTDS supports SQL logins only"
            )
            raise ConfigError(msg)
        if self.uses_token:
            # the driver refuses a token next to UID, PWD or Authentication (FA005)
            return {}
        if self.auth == "service_principal":
            assert self.client_secret is not None
            return {
                "Authentication": "ActiveDirectoryServicePrincipal",
                "UID": f"{self.client_id}@{self.tenant_id}",
                "PWD": self.client_secret.get_secret_value(),
            }
        return {"Authentication": "ActiveDirectoryMsi", "UID": self.client_id}

    def secrets(self) -> list[str]:
        fields = (self.password, self.client_secret, self.access_token)
        found = [s.get_secret_value() for s in fields if s is not None]
        return [s for s in found if s]

    def token(self) -> str:
        """The access token to log in with (given, or fetched now by DefaultAzureCredential)."""
        if self.access_token is not None:
            return self.access_token.get_secret_value()
        if not self.default_credential:
            msg = f"a {self.auth} login has no access token"
            raise ConfigError(msg)
        from azure.core.exceptions import ClientAuthenticationError

        try:
            return str(_default_azure_credential().get_token(ENTRA_SCOPE).token)
        except ClientAuthenticationError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            msg = (
                f"DefaultAzureCredential found no Entra ID login for {ENTRA_SCOPE} ({reason}); "
                "set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, run `az login`, or "
                "run where a managed identity is assigned"
            )
            raise HomeError(msg) from exc

    def attrs_before(self) -> dict[int, bytes]:
        """Pre-connect attributes for pyodbc: the access token (holds the secret: never log)."""
        return {SQL_COPT_SS_ACCESS_TOKEN: access_token_struct(self.token())}

    def get_client(self, connection_string: str) -> Any:
        """A pyodbc connection for ad-hoc use, with the access token when the login is one."""
        import pyodbc

        attrs = self.attrs_before() if self.uses_token else None
        return pyodbc.connect(connection_string, attrs_before=attrs)

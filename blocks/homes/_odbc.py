"""The shared ODBC read path: connection strings, driver choice, Arrow batches, error mapping.

Reads go through arrow-odbc (column-wise bulk fetch straight into Arrow, no Python row loop).
Traps it guards against, each met for real (see shared notes):
- variable-length columns without a bound (`nvarchar(max)`, `text`) would allocate their
  declared size per row: `max_text_size`/`max_binary_size` cap the buffers, and a longer
  value fails the read loudly ("too large ... without truncation"), never truncates;
- some drivers describe `float8` so that arrow-odbc fetches float32: every float is fetched
  as float64 unless the Home asks for another type.
"""

from __future__ import annotations

import glob
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from hygge_tasks.errors import ConfigError, HomeError, TransientHomeError, redact

#: tried in this order when a Home's `driver` is "auto"
SUPPORTED_DRIVERS = ("ODBC Driver 18 for SQL Server", "ODBC Driver 17 for SQL Server", "FreeTDS")
DRIVER_HELP = (
    "install Microsoft's ODBC Driver 18 (`pip install mssql-python-odbc` ships it, or the "
    "`msodbcsql18` package) or FreeTDS (`apt-get install tdsodbc`), or set `driver` to a "
    "registered driver name or a driver library path"
)

# SQL Server errors worth a retry besides SQLSTATE class 08 and HYT00/HYT01: deadlock victim
# (1205) and Azure SQL's throttling, failover and "database unavailable" errors
TRANSIENT_NATIVE = {1205, 40197, 40501, 40613, 49918, 49919, 49920, 10928, 10929}
_ERROR = re.compile(r"State: (\w{5}), Native error: (-?\d+), Message: (.*)")
_AUTH_TEXT = ("login failed", "password authentication failed", "authentication failed")
_BAD_OPTION_TEXT = ("invalid value specified for connection string", "invalid connection string")

Family = Literal["msodbc", "freetds", "other"]


def escape_value(value: str) -> str:
    """Brace an ODBC connection-string value: `{...}` with `}` doubled; `;` and `=` are safe."""
    return "{" + value.replace("}", "}}") + "}"


def connection_string(pairs: dict[str, str | None], raw: frozenset[str] = frozenset()) -> str:
    """`Key={value};...` for the pairs that have a value; keys in `raw` are not braced."""
    out = []
    for key, value in pairs.items():
        if value is None:
            continue
        if re.search(r"[;={}\s]", key):
            msg = f"ODBC connection-string key {key!r} may not contain ';', '=', braces or spaces"
            raise ConfigError(msg)
        out.append(f"{key}={value if key in raw else escape_value(value)}")
    return ";".join(out) + ";"


def bundled_driver18() -> str | None:
    """The ODBC Driver 18 library inside the `mssql-python-odbc` wheel, when installed."""
    site = Path(sysconfig.get_paths()["purelib"]) / "mssql_python_odbc" / "libs" / "linux"
    found = sorted(glob.glob(str(site / "debian_ubuntu" / "*" / "lib" / "libmsodbcsql-18*.so*")))
    return found[-1] if found else None


def registered_drivers() -> list[str]:
    """Driver names unixODBC knows (odbcinst.ini)."""
    import pyodbc

    return list(pyodbc.drivers())


def resolve_driver(wanted: str) -> tuple[str, Family]:
    """The `Driver=` value to use and which family it is, for `wanted` ("auto", name or path)."""
    if wanted != "auto":
        low = wanted.lower()
        family: Family = (
            "freetds"
            if "tds" in low
            else "msodbc"
            if "sql server" in low or "msodbcsql" in low
            else "other"
        )
        return wanted, family
    names = registered_drivers()
    for name in SUPPORTED_DRIVERS[:2]:
        if name in names:
            return name, "msodbc"
    bundled = bundled_driver18()
    if bundled:
        return bundled, "msodbc"
    if "FreeTDS" in names:
        return "FreeTDS", "freetds"
    msg = f"no SQL Server ODBC driver found (tried {', '.join(SUPPORTED_DRIVERS)}): {DRIVER_HELP}"
    raise ConfigError(msg)


@dataclass(frozen=True)
class OdbcFailure:
    """An ODBC diagnostic: SQLSTATE, the driver's native error number, and its text."""

    state: str
    native: int
    message: str

    @classmethod
    def parse(cls, exc: BaseException) -> OdbcFailure:
        text = str(exc)
        m = _ERROR.search(text)
        if m:
            return cls(m.group(1), int(m.group(2)), m.group(3).strip())
        return cls("", 0, text.strip().splitlines()[-1] if text.strip() else type(exc).__name__)

    @property
    def transient(self) -> bool:
        low = self.message.lower()
        if any(t in low for t in _AUTH_TEXT + _BAD_OPTION_TEXT):
            return False  # some drivers report a refused login or a bad option as class 08
        return (
            self.state.startswith("08")
            or self.state in ("HYT00", "HYT01", "40001")
            or self.native in TRANSIENT_NATIVE
        )

    @property
    def kind(self) -> str:
        low = self.message.lower()
        if self.transient:
            return "transient"
        if self.state == "28000" or any(t in low for t in _AUTH_TEXT):
            return "auth"
        if any(t in low for t in _BAD_OPTION_TEXT) or self.state.startswith("IM"):
            return "options"
        if "can't open lib" in low or "data source name not found" in low:
            return "driver"
        if self.state == "42S02" or self.native == 208 or "does not exist" in low:
            return "missing"
        if self.state.startswith("42"):
            return "sql"
        if "too large to be written into the allocated buffer" in low:
            return "overflow"
        return "other"


def to_home_error(
    exc: BaseException, entity: str, where: str, secrets: list[str], limits: str
) -> HomeError:
    """A HomeError (transient when a retry may help) that says what to fix, without secrets."""
    failure = OdbcFailure.parse(exc)
    text = redact(failure.message)
    for secret in secrets:
        text = text.replace(secret, "***")
    code = f" [SQLSTATE {failure.state}, error {failure.native}]" if failure.state else ""
    advice = {
        "transient": "will retry",
        "auth": "check the login in the credentials block (user, password or Entra settings)",
        "options": "check the Home's settings (encrypt, trust_server_certificate, driver)",
        "driver": DRIVER_HELP,
        "missing": "check `table` (schema-qualified, e.g. `dbo.orders`) or the query",
        "sql": "check the entity's `query`, `columns` and `where`",
        "overflow": f"a value is longer than the text/binary buffer ({limits}): raise "
        "`max_text_size`/`max_binary_size` on the Home or entity",
        "other": "see the driver's message",
    }[failure.kind]
    msg = f"{where}: {text}{code}; {advice}"
    cls = TransientHomeError if failure.kind == "transient" else HomeError
    return cls(msg, entity=entity)


@dataclass(frozen=True)
class FetchOptions:
    """How arrow-odbc reads: connection, buffer caps and timeouts."""

    connection_string: str
    max_text_size: int
    max_binary_size: int
    login_timeout: int
    query_timeout: int


def fetch(
    options: FetchOptions,
    sql: str,
    params: list[str],
    batch_size: int,
    fetch_types: Callable[[pa.Schema], pa.Schema] | None = None,
) -> Any:
    """Execute `sql` and return arrow-odbc's batch reader (raises arrow_odbc.Error)."""
    from arrow_odbc import read_arrow_batches_from_odbc

    return read_arrow_batches_from_odbc(
        query=sql,
        connection_string=options.connection_string,
        batch_size=batch_size,
        parameters=params or None,
        max_text_size=options.max_text_size,
        max_binary_size=options.max_binary_size,
        login_timeout_sec=options.login_timeout,
        query_timeout_sec=options.query_timeout or None,
        map_schema=fetch_types or float64_floats,
    )


def float64_floats(schema: pa.Schema) -> pa.Schema:
    """Fetch every float column as float64 (psqlODBC's `float8` otherwise arrives as float32)."""
    return pa.schema(
        pa.field(f.name, pa.float64() if pa.types.is_floating(f.type) else f.type) for f in schema
    )


def stream(
    reader: Any, target: pa.Schema, entity: str, convert: Callable[[pa.RecordBatch], pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Yield converted batches; an empty result still yields one empty batch with the schema."""
    sent = False
    for raw in reader:
        batch = convert(raw)
        if batch.num_rows:
            sent = True
            yield batch
    if not sent:
        yield pa.RecordBatch.from_pylist([], schema=target)

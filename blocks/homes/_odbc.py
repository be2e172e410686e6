"""The shared ODBC read path: connection strings, driver choice, Arrow batches, error mapping.

Reads go through arrow-odbc (column-wise bulk fetch straight into Arrow, no Python row loop).
The one exception is an Entra ID access-token login: the token must be set as a pre-connect
attribute (`SQL_COPT_SS_ACCESS_TOKEN`), which arrow-odbc (10.x: `connect` takes a connection
string, user, password, login timeout and packet size, nothing else, and cannot adopt another
library's connection) cannot do. Those reads go through pyodbc (`attrs_before`) and
`PyodbcBatches`: `fetchmany` per batch, then one Arrow array per column, in the same schema the
arrow-odbc path yields. It is slower: 500k rows x 8 columns from PostgreSQL via psqlODBC on
2 cores, ~100-115k rows/s against arrow-odbc's ~270k in the same run (pyodbc's own fetchmany,
which builds a Python object per value, is ~135k: the floor of any pyodbc-based path).
Traps it guards against, each met for real (see shared notes):
- variable-length columns without a bound (`nvarchar(max)`, `text`) would allocate their
  declared size per row: `max_text_size`/`max_binary_size` cap the buffers, and a longer
  value fails the read loudly ("too large ... without truncation"), never truncates;
- some drivers describe `float8` so that arrow-odbc fetches float32: every float is fetched
  as float64 unless the Home asks for another type.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import glob
import operator
import re
import struct
import sysconfig
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from hygge_core.errors import ConfigError, HomeError, TransientHomeError, redact

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

_PYODBC_STATE = re.compile(r"[0-9A-Z]{5}")
_PYODBC_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+")
_PYODBC_NATIVE = re.compile(r"\s*\((-?\d+)\)\s*\(SQL\w+\)\s*$")

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
        args: tuple[Any, ...] = exc.args
        if len(args) >= 2 and isinstance(args[0], str) and _PYODBC_STATE.fullmatch(args[0]):
            # pyodbc: ('HYT00', '[HYT00] [Microsoft][ODBC Driver 18 ...]Login timeout (0) (SQLX)')
            text = str(args[1])
            native = _PYODBC_NATIVE.search(text)
            message = _PYODBC_NATIVE.sub("", _PYODBC_PREFIX.sub("", text)).strip()
            return cls(args[0], int(native.group(1)) if native else 0, message)
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
    """How a read connects and fetches: connection, buffer caps and timeouts.

    With `attrs_before` (pre-connect attributes, e.g. an access token, computed at each connect)
    the read goes through pyodbc; without, through arrow-odbc. Neither the connection string
    nor the attributes show in the repr: they hold the secret.
    """

    connection_string: str = field(repr=False)
    max_text_size: int
    max_binary_size: int
    login_timeout: int
    query_timeout: int
    attrs_before: Callable[[], dict[int, bytes]] | None = field(default=None, repr=False)


def fetch(
    options: FetchOptions,
    sql: str,
    params: list[str],
    batch_size: int,
    fetch_types: Callable[[pa.Schema], pa.Schema] | None = None,
) -> Any:
    """Execute `sql` and return a batch reader: arrow-odbc's, or pyodbc's for token logins.

    Raises arrow_odbc.Error or pyodbc.Error (both parsed by `OdbcFailure`).
    """
    if options.attrs_before is not None:
        return PyodbcBatches.open(options, sql, params, batch_size, fetch_types)
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


def next_result(
    reader: Any,
    options: FetchOptions,
    batch_size: int,
    fetch_types: Callable[[pa.Schema], pa.Schema] | None = None,
) -> bool:
    """Move a `fetch` reader whose result set is read to the batch's next one (False: none).

    Raises arrow_odbc.Error or pyodbc.Error, as `fetch` does.
    """
    if isinstance(reader, PyodbcBatches):
        return reader.more_results(fetch_types)
    return bool(
        reader.more_results(
            batch_size=batch_size,
            max_text_size=options.max_text_size,
            max_binary_size=options.max_binary_size,
            map_schema=fetch_types or float64_floats,
        )
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


class PyodbcBatches:
    """A pyodbc cursor read as Arrow record batches: `fetchmany`, then one array per column.

    The per-row work is pyodbc's own (C); the conversion is per column, not per row. Types
    follow the caller's `fetch_types` like arrow-odbc's `map_schema`; without them they are
    inferred from the cursor description (floats as float64, as the arrow-odbc path does).
    Values Python cannot hold exactly (`datetime2(7)`) must arrive as text (`mssql.Column`
    selects them so) and are parsed by Arrow into the column's type. Text and binary values are
    read whole, whatever their length.
    """

    def __init__(self, connection: Any, cursor: Any, schema: pa.Schema, batch_size: int) -> None:
        self._connection = connection
        self._cursor = cursor
        #: the current result set is read and the cursor stands on the next one
        self._pending = False
        self.schema = schema
        self._batch_size = batch_size

    @classmethod
    def open(
        cls,
        options: FetchOptions,
        sql: str,
        params: Sequence[Any],
        batch_size: int,
        fetch_types: Callable[[pa.Schema], pa.Schema] | None,
    ) -> PyodbcBatches:
        import pyodbc

        assert options.attrs_before is not None
        connection = pyodbc.connect(
            options.connection_string,
            attrs_before=options.attrs_before(),
            timeout=options.login_timeout,
            autocommit=True,
        )
        try:
            if options.query_timeout:  # statement timeout (psqlODBC refuses to set a 0)
                connection.timeout = options.query_timeout
            # pyodbc has no converter of its own for SQL Server's datetimeoffset (it is only
            # selected raw for partition bounds; reads convert it to datetime2 in SQL)
            connection.add_output_converter(SQL_SS_TIMESTAMPOFFSET, datetimeoffset_value)
            cursor = connection.cursor()
            cursor.execute(sql, *params)
            inferred = described_schema(cursor)
        except BaseException:
            connection.close()
            raise
        return cls(connection, cursor, (fetch_types or float64_floats)(inferred), batch_size)

    def __iter__(self) -> PyodbcBatches:
        return self

    def __next__(self) -> pa.RecordBatch:
        if self._cursor is None or self._pending:
            raise StopIteration
        try:
            rows = self._cursor.fetchmany(self._batch_size)
        except BaseException:
            self.close()
            raise
        if not rows:
            # a batch of statements may hold another result set (`next_result`)
            self._pending = bool(self._cursor.nextset())
            if not self._pending:
                self.close()
            raise StopIteration
        # one C-level pass per column (itemgetter), no Python code per row
        arrays = [
            column_array(list(map(operator.itemgetter(i), rows)), f.type)
            for i, f in enumerate(self.schema)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def more_results(self, fetch_types: Callable[[pa.Schema], pa.Schema] | None) -> bool:
        """Move to the next result set of the statement batch (the current one is read)."""
        if not self._pending or self._cursor is None:
            return False
        self.schema = (fetch_types or float64_floats)(described_schema(self._cursor))
        self._pending = False
        return True

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = self._cursor = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


#: msodbcsql's type code for `datetimeoffset` (sqlncli.h / msodbcsql.h)
SQL_SS_TIMESTAMPOFFSET = -155
_TIMESTAMPOFFSET = struct.Struct("<6hI2h")


def datetimeoffset_value(raw: bytes | None) -> dt.datetime | None:
    """A `datetimeoffset` as the driver hands it over (`SQL_SS_TIMESTAMPOFFSET_STRUCT`).

    `{year, month, day, hour, minute, second: SQLSMALLINT/USMALLINT; fraction: SQLUINTEGER
    (ns); timezone_hour, timezone_minute: SQLSMALLINT}`, little-endian; fraction cut to
    microseconds (a Python datetime's limit), returned in UTC.
    """
    if raw is None:
        return None
    year, month, day, hour, minute, second, ns, tz_h, tz_m = _TIMESTAMPOFFSET.unpack(raw)
    zone = dt.timezone(dt.timedelta(hours=tz_h, minutes=tz_m))
    local = dt.datetime(year, month, day, hour, minute, second, ns // 1000, tzinfo=zone)
    return local.astimezone(dt.UTC)


def described_schema(cursor: Any) -> pa.Schema:
    """The Arrow schema of a pyodbc cursor's current result set."""
    return pa.schema(pa.field(d[0], described_type(d[1], d[4], d[5])) for d in cursor.description)


def described_type(py_type: type, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type for a pyodbc description entry (Python type, column size, scale)."""
    if py_type is bool:
        return pa.bool_()
    if py_type is int:
        size = precision or 19
        return pa.int16() if size <= 5 else pa.int32() if size <= 10 else pa.int64()
    if py_type is float:
        return pa.float64()
    if py_type is decimal.Decimal:
        if precision and 0 < precision <= 38 and scale is not None and 0 <= scale <= precision:
            return pa.decimal128(precision, scale)
        return pa.string()  # an unconstrained numeric: exact only as text
    if py_type is dt.datetime:
        return pa.timestamp("ns" if (scale or 0) > 6 else "us")
    if py_type is dt.date:
        return pa.date32()
    if py_type is dt.time:
        return pa.time64("us")
    if py_type in (bytes, bytearray):
        return pa.binary()
    return pa.string()  # str, uuid.UUID and anything else: its text


def column_array(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """One column of fetched Python values as an Arrow array of `typ`, exactly or not at all."""
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        if not all(v is None or isinstance(v, str) for v in values):
            values = [None if v is None else _text(v) for v in values]
        return pa.array(values, type=typ)
    if any(isinstance(v, str) for v in values):
        # exact text from the server (e.g. datetime2(7)): Arrow parses it, never Python
        return pa.array(values, type=pa.string()).cast(typ)
    return pa.array(values, type=typ)


def _text(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    return str(value)

"""MysqlHome: tables or queries from MySQL or MariaDB, read Arrow-natively with connectorx.

Why connectorx, measured on this kind of machine (MariaDB 10.11, 1M rows x 11 columns, one
process each, 2 shared cores): connectorx's Arrow stream reads ~0.5-1.2M rows/s in batches
of bounded size; PyMySQL with Arrow arrays built per batch reads ~47k rows/s (25x slower);
there is no ADBC driver for MySQL on PyPI. connectorx is not exact unaided (DECIMAL rounded
to 10 fraction digits, panics on zero dates and long TIMEs): `_mysql_types` selects each
column so that what connectorx decodes is exact, and the Home casts it back (figures in
bench/RESULTS.md). One limit: connectorx keeps the GIL while it fetches a batch, so the other
threads of the process (other entities, the Store's encoder) wait meanwhile, and partitions
add connections more than speed. Connecting and
describing go through PyMySQL first: its errors are immediate and plain (connectorx's pool
retries a refused login for 30 s), and the server's result metadata (length, decimals,
unsigned, character set) says exactly what each column is.

connectorx has no bind parameters, so a bound value (a watermark, a split point) enters the
SQL as a hex literal of its text, `X'...'` cast to the column's type: no value can end the
literal, whatever it holds and whatever the server's `sql_mode`. Every session reads in UTC
(`time_zone = '+00:00'`), so TIMESTAMP values and bounds are UTC instants without DST gaps.

`tls` applies to both drivers: PyMySQL gets an `ssl.SSLContext`, connectorx the URL's
`ssl-mode` (`REQUIRED`, `VERIFY_IDENTITY`) and `ssl-ca`, the parameters connectorx 0.4.6
accepts (`require_ssl`, `verify_ca`, `verify_identity` fail as unknown there). PyMySQL connects
first, so a server without TLS or a certificate that fails verification is reported at once,
not after connectorx's pool has retried for 30 s.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
import urllib.parse
from collections.abc import Iterator
from functools import partial
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from blocks.base import HomeBlock, ReadRequest
from blocks.credentials import MysqlCredentials
from blocks.homes import _guarded, _mysql_types, _partitions, _sql, _sql_fields
from blocks.homes._guarded import Column
from blocks.homes._limits import connection_slots
from blocks.homes._parallel import merge_streams
from blocks.homes._sql import MYSQL, Binder, qmark
from hygge_core.errors import HomeError, TransientHomeError, scrub, scrubbed
from hygge_core.timestamps import NanoTimestamp

# server errors worth a retry: too many connections, server shutdown, lock wait timeout,
# deadlock, connection killed (MariaDB); client errors: cannot connect, gone away, lost
_TRANSIENT = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055}
# the server rejected the statement: ambiguous, unknown or duplicate column, syntax, unknown
# or misused function, a derived table without an alias, illegal collation or charset mix
_SQL_ERRORS = {1052, 1054, 1060, 1064, 1066, 1111, 1241, 1248, 1267, 1270, 1271, 1305, 1582}
_CX_ERROR = re.compile(r"ERROR (\d+) \(([0-9A-Z]{5})\): (.*?)\s*\}?\s*$", re.S)
_CX_TRANSIENT_TEXT = ("connection refused", "lost connection", "gone away", "broken pipe")
# PyMySQL's CR_SSL_CONNECTION_ERROR; the words both drivers use when the server has no TLS
_NO_TLS = 2026
_NO_TLS_TEXT = ("server doesn't support it", "server does not have this capability")
_CERT_TEXT = ("certificate verify failed", "tlserror", "hostname mismatch", "ip address mismatch")

TlsMode = Literal["disable", "require", "verify"]

Plan = list[tuple[str, list[Column]]]


class MysqlHome(HomeBlock):
    """Reads tables or queries from MySQL or MariaDB as Arrow batches (connectorx).

    Types map exactly: integers by width (unsigned ones widened to the next signed type,
    BIGINT UNSIGNED to `decimal128(20, 0)`), DECIMAL(p,s) to `decimal128(p, s)`, FLOAT and
    DOUBLE, DATE, DATETIME(n) to microsecond timestamps, TIMESTAMP as UTC, TIME to
    `time64("us")`, BIT(1) to boolean and BIT(n) to an integer, YEAR, text (JSON, ENUM, SET,
    UUID, INET6 included), binary strings and BLOBs, geometry as WKT. A value Arrow cannot
    hold (a zero date, a TIME past 24 hours) fails the read naming its column; it is never
    changed.

    Example:
        ```python
        from blocks import MysqlHome
        home = MysqlHome.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "MySQL Home"
    _block_type_slug = "mysql-home"
    _description = "A MySQL or MariaDB database as a hygge Home."
    _documentation_url = "https://mariadb.com/kb/en/data-types/"  # type: ignore[assignment]
    spec_type = "mysql"
    location_fields = ("host", "port", "database")

    host: str = Field(description="Server host name or address.")
    port: int = Field(default=3306, description="Server TCP port.")
    database: str | None = Field(
        default=None,
        description="The default database (a `table` may name another: `shop.orders`).",
    )
    credentials: MysqlCredentials = Field(description="Who connects: a credentials block.")
    connect_timeout: int = _sql_fields.connect_timeout()
    query_timeout: int = _sql_fields.query_timeout()
    max_connections: int = _sql_fields.max_connections()
    partition_column: str | None = _sql_fields.partition_column("MySQL", "an auto-increment key")
    partitions: int = _sql_fields.partitions()
    tls: TlsMode = Field(
        default="disable",
        description="Encryption: `disable` (none), `require` (encrypted, the certificate not "
        "checked) or `verify` (encrypted; CA and host name checked).",
    )
    tls_ca_file: str | None = Field(
        default=None,
        description="With `tls: verify`: a PEM file of the CA that signed the server's "
        "certificate (a private CA); without it the system's trusted roots.",
    )

    # --- public interface -------------------------------------------------------------

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        base = _sql.base_select(MYSQL, request)  # a bad entity fails before connecting
        wanted = self.partitions if self.partition_column else 1
        with connection_slots(self.identity(), wanted, self.max_connections) as granted:
            session, plan = self._plan(request, base, granted)
            if len(plan) == 1:
                yield from self._stream(request, session, *plan[0])
                return
            streams = [partial(self._stream, request, session, sql, cols) for sql, cols in plan]
            yield from merge_streams(streams, queue_size=2 * len(streams))

    def check(self, request: ReadRequest) -> None:
        _sql.check_read(self, request)

    def describe(self, request: ReadRequest) -> str:
        what = f"table {request.table}" if request.table else "query"
        return f"mysql {self._where()} {what}"

    def identity(self) -> str:
        """Which server `max_connections` counts against (no secrets in it)."""
        return f"mysql:{self.credentials.username}@{self.host}:{self.port}"

    def estimate_rows(self, request: ReadRequest) -> int | None:
        if not request.table or request.where or request.since:
            return None
        parts = _sql.split_name(request.table)
        try:
            with connection_slots(self.identity(), 1, self.max_connections):
                conn = self._connect(request)
                try:
                    cur = conn.cursor()
                    cur.execute(
                        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE "
                        "TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                        (parts[0] if len(parts) == 2 else None, parts[-1]),
                    )
                    row = cur.fetchone()
                finally:
                    conn.close()
        except Exception:
            return None  # progress without a percentage; the read reports the real error
        return int(row[0]) if row and row[0] is not None else None

    # --- reading --------------------------------------------------------------------

    def _plan(self, request: ReadRequest, base: str, granted: int) -> tuple[list[str], Plan]:
        """The session settings and the statement(s) to run, each with the columns it yields."""
        conn = self._connect(request)
        try:
            cur = conn.cursor()
            session = self._session(conn)
            for sql in session:
                cur.execute(sql)
            cur.execute(MYSQL.probe(base))
            # the protocol's field descriptors: pymysql keeps them on the result only
            columns = [_mysql_types.column(f) for f in cur._result.fields]
            _guarded.unique_names([c.name for c in columns], request.entity)
            types = {c.name: c.arrow for c in columns}
            select_list = _guarded.select_list(MYSQL, columns)
            binder = Binder(qmark, _param, _hex_literal)
            predicates = []
            if request.since is not None:
                since = request.since
                kind = _sql.check_since(since, types.get(since.sources[0]), request.entity)
                arrow = types[since.sources[0]]
                predicates.append(_sql.since_predicate(MYSQL, since, kind, arrow, binder))
            if not (self.partition_column and granted > 1):
                return session, [
                    (_sql.final_select(MYSQL, request, select_list, predicates), columns)
                ]
            col = self.partition_column
            arrow_type = types.get(col)
            _partitions.partition_kind(col, arrow_type, request.entity)
            assert arrow_type is not None
            cur.execute(_partitions.bounds_select(MYSQL, request, col, predicates))
            low, high = cur.fetchone()
            plan = _partitions.partition_selects(
                MYSQL, request, select_list, predicates, binder, col, arrow_type, low, high, granted
            )
            return session, [(sql, columns) for sql, _ in plan]
        except _pymysql_error() as exc:
            raise self._error(_pymysql_code(exc), str(exc.args[-1]), request) from self._cause(exc)
        finally:
            conn.close()

    def _stream(
        self, request: ReadRequest, session: list[str], sql: str, columns: list[Column]
    ) -> Iterator[pa.RecordBatch]:
        import connectorx as cx

        schema = pa.schema([pa.field(c.name, c.arrow) for c in columns])
        url = self._url()
        try:
            reader = cx.read_sql(
                url,
                sql,
                return_type="arrow_stream",
                batch_size=request.batch_size,
                pre_execution_query=session,
            )
            sent = False
            for raw in reader:
                batch = _guarded.guarded_batch(
                    raw, schema, columns, request.entity, MYSQL, _mysql_types.AS_TEXT
                )
                if batch.num_rows:
                    sent = True
                    yield batch
            if not sent:
                yield pa.RecordBatch.from_pylist([], schema=schema)
        except HomeError:
            raise
        except BaseException as exc:
            # connectorx raises RuntimeError with the server's error, or a Rust panic
            # (`pyo3_runtime.PanicException`, a BaseException) for a value it cannot decode
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            if "couldn't convert the value" in str(exc).lower():
                raise self._refusal(request, session, columns) from self._cause(exc)
            code, text = _cx_failure(exc)
            raise self._error(code, text, request) from self._cause(exc)

    def _refusal(
        self, request: ReadRequest, session: list[str], columns: list[Column]
    ) -> HomeError:
        """The error naming the column whose value connectorx could not decode."""
        conn = self._connect(request)
        try:
            cur = conn.cursor()
            for sql in session:
                cur.execute(sql)
            for c in columns:
                if c.guard is None or c.read_guard:
                    continue
                probe = _sql.final_select(MYSQL, request, ["1"], [f"({c.guard})"])
                cur.execute(probe + " LIMIT 1")
                if cur.fetchone():
                    return _guarded.refusal(c, request.entity, MYSQL, _mysql_types.AS_TEXT)
        except _pymysql_error() as exc:
            return self._error(_pymysql_code(exc), str(exc.args[-1]), request)
        finally:
            conn.close()
        msg = f"MySQL at {self._where()}: connectorx could not decode a value of the result"
        return HomeError(msg, entity=request.entity)

    def _session(self, conn: Any) -> list[str]:
        """What every session of a read runs first: UTC, and the server's statement timeout."""
        out = ["SET time_zone = '+00:00'"]
        if self.query_timeout:
            if "mariadb" in conn.get_server_info().lower():
                out.append(f"SET SESSION max_statement_time = {int(self.query_timeout)}")
            else:
                out.append(f"SET SESSION max_execution_time = {int(self.query_timeout) * 1000}")
        return out

    # --- connections and errors -------------------------------------------------------

    def _where(self) -> str:
        return f"{self.host}:{self.port}/{self.database or ''}"

    def _url(self) -> str:
        """connectorx's URL with the `tls` setting (it holds the secret: never log it)."""
        url = self.credentials.url(self.host, self.port, self.database)
        if self.tls == "require":
            return url + "?ssl-mode=REQUIRED"
        if self.tls == "verify":
            url += "?ssl-mode=VERIFY_IDENTITY"
            if self.tls_ca_file:
                url += "&ssl-ca=" + urllib.parse.quote(self.tls_ca_file, safe="")
        return url

    def _tls_args(self, request: ReadRequest) -> dict[str, Any]:
        """PyMySQL's TLS arguments: off, encrypted only, or verified (CA and host name)."""
        if self.tls == "disable":
            return {"ssl_disabled": True}
        if self.tls == "require":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return {"ssl": ctx}
        try:
            return {"ssl": ssl.create_default_context(cafile=self.tls_ca_file)}
        except (OSError, ssl.SSLError) as exc:
            msg = (
                f"MySQL at {self._where()}: cannot load `tls_ca_file` {self.tls_ca_file!r} "
                f"({exc}): point it to the PEM file of the CA that signed the server's "
                "certificate, or leave it out to use the system's trusted roots"
            )
            raise HomeError(msg, entity=request.entity) from exc

    def _connect(self, request: ReadRequest) -> Any:
        tls = self._tls_args(request)
        try:
            return self.credentials.get_client(
                self.host, self.port, self.database, connect_timeout=self.connect_timeout, **tls
            )
        except _pymysql_error() as exc:
            raise self._error(_pymysql_code(exc), str(exc.args[-1]), request) from self._cause(exc)

    def _error(self, code: int, text: str, request: ReadRequest) -> HomeError:
        """A HomeError that says what to fix (transient when a retry may help), no secrets."""
        text = scrub(text, self.credentials.secrets()).strip().rstrip(".")
        low = text.lower()
        where = f"MySQL at {self._where()}"
        entity = request.entity
        if self.tls != "disable" and (code == _NO_TLS or any(t in low for t in _NO_TLS_TEXT)):
            msg = (
                f"{where}: the server offers no TLS (`tls: {self.tls}`): {text}. Set "
                "`tls: disable`, or enable TLS on the server"
            )
            return HomeError(msg, entity=entity)
        if self.tls != "disable" and any(t in low for t in _CERT_TEXT):
            msg = (
                f"{where}: the server's TLS certificate failed verification (`tls: verify`): "
                f"{text}. Set `tls_ca_file` to the CA that signed it (a private CA), make "
                "`host` the name the certificate is issued for, or use `tls: require` to "
                "encrypt without checking the certificate"
            )
            return HomeError(msg, entity=entity)
        if code in _TRANSIENT or (not code and any(t in low for t in _CX_TRANSIENT_TEXT)):
            msg = f"{where} is unreachable or dropped the connection: {text}; will retry"
            return TransientHomeError(msg, entity=entity)
        advice = {
            1045: "refused the login: {text}. Check the user name and password in the MySQL "
            "credentials block",
            1044: "denied access: {text}. Grant the Home's user access to the database",
            1142: "denied access: {text}. Grant SELECT to the Home's user",
            1049: "{text}. Check the Home's `database`",
            1146: "{text}. Check `table` (`database.table`, e.g. `shop.orders`; quote a part "
            'that holds a dot: "my.table") or the query',
            1969: f"the read exceeded query_timeout ({self.query_timeout} s): raise it",
            3024: f"the read exceeded query_timeout ({self.query_timeout} s): raise it",
        }.get(code)
        if code in (1045, 3159) and self.tls == "disable":
            # MariaDB refuses a plain login to a `REQUIRE SSL` user, or under
            # require_secure_transport, as a wrong password (1045); MySQL says 3159
            advice = (advice or "refused the connection: {text}") + (
                "; or the server requires TLS (Azure Database for MySQL does by default): "
                "set `tls: verify` (or `tls: require`)"
            )
        if advice is None and code in _SQL_ERRORS:
            advice = "rejected the SQL: {text}. Check the entity's `query`, `columns` and `where`"
        if advice is None:
            advice = "read failed: {text}"
        return HomeError(f"{where}: " + advice.format(text=text), entity=entity)

    def _cause(self, exc: BaseException) -> BaseException:
        """The driver's error to chain, without a secret it may echo (`scrubbed`)."""
        return scrubbed(exc, self.credentials.secrets())


def _pymysql_error() -> type[Exception]:
    import pymysql

    return pymysql.Error  # type: ignore[no-any-return]


def _pymysql_code(exc: Exception) -> int:
    code = exc.args[0] if exc.args else 0
    return code if isinstance(code, int) else 0


def _cx_failure(exc: BaseException) -> tuple[int, str]:
    """The server's error number and words from a connectorx error (0: not the server's)."""
    text = str(exc)
    m = _CX_ERROR.search(text)
    if m:
        return int(m.group(1)), m.group(3)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return 0, f"connectorx could not read the result ({line})"


def _param(value: Any) -> str:
    """A bound value as MySQL's text: UTC instants without an offset, 6 fraction digits."""
    if isinstance(value, NanoTimestamp):
        return value.isoformat(6).removesuffix("+00:00").replace("T", " ")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    return _sql.param_text(value, fraction_digits=6)


def _hex_literal(text: str) -> str:
    return "X'" + text.encode("utf-8").hex() + "'"

"""MssqlHome: tables or queries from SQL Server and Azure SQL, read with arrow-odbc.

Access-token logins (`SqlServerCredentials.access_token` / `default_credential`) read through
pyodbc instead, which can hand the token to the driver before connecting (see `_odbc`).

The read path is `blocks.homes._odbc` (shared and tested end to end against PostgreSQL through
its ODBC driver); what is SQL Server's own lives here: T-SQL text (brackets, `TOP`, never
`LIMIT` or `::`), the column description from `sys.dm_exec_describe_first_result_set`, and the
server-side conversions for types ODBC cannot carry exactly:
- `datetimeoffset` -> `SWITCHOFFSET(.., '+00:00')` as `datetime2`, yielded as UTC timestamps;
- `time(n)` -> nanoseconds since midnight (`DATEDIFF_BIG`), yielded as Arrow time64;
- `uniqueidentifier` -> lowercase text (as PostgreSQL's uuid); `xml`, `sql_variant`,
  `hierarchyid`, spatial types -> text.

Change Tracking reads (`changes: change_tracking`, `read_changes`) are `_mssql_ct`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from blocks.base import ChangeRead, HomeBlock, ReadRequest
from blocks.credentials import SqlServerCredentials
from blocks.homes import _mssql_ct, _odbc, _sql, _sql_fields
from blocks.homes._limits import connection_slots
from blocks.homes._parallel import merge_streams
from blocks.homes._sql import TSQL, Binder, Dialect, qmark
from hygge_core.errors import ConfigError, HomeError, HyggeError, scrubbed

_TYPE = re.compile(r"^(\w+)(?:\((\w+)(?:,\s*(\d+))?\))?$")


@dataclass(frozen=True)
class Column:
    name: str
    expr: str  # how the final SELECT names it
    fetch: pa.DataType | None  # what arrow-odbc is asked for (None: what it infers)
    arrow: pa.DataType | None  # what the Home yields (None: the fetched type)
    #: how a reader without exact binary transfer (pyodbc, token logins) selects the column:
    #: as text Arrow parses exactly (None: `expr` already arrives exactly)
    text_expr: str | None = None

    def select(self, exact_text: bool) -> str:
        return self.text_expr if exact_text and self.text_expr else self.expr


def describe_sql(select_sql: str) -> str:
    """The T-SQL that describes the columns `select_sql` returns, without running it."""
    literal = "N'" + select_sql.replace("'", "''") + "'"
    return (
        "SELECT name, system_type_name, precision, scale "
        f"FROM sys.dm_exec_describe_first_result_set({literal}, NULL, 0) "
        "WHERE is_hidden = 0 ORDER BY column_ordinal"
    )


def tsql_column(name: str, type_name: str, precision: int, scale: int) -> Column:
    """How to select a SQL Server column and the Arrow type it becomes."""
    q = TSQL.quote(name)
    m = _TYPE.match(type_name.strip().lower())
    base = m.group(1) if m else type_name.lower()
    ints = {"tinyint": pa.uint8(), "smallint": pa.int16(), "int": pa.int32(), "bigint": pa.int64()}
    if base in ints:
        return Column(name, q, ints[base], ints[base])
    if base == "bit":
        return Column(name, q, pa.bool_(), pa.bool_())
    if base in ("decimal", "numeric", "money", "smallmoney"):
        p, s = {"money": (19, 4), "smallmoney": (10, 4)}.get(base, (precision, scale))
        return Column(name, q, pa.decimal128(p, s), pa.decimal128(p, s))
    if base in ("real", "float"):
        typ = pa.float32() if base == "real" or precision <= 24 else pa.float64()
        return Column(name, q, typ, typ)
    if base == "date":
        return Column(name, q, pa.date32(), pa.date32())
    unit = "ns" if scale > 6 else "us"
    if base in ("datetime2", "datetime", "smalldatetime"):
        # a Python datetime stops at microseconds: 100 ns digits travel as ISO text (style 121)
        text = f"CONVERT(varchar(27), {q}, 121) AS {q}" if unit == "ns" else None
        return Column(name, q, pa.timestamp(unit), pa.timestamp(unit), text)
    if base == "datetimeoffset":
        utc = f"CAST(SWITCHOFFSET({q}, '+00:00') AS datetime2({scale}))"
        text = f"CONVERT(varchar(27), {utc}, 121) AS {q}" if unit == "ns" else None
        return Column(name, f"{utc} AS {q}", pa.timestamp(unit), pa.timestamp(unit, tz="UTC"), text)
    if base == "time":
        part = "NANOSECOND" if unit == "ns" else "MICROSECOND"
        expr = f"DATEDIFF_BIG({part}, CAST('00:00:00' AS time(7)), {q}) AS {q}"
        return Column(name, expr, pa.int64(), pa.time64(unit))
    if base == "uniqueidentifier":
        return Column(name, f"LOWER(CONVERT(char(36), {q})) AS {q}", pa.string(), pa.string())
    if base in ("char", "varchar", "text", "nchar", "nvarchar", "ntext", "sysname"):
        return Column(name, q, pa.string(), pa.string())
    if base in ("binary", "varbinary", "image", "timestamp", "rowversion"):
        return Column(name, q, pa.binary(), pa.binary())
    if base in ("geometry", "geography"):
        return Column(name, f"{q}.STAsText() AS {q}", pa.string(), pa.string())
    # xml, sql_variant, hierarchyid and anything newer: SQL Server's own text is exact
    return Column(name, f"CONVERT(nvarchar(max), {q}) AS {q}", pa.string(), pa.string())


class MssqlHome(HomeBlock):
    """Reads tables or queries from SQL Server or Azure SQL as Arrow batches (arrow-odbc).

    Types map exactly: integers by width (`tinyint` as uint8), `decimal(p,s)`/`money` to
    decimals, `real`/`float` to float32/float64, `date`, `time`, `datetime2` (nanoseconds at
    scale 7), `datetimeoffset` as UTC timestamps, `bit`, `uniqueidentifier` as text,
    `varbinary`, text up to `max_text_size` (a longer value fails the read, never truncates).

    Example:
        ```python
        from blocks import MssqlHome
        home = MssqlHome.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "SQL Server Home"
    _block_type_slug = "mssql-home"
    _description = "A SQL Server or Azure SQL database as a hygge Home."
    _documentation_url = "https://learn.microsoft.com/sql/connect/odbc/"  # type: ignore[assignment]
    spec_type = "mssql"
    location_fields = ("host", "port", "database")
    dialect: ClassVar[Dialect] = TSQL
    reads_changes: ClassVar[bool] = True
    #: the statements of a Change Tracking read (`changes: change_tracking`)
    tracking: ClassVar[_mssql_ct.TrackingSql] = _mssql_ct.TSQL_TRACKING

    host: str = Field(
        description="Server host name or address (e.g. `myserver.database.windows.net`)."
    )
    port: int = Field(default=1433, description="Server TCP port.")
    database: str = Field(description="Database name.")
    credentials: SqlServerCredentials = Field(description="Who connects: a credentials block.")
    driver: str = Field(
        default="auto",
        description="ODBC driver name or library path; `auto` tries Driver 18, 17, then FreeTDS.",
    )
    encrypt: Literal["yes", "no", "strict"] = Field(
        default="yes", description="Encrypt the connection: yes, no or strict (TDS 8)."
    )
    trust_server_certificate: bool = Field(
        default=False, description="Accept a server certificate no authority vouches for."
    )
    connect_timeout: int = Field(default=15, ge=1, description="Seconds to wait for a login.")
    query_timeout: int = _sql_fields.query_timeout()
    max_connections: int = _sql_fields.max_connections()
    max_text_size: int = Field(
        default=16_384,
        ge=1,
        description="Buffer bytes per unbounded text value; a longer value fails the read.",
    )
    max_binary_size: int = Field(
        default=16_384,
        ge=1,
        description="Buffer bytes per unbounded binary value; a longer value fails the read.",
    )
    partition_column: str | None = _sql_fields.partition_column("SQL Server", "an identity key")
    partitions: int = _sql_fields.partitions()

    # --- public interface -------------------------------------------------------------

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        base = _sql.base_select(self.dialect, request)
        opts = self.fetch_options()
        wanted = self.partitions if self.partition_column else 1
        with connection_slots(self.identity(), wanted, self.max_connections) as granted:
            plan = self._guard(request, lambda: self._plan(opts, request, base, granted))
            if len(plan) == 1:
                yield from self._stream(opts, request, *plan[0])
                return
            streams = [partial(self._stream, opts, request, sql, b, c) for sql, b, c in plan]
            yield from merge_streams(streams, queue_size=2 * len(streams))

    def read_changes(
        self, request: ReadRequest, keys: list[str], version: int | None
    ) -> ChangeRead:
        return _mssql_ct.read_changes(self, request, keys, version)

    def check(self, request: ReadRequest) -> None:
        _sql.check_read(self, request)

    def describe(self, request: ReadRequest) -> str:
        what = f"table {request.table}" if request.table else "query"
        return f"mssql {self.host},{self.port}/{self.database} {what}"

    def identity(self) -> str:
        who = self.credentials.username or self.credentials.client_id or "identity"
        return f"mssql:{who}@{self.host},{self.port}/{self.database}"

    def connection_string(self) -> str:
        """The ODBC connection string (it holds the secret: never log it)."""
        driver, family = _odbc.resolve_driver(self.driver)
        pairs: dict[str, str | None] = {"Driver": driver}
        if family == "freetds":
            pairs |= {"Server": self.host, "Port": str(self.port), "TDS_Version": "7.4"}
            pairs |= {"ClientCharset": "UTF-8", "Encryption": _freetds_encrypt(self.encrypt)}
        else:
            pairs |= {"Server": f"tcp:{self.host},{self.port}", "Encrypt": self.encrypt}
            pairs |= {"TrustServerCertificate": "yes" if self.trust_server_certificate else "no"}
            pairs |= {"APP": "hygge"}
        pairs |= {"Database": self.database, **self.credentials.odbc_login(family)}
        return _odbc.connection_string(pairs)

    def fetch_options(self) -> _odbc.FetchOptions:
        """How to connect and read; a token login reads through pyodbc (see `_odbc`)."""
        token = self.credentials.attrs_before if self.credentials.uses_token else None
        return _odbc.FetchOptions(
            connection_string=self.connection_string(),
            max_text_size=self.max_text_size,
            max_binary_size=self.max_binary_size,
            login_timeout=self.connect_timeout,
            query_timeout=self.query_timeout,
            attrs_before=token,
        )

    # --- reading --------------------------------------------------------------------

    def _plan(
        self, opts: _odbc.FetchOptions, request: ReadRequest, base: str, granted: int
    ) -> list[tuple[str, Binder, list[Column]]]:
        columns = self.columns(opts, base, request)
        names = [c.name for c in columns]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            listed = ", ".join(map(repr, dupes))
            msg = f"the source returns column(s) {listed} more than once; alias them"
            raise ConfigError(msg, entity=request.entity)
        types = {c.name: c.arrow or c.fetch for c in columns}
        select_list = [c.select(exact_text=opts.attrs_before is not None) for c in columns]
        binder = Binder(qmark)
        predicates = []
        if request.since is not None:
            since = request.since
            kind = _sql.check_since(since, types.get(since.sources[0]), request.entity)
            arrow = types[since.sources[0]]
            assert arrow is not None
            predicates.append(_sql.since_predicate(self.dialect, since, kind, arrow, binder))
        single = [
            (_sql.final_select(self.dialect, request, select_list, predicates), binder, columns)
        ]
        if not (self.partition_column and granted > 1):
            return single
        col = self.partition_column
        arrow = types.get(col)
        part_kind = _sql.watermark_kind(arrow) if arrow is not None else None
        if arrow is None or part_kind not in ("int", "date", "timestamp", "timestamptz"):
            msg = (
                f"partition_column {col!r} must be an integer, date or datetime column the "
                f"source returns (it reads as {arrow})"
            )
            raise ConfigError(msg, entity=request.entity)
        q = self.dialect.quote(col)
        bounds = _sql.final_select(
            self.dialect, request, [f"MIN({q}) AS lo", f"MAX({q}) AS hi"], predicates
        )
        rows = pa.Table.from_batches(list(_odbc.fetch(opts, bounds, binder.values, 10))).to_pylist()
        points = _sql.split_points(rows[0]["lo"], rows[0]["hi"], granted) if rows else []
        if not points:
            return single
        copy = binder.copy
        ranges = _sql.range_predicates(
            self.dialect, col, points, self.dialect.cast_type(part_kind, arrow), copy
        )
        return [
            (_sql.final_select(self.dialect, request, select_list, [*predicates, p]), b, columns)
            for p, b in ranges
        ]

    def columns(self, opts: _odbc.FetchOptions, base: str, request: ReadRequest) -> list[Column]:
        """SQL Server's own description of the source's columns (types ODBC would blur)."""
        reader = _odbc.fetch(opts, describe_sql(base), [], 1000, lambda s: s)
        rows = pa.Table.from_batches(list(reader), schema=reader.schema).to_pylist()
        if not rows:
            msg = f"the source describes no columns: {base}"
            raise HomeError(msg, entity=request.entity)
        return [
            tsql_column(r["name"], r["system_type_name"], r["precision"] or 0, r["scale"] or 0)
            for r in rows
        ]

    def probe_columns(
        self, opts: _odbc.FetchOptions, base: str, request: ReadRequest
    ) -> list[Column]:
        """Any ODBC source: the columns a zero-row probe reports, floats fetched as float64."""
        reader = _odbc.fetch(opts, self.dialect.probe(base), [], 1)
        return [Column(f.name, self.dialect.quote(f.name), f.type, None) for f in reader.schema]

    def _stream(
        self,
        opts: _odbc.FetchOptions,
        request: ReadRequest,
        sql: str,
        binder: Binder,
        columns: list[Column],
    ) -> Iterator[pa.RecordBatch]:
        types = fetch_types(columns)
        reader = self._guard(
            request, lambda: _odbc.fetch(opts, sql, binder.values, request.batch_size, types)
        )
        yield from self.batches(request, reader, columns)

    def batches(
        self, request: ReadRequest, reader: Any, columns: list[Column]
    ) -> Iterator[pa.RecordBatch]:
        """The batches of a `fetch` reader's current result set, as `columns` say they read."""
        target = pa.schema(
            pa.field(c.name, c.arrow or t)
            for c, t in zip(columns, reader.schema.types, strict=True)
        )
        convert = partial(_conform, schema=target, entity=request.entity)
        it = _odbc.stream(reader, target, request.entity, convert)
        while True:
            batch = self._guard(request, lambda: next(it, None))
            if batch is None:
                return
            yield batch

    def _guard(self, request: ReadRequest, step: Any) -> Any:
        """Run one driver step, turning driver errors into HomeErrors that say what to fix."""
        import pyodbc
        from arrow_odbc import Error as OdbcError

        try:
            return step()
        except HyggeError as exc:
            if exc.entity is None:  # e.g. no Entra ID token could be fetched
                raise type(exc)(exc.msg, entity=request.entity) from exc.__cause__
            raise
        except (OdbcError, pyodbc.Error) as exc:
            where = f"SQL Server at {self.host},{self.port}/{self.database}"
            limits = f"max_text_size={self.max_text_size}, max_binary_size={self.max_binary_size}"
            secrets = self.credentials.secrets()
            raise _odbc.to_home_error(exc, request.entity, where, secrets, limits) from scrubbed(
                exc, secrets
            )  # the driver may echo the connection string


def fetch_types(columns: list[Column]) -> Any:
    """What arrow-odbc is asked for, per column (`Column.fetch`, else what it infers)."""

    def types(inferred: pa.Schema) -> pa.Schema:
        return pa.schema(
            pa.field(f.name, c.fetch or f.type) for f, c in zip(inferred, columns, strict=True)
        )

    return types


def _freetds_encrypt(encrypt: str) -> str:
    return {"yes": "require", "no": "request", "strict": "strict"}[encrypt]


def _conform(batch: pa.RecordBatch, schema: pa.Schema, entity: str) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    cols = []
    for i, f in enumerate(schema):
        col = batch.column(i)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                msg = f"column {f.name!r} cannot become {f.type}: {exc}"
                raise HomeError(msg, entity=entity) from exc
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, schema=schema)

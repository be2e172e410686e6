"""SQL text for every SQL Home: identifier quoting per dialect, the SELECT, the watermark bound.

One place builds the statements so that quoting and the incremental predicate cannot drift
between Homes. Values never enter SQL text: each Home supplies a `Binder` that turns a value
into a bound placeholder expression (`?` for ODBC and SQLite; a session setting for the
PostgreSQL COPY path, see `blocks.homes.postgres`), or, where the driver binds nothing
(connectorx, MySQL), into a hex literal that no value can break out of (`blocks.homes.mysql`).

The watermark predicate is `(column >= bound OR column IS NULL)`: a superset of what the engine
admits (`hygge_tasks.watermark` applies the exact, boundary-aware filter and counts the NULLs).
A superset is only guaranteed when the database orders values the way Arrow does, so text is
compared under a binary collation (`COLLATE "C"` / `Latin1_General_100_BIN2`): a linguistic
collation may sort `b` before `B` and silently drop rows the engine would keep. MySQL's `_bin`
collations pad with spaces (`'a\t' < 'a'`), so MySQL compares the UTF-8 bytes themselves.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa

from blocks.base import HomeBlock, ReadRequest, Since
from hygge_core.errors import ConfigError
from hygge_core.timestamps import NanoTimestamp

#: what a watermark column is, as far as pushing its bound into SQL is concerned
Kind = Literal["timestamp", "timestamptz", "date", "int", "decimal", "float", "text"]


@dataclass(frozen=True)
class Dialect:
    """How one database spells identifiers, a zero-row probe and the bound casts."""

    name: str
    open_quote: str
    close_quote: str
    #: the most parts a table name may have (`schema.table` = 2)
    max_parts: int
    #: how text is compared in code-point order: a `COLLATE` suffix, or a template with `{col}`
    binary_collation: str
    #: the SQL type a bound value is cast to, per watermark kind (empty: bound values are
    #: compared as given, e.g. SQLite's text timestamps)
    cast_types: dict[str, str] = field(default_factory=dict)
    #: whether a table name's dots separate schema and table (SQLite: one identifier)
    dotted_tables: bool = True

    def quote(self, ident: str) -> str:
        """Quote one identifier: any name is legal, nothing is injected."""
        if "\x00" in ident:
            msg = f"identifier {ident!r} contains a NUL character"
            raise ConfigError(msg)
        closing = self.close_quote
        return self.open_quote + ident.replace(closing, closing * 2) + closing

    def table(self, name: str) -> str:
        """A (possibly schema-qualified) table name from a spec, quoted part by part."""
        if not self.dotted_tables:
            return self.quote(name)
        parts = split_name(name)
        if len(parts) > self.max_parts:
            msg = (
                f"table {name!r} has {len(parts)} name parts; {self.name} accepts at most "
                f'{self.max_parts}. Quote a part that contains a dot: "my.table"'
            )
            raise ConfigError(msg)
        return ".".join(self.quote(p) for p in parts)

    def binary_text(self, col: str) -> str:
        """`col` as text that compares byte by byte (code point order, as Arrow compares)."""
        if "{col}" in self.binary_collation:
            return self.binary_collation.format(col=col)
        return f"{col} {self.binary_collation}"

    def probe(self, select_sql: str) -> str:
        """A statement with the same columns as `select_sql` that returns no rows."""
        return f"SELECT * FROM ({select_sql}) AS hygge_probe WHERE 1 = 0"

    def cast_type(self, kind: Kind, arrow_type: pa.DataType | None) -> str | None:
        """The SQL type a bound value of `kind` is cast to (None: the dialect casts nothing)."""
        if not self.cast_types:
            return None
        if kind == "decimal" and "decimal" in self.cast_types:
            assert isinstance(arrow_type, pa.Decimal128Type | pa.Decimal256Type)
            return self.cast_types["decimal"].format(p=arrow_type.precision, s=arrow_type.scale)
        return self.cast_types[kind]


POSTGRES = Dialect(
    name="PostgreSQL",
    open_quote='"',
    close_quote='"',
    max_parts=3,
    binary_collation='COLLATE "C"',
    cast_types={
        "timestamp": "timestamp",
        "timestamptz": "timestamptz",
        "date": "date",
        "int": "bigint",
        "decimal": "numeric",
        "float": "double precision",
        "text": "text",
    },
)
SQLITE = Dialect(
    name="SQLite",
    open_quote='"',
    close_quote='"',
    max_parts=2,
    binary_collation="COLLATE BINARY",
    dotted_tables=False,  # a dot is part of the name, as SqliteHome always read it
)
TSQL = Dialect(
    name="SQL Server",
    open_quote="[",
    close_quote="]",
    max_parts=3,
    binary_collation="COLLATE Latin1_General_100_BIN2",
    cast_types={
        "timestamp": "datetime2(7)",
        "timestamptz": "datetimeoffset(7)",
        "date": "date",
        "int": "bigint",
        "decimal": "decimal({p}, {s})",
        "float": "float",
        "text": "nvarchar(max)",
    },
)
MYSQL = Dialect(
    name="MySQL",
    open_quote="`",
    close_quote="`",
    max_parts=2,  # database.table
    # `utf8mb4_bin` pads with spaces; the bytes of the UTF-8 text compare in code point order
    binary_collation="CAST(CONVERT({col} USING utf8mb4) AS BINARY)",
    cast_types={
        "timestamp": "DATETIME(6)",
        "timestamptz": "DATETIME(6)",  # the session's time zone is UTC
        "date": "DATE",
        "int": "SIGNED",
        "decimal": "DECIMAL({p}, {s})",
        "float": "DOUBLE",
        "text": "BINARY",
    },
)


def split_name(name: str) -> list[str]:
    """Split `schema.table` into parts; `"..."` or `[...]` quote a part (`""` / `]]` escape).

    An unquoted part is taken literally (spaces, unicode and case kept) with surrounding
    whitespace removed, so `sales.Order Lines` is the schema `sales`, table `Order Lines`.
    """
    parts: list[str] = []
    i, n = 0, len(name)
    while True:
        while i < n and name[i].isspace():
            i += 1
        if i < n and name[i] in '"[':
            close = '"' if name[i] == '"' else "]"
            i += 1
            buf = []
            while True:
                if i >= n:
                    msg = f"table name {name!r}: unterminated quoted part"
                    raise ConfigError(msg)
                if name[i] == close:
                    if i + 1 < n and name[i + 1] == close:
                        buf.append(close)
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(name[i])
                i += 1
            part = "".join(buf)
            while i < n and name[i].isspace():
                i += 1
            if i < n and name[i] != ".":
                msg = f"table name {name!r}: expected '.' after a quoted part"
                raise ConfigError(msg)
        else:
            end = name.find(".", i)
            end = n if end < 0 else end
            part = name[i:end].strip()
            i = end
        if not part:
            msg = f"table name {name!r} has an empty part"
            raise ConfigError(msg)
        parts.append(part)
        if i >= n:
            return parts
        i += 1  # the dot


class Binder:
    """Collects bound values and renders each one's placeholder, cast to the column's type.

    `to_param` turns a watermark value into what the driver binds: ISO text by default (every
    ODBC and PostgreSQL bound is cast back in SQL); SQLite binds native values instead.
    `render`, for a driver without bind parameters, turns the bound value into SQL text
    itself: a literal no value can break out of (`blocks.homes.mysql`), in place of a mark.
    """

    def __init__(
        self,
        placeholder: Callable[[int], str],
        to_param: Callable[[Any], Any] | None = None,
        render: Callable[[Any], str] | None = None,
    ) -> None:
        self.values: list[Any] = []
        self._placeholder = placeholder
        self._to_param = to_param or param_text
        self._render = render

    def copy(self) -> Binder:
        """A binder holding the same values, whose binds leave this one's alone (a range each)."""
        new = Binder(self._placeholder, self._to_param, self._render)
        new.values = list(self.values)
        return new

    def bind(self, value: Any, sql_type: str | None) -> str:
        param = self._to_param(value)
        self.values.append(param)
        mark = self._render(param) if self._render else self._placeholder(len(self.values))
        return f"CAST({mark} AS {sql_type})" if sql_type else mark


def qmark(_: int) -> str:
    return "?"


def param_text(value: Any, fraction_digits: int = 7) -> str:
    """A value as text every supported database parses back exactly (ISO dates, plain decimals).

    A nanosecond timestamp keeps `fraction_digits` (SQL Server's `datetime2(7)`: 100 ns), cut,
    not rounded: the bound is then at or before the value, so the read admits a superset and
    the engine's exact filter (`hygge_tasks.watermark`) does the rest.
    """
    if isinstance(value, NanoTimestamp):
        return value.isoformat(fraction_digits)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")  # never `1E+3`: SQL Server's CAST rejects exponents
    if isinstance(value, bool):
        msg = "a boolean watermark cannot be pushed down"
        raise ConfigError(msg)
    return str(value)


def watermark_kind(arrow_type: pa.DataType) -> Kind | None:
    """The push-down kind of a column read as `arrow_type`, or None if it cannot be a bound."""
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_decimal(arrow_type):
        return "decimal"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    return None


def check_since(since: Since, arrow_type: pa.DataType | None, entity: str) -> Kind:
    """Validate the stored watermark against the source column before any row is read."""
    if arrow_type is None:
        msg = (
            f"watermark column {since.column!r} is not among the columns the source returns; "
            "add it to `columns` (or the query) or fix the watermark column name"
        )
        raise ConfigError(msg, entity=entity)
    kind = watermark_kind(arrow_type)
    if kind is None:
        msg = (
            f"watermark column {since.column!r} reads as {arrow_type}; an incremental load needs "
            "a datetime, date, integer, decimal or text column"
        )
        raise ConfigError(msg, entity=entity)
    value = since.value
    nanos = isinstance(value, NanoTimestamp)
    fits = {
        "timestamp": (isinstance(value, dt.datetime) and value.tzinfo is None)
        or (nanos and not value.utc),
        "timestamptz": (isinstance(value, dt.datetime) and value.tzinfo is not None)
        or (nanos and value.utc),
        "date": isinstance(value, dt.date) and not isinstance(value, dt.datetime),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "decimal": isinstance(value, decimal.Decimal | int) and not isinstance(value, bool),
        "float": isinstance(value, float | int) and not isinstance(value, bool),
        "text": isinstance(value, str),
    }[kind]
    if not fits:
        msg = (
            f"the stored watermark {value!r} ({type(value).__name__}) does not fit column "
            f"{since.column!r}, which now reads as {arrow_type}: the column's type changed since "
            "the last run. Run this entity with --full-drop to reload it and reset the watermark"
        )
        raise ConfigError(msg, entity=entity)
    return kind


def value_kind(value: Any) -> Kind:
    """The kind of a stored watermark value, for a Home that binds before it knows the column."""
    if isinstance(value, NanoTimestamp):
        return "timestamptz" if value.utc else "timestamp"
    if isinstance(value, dt.datetime):
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, bool | int):
        return "int"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, float):
        return "float"
    return "text"


def since_predicate(
    dialect: Dialect, since: Since, kind: Kind, arrow_type: pa.DataType | None, binder: Binder
) -> str:
    """`(column >= bound OR column IS NULL)`, the bound cast to the column's kind."""
    col = since_expr(dialect, since)
    lhs = dialect.binary_text(col) if kind == "text" else col
    bound = binder.bind(since.value, dialect.cast_type(kind, arrow_type))
    return f"({lhs} >= {bound} OR {col} IS NULL)"


def since_expr(dialect: Dialect, since: Since) -> str:
    """The watermark as SQL: its quoted column, or `COALESCE(a, b, ...)` of a list of them."""
    quoted = [dialect.quote(c) for c in since.sources]
    return quoted[0] if len(quoted) == 1 else f"COALESCE({', '.join(quoted)})"


def source_sql(dialect: Dialect, request: ReadRequest) -> str:
    """The FROM item: the quoted table, or the query as a derived table."""
    if bool(request.table) == bool(request.query):
        msg = "give exactly one of `table` or `query`"
        raise ConfigError(msg, entity=request.entity)
    if request.table:
        return dialect.table(request.table)
    query = (request.query or "").strip().rstrip(";")
    return f"({query}) AS hygge_q"


def base_select(dialect: Dialect, request: ReadRequest) -> str:
    """The entity's rows before any incremental bound: projection, source and `where`."""
    cols = ", ".join(dialect.quote(c) for c in request.columns) if request.columns else "*"
    sql = f"SELECT {cols} FROM {source_sql(dialect, request)}"
    if request.where:
        sql += f" WHERE ({request.where})"
    return sql


def final_select(
    dialect: Dialect,
    request: ReadRequest,
    select_list: list[str],
    predicates: list[str],
) -> str:
    """The statement that reads: explicit select list (with casts) and every predicate ANDed."""
    conditions = ([f"({request.where})"] if request.where else []) + predicates
    sql = f"SELECT {', '.join(select_list)} FROM {source_sql(dialect, request)}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    return sql


def range_predicates(
    dialect: Dialect,
    column: str,
    bounds: list[Any],
    sql_type: str | None,
    binder_for: Callable[[], Binder],
    nullable: bool = True,
) -> list[tuple[str, Binder]]:
    """One predicate per partition covering every row exactly once (NULLs in the first).

    `bounds` are the n-1 inner split points; the first range is open below and the last open
    above, so rows written after the split points were chosen still land in one partition.
    A column that cannot be NULL (SQLite's rowid) gets no `IS NULL` arm, which would turn the
    first range's index seek into a scan of the whole table.
    """
    col = dialect.quote(column)
    out: list[tuple[str, Binder]] = []
    for i in range(len(bounds) + 1):
        binder = binder_for()
        parts = []
        if i > 0:
            parts.append(f"{col} >= {binder.bind(bounds[i - 1], sql_type)}")
        if i < len(bounds):
            parts.append(f"{col} < {binder.bind(bounds[i], sql_type)}")
        pred = " AND ".join(parts) if parts else "1 = 1"
        pred = f"({pred} OR {col} IS NULL)" if i == 0 and nullable else f"({pred})"
        out.append((pred, binder))
    return out


def split_points(low: Any, high: Any, n: int) -> list[Any]:
    """n-1 increasing split points between `low` and `high` (ints, dates or datetimes)."""
    if n <= 1 or low is None or high is None or low >= high:
        return []
    if isinstance(low, dt.datetime | dt.date):
        step = (high - low) / n
        points = [low + step * i for i in range(1, n)]
    else:
        span = int(high) - int(low)
        points = [int(low) + span * i // n for i in range(1, n)]
    return sorted({p for p in points if low < p <= high})


def check_read(home: HomeBlock, request: ReadRequest) -> None:
    """`HomeBlock.check` for a SQL Home: the entity's own read, narrowed to no rows.

    The read runs as in a flow run (connection, login, column description, the SELECT with the
    entity's `columns` and `where`), with `AND 1 = 0` in its WHERE clause, which every
    supported database folds into "no rows" without scanning. So it fails exactly where a read
    would, with the Home's own error for the cause, and moves nothing.
    """
    where = f"({request.where}) AND 1 = 0" if request.where else "1 = 0"
    for _ in home.read(replace(request, where=where, since=None, batch_size=1)):
        pass

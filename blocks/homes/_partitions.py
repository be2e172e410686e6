"""Partitioned SQL reads: which columns a read can be split on, and the statement per range.

Every SQL Home splits the same way: the bounds of the partition column over the rows the read
admits, `n - 1` split points between them (`_sql.split_points`), and one statement per range
(`_sql.range_predicates`: every row exactly once, NULLs in the first).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from blocks.base import ReadRequest
from blocks.homes._sql import (
    Binder,
    Dialect,
    Kind,
    final_select,
    range_predicates,
    split_points,
    watermark_kind,
)
from hygge_core.errors import ConfigError

#: the kinds of column a read can be split on
PARTITION_KINDS = ("int", "date", "timestamp", "timestamptz")


def partition_kind(column: str, arrow_type: pa.DataType | None, entity: str) -> Kind:
    """The kind of a `partition_column`, or a ConfigError when a read cannot be split on it."""
    kind = watermark_kind(arrow_type) if arrow_type is not None else None
    if kind not in PARTITION_KINDS:
        msg = (
            f"partition_column {column!r} must be an integer, date or datetime column the "
            f"source returns (it reads as {arrow_type})"
        )
        raise ConfigError(msg, entity=entity)
    assert kind is not None
    return kind


def bounds_select(
    dialect: Dialect, request: ReadRequest, column: str, predicates: list[str]
) -> str:
    """`SELECT MIN(column) AS lo, MAX(column) AS hi` over the rows the read admits."""
    q = dialect.quote(column)
    return final_select(dialect, request, [f"MIN({q}) AS lo", f"MAX({q}) AS hi"], predicates)


def partition_selects(
    dialect: Dialect,
    request: ReadRequest,
    select_list: list[str],
    predicates: list[str],
    binder: Binder,
    column: str,
    arrow_type: pa.DataType,
    low: Any,
    high: Any,
    n: int,
) -> list[tuple[str, Binder]]:
    """The read as up to `n` statements over ranges of `column` between `low` and `high`.

    One statement (the unsplit read) when the range cannot be split.
    """
    points = split_points(low, high, n)
    if not points:
        return [(final_select(dialect, request, select_list, predicates), binder)]
    kind = partition_kind(column, arrow_type, request.entity)
    ranges = range_predicates(
        dialect, column, points, dialect.cast_type(kind, arrow_type), binder.copy
    )
    return [
        (final_select(dialect, request, select_list, [*predicates, pred]), part)
        for pred, part in ranges
    ]

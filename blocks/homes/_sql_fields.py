"""Settings the SQL Homes share, declared once: timeouts, `max_connections`, partitions.

Each function returns a new pydantic `Field` with the same default, bounds and description, so
the Homes' block schemas stay as they were (a field's schema is part of its checksum).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field


def connect_timeout() -> Any:
    return Field(default=15, ge=1, description="Seconds to wait for a connection.")


def query_timeout() -> Any:
    return Field(
        default=0, ge=0, description="Seconds a read may run before it is cancelled (0: none)."
    )


def max_connections() -> Any:
    return Field(
        default=4,
        ge=1,
        description="How many connections the entities of one flow may hold to this Home at once.",
    )


def partition_column(server: str, stable_key: str) -> Any:
    """For a server whose connections share no snapshot: which columns are safe to split on."""
    return Field(
        default=None,
        description="An integer, date or datetime column to split one read into ranges. Each "
        f"range has its own connection and {server} shares no snapshot between connections: "
        f"pick a column whose values never change ({stable_key}, a creation date), or a row "
        "moved between ranges during the read may be read twice or missed.",
    )


def partitions() -> Any:
    return Field(
        default=1, ge=1, le=64, description="How many ranges to read in parallel (1: no split)."
    )

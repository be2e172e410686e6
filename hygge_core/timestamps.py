"""Timestamps finer than a Python datetime: SQL Server `datetime2(7)`, Arrow `timestamp[ns]`."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pyarrow as pa

_NS_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{9})(\+00:00)?$")


@dataclass(frozen=True, order=True)
class NanoTimestamp:
    """A timestamp to the nanosecond: `ns` since the Unix epoch; UTC when `utc`, else naive.

    The ledger stores it as ISO text with nine fraction digits (`2024-05-01T12:00:00.123456789`,
    `+00:00` appended when `utc`): JSON-safe, readable, exact.
    """

    ns: int
    utc: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.timestamp("ns", tz="UTC" if self.utc else None)

    def scalar(self) -> pa.Scalar:
        return pa.scalar(self.ns, pa.int64()).cast(self.arrow_type)

    def floor_datetime(self) -> dt.datetime:
        """The microsecond at or before this instant (for bounds a driver cannot carry finer)."""
        micros, _ = divmod(self.ns, 1000)
        value = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)
        return value.replace(tzinfo=dt.UTC) if self.utc else value

    def isoformat(self, digits: int = 9) -> str:
        """ISO text with `digits` fraction digits, truncated (a floor: never after the value)."""
        seconds, fraction = divmod(self.ns, 1_000_000_000)
        base = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
        text = base.isoformat(timespec="seconds")
        if digits:
            text += "." + f"{fraction:09d}"[:digits]
        return text + ("+00:00" if self.utc else "")

    @classmethod
    def fromisoformat(cls, text: str) -> NanoTimestamp:
        m = _NS_ISO.match(text)
        if m is None:
            msg = f"{text!r} is not a nanosecond timestamp (YYYY-MM-DDTHH:MM:SS.fffffffff)"
            raise ValueError(msg)
        base = dt.datetime.fromisoformat(m.group(1))
        seconds = (base - dt.datetime(1970, 1, 1)) // dt.timedelta(seconds=1)
        return cls(seconds * 1_000_000_000 + int(m.group(2)), utc=m.group(3) is not None)

    @classmethod
    def from_scalar(cls, scalar: pa.Scalar) -> NanoTimestamp:
        typ = scalar.type
        if not pa.types.is_timestamp(typ) or typ.unit != "ns":
            msg = f"not a nanosecond timestamp: {typ}"
            raise TypeError(msg)
        # tz-aware Arrow timestamps hold UTC epoch values already
        return cls(scalar.cast(pa.int64()).as_py(), utc=typ.tz is not None)

    def __str__(self) -> str:
        return self.isoformat()

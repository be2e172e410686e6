"""MySQL and MariaDB column types: how each is selected and the Arrow type it becomes.

The description comes from the server's own result metadata (type code, length, decimals,
flags, character set) of a zero-row probe, so a `query` is described as exactly as a table.
What connectorx (the bulk reader) would do unaided, measured on MariaDB 10.11 with 0.4.6:
DECIMAL rounds to `decimal128(38, 10)` (38,20 loses digits without a word; 65,30 panics),
zero dates and a TIME past 24 hours panic, TIMESTAMP follows the session's time zone. So:
- DECIMAL(p,s) becomes `decimal128(p, s)` (`decimal256` past 38): read by connectorx where its
  decimal holds every value (s <= 10, p - s <= 18; the cast back fails on any loss), else as
  the server's text (the text costs ~0.5 s per 1M rows of one column);
- unsigned integers widen to the next signed type; BIGINT UNSIGNED becomes
  `decimal128(20, 0)`: every Store holds it (Delta has no unsigned types, and `int64` stops
  at 2^63 - 1), where `uint64` would fail a Delta or Open Mirroring load on large values;
- TIMESTAMP is read in a UTC session, as UTC instants; DATETIME as naive timestamps;
- TIME becomes `time64("us")`; a negative TIME or one of 24 hours or more (MySQL's TIME is a
  duration) is refused, never wrapped;
- a zero date (`0000-00-00`, or a zero month or day) is refused, never turned into a date.
  connectorx fails on such values itself (a Rust panic); the Home then finds which column
  holds one (its guard, `MONTH(c) = 0 OR ...`) and names it. Reading the guards beside every
  row instead cost ~0.8 s per 1M rows with two date columns;
- BIT(1) becomes a boolean, BIT(n) an integer (`decimal128(20, 0)` at 64 bits);
- JSON, ENUM, SET, UUID and INET6 as text, geometry as WKT; binary strings and BLOBs as
  binary; YEAR as int16.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from blocks.homes._guarded import Column
from blocks.homes._sql import MYSQL

# pymysql.constants.FIELD_TYPE and FLAG: the protocol's own numbers
_TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _NULL, _TIMESTAMP = 1, 2, 3, 4, 5, 6, 7
_LONGLONG, _INT24, _DATE, _TIME, _DATETIME, _YEAR, _NEWDATE = 8, 9, 10, 11, 12, 13, 14
_BIT, _JSON, _DECIMAL, _NEWDECIMAL, _GEOMETRY = 16, 245, 0, 246, 255
_TEXTS = {15, 249, 250, 251, 252, 253, 254, 247, 248}  # varchar, blobs, strings, enum, set
_UNSIGNED = 32
_BINARY_CHARSET = 63

_SIGNED_INTS = {_TINY: pa.int8(), _SHORT: pa.int16(), _INT24: pa.int32(), _LONG: pa.int32()}
_WIDER_INTS = {_TINY: pa.int16(), _SHORT: pa.int32(), _INT24: pa.int32(), _LONG: pa.int64()}
UINT64 = pa.decimal128(20, 0)  # every BIGINT UNSIGNED value, in a type every Store takes

# connectorx decodes DECIMAL through rust_decimal (28 digits) into decimal128(38, 10): exact for
# at most 10 fraction digits and 18 before the point; wider ones travel as text
_CX_SCALE, _CX_INTEGER_DIGITS = 10, 18

#: how a user reads a column as MySQL's own text (`{q}`: the quoted column)
AS_TEXT = "CAST({q} AS CHAR)"


def column(field: Any) -> Column:
    """How to select one result column (a pymysql field descriptor) and what it becomes."""
    name: str = field.name
    code: int = field.type_code
    unsigned = bool(field.flags & _UNSIGNED)
    q = MYSQL.quote(name)
    as_text = Column(name, f"CAST({q} AS CHAR) AS {q}", pa.string())
    if code in _SIGNED_INTS:
        return Column(name, q, (_WIDER_INTS if unsigned else _SIGNED_INTS)[code])
    if code == _LONGLONG:
        return Column(name, q, UINT64 if unsigned else pa.int64())
    if code == _YEAR:
        return Column(name, q, pa.int16())
    if code == _FLOAT:
        return Column(name, q, pa.float32())
    if code == _DOUBLE:
        return Column(name, q, pa.float64())
    if code in (_DECIMAL, _NEWDECIMAL):
        return _decimal(name, q, field.length, field.scale, unsigned)
    if code in (_DATE, _NEWDATE, _DATETIME, _TIMESTAMP):
        return _datetime(name, q, code)
    if code == _TIME:
        return Column(
            name,
            q,
            pa.time64("us"),
            guard=f"{q} < '00:00:00' OR {q} >= '24:00:00'",
            refusal="a TIME below 00:00:00 or of 24 hours or more (a duration, not a time of day)",
            read_guard=False,
        )
    if code == _BIT:
        bits = int(field.length)
        typ = pa.bool_() if bits == 1 else (UINT64 if bits == 64 else pa.int64())
        return Column(name, f"CAST({q} AS UNSIGNED) AS {q}", typ)
    if code in _TEXTS:
        binary = field.charsetnr == _BINARY_CHARSET
        return Column(name, q, pa.binary() if binary else pa.string())
    if code == _GEOMETRY:
        return Column(name, f"ST_AsText({q}) AS {q}", pa.string())
    # JSON (MySQL's own type; MariaDB's is text), NULL and anything newer: the server's text
    return as_text


def _decimal(name: str, q: str, length: int, scale: int, unsigned: bool) -> Column:
    # the display length counts the digits, the point (when there is a fraction) and the sign
    precision = int(length) - (1 if scale else 0) - (0 if unsigned else 1)
    precision = max(precision, scale, 1)
    decimal = pa.decimal128 if precision <= 38 else pa.decimal256
    if scale <= _CX_SCALE and precision - scale <= _CX_INTEGER_DIGITS:
        # connectorx's decimal128(38, 10) holds every such value; the cast back is checked
        return Column(name, q, decimal(precision, scale))
    return Column(name, f"CAST({q} AS CHAR) AS {q}", decimal(precision, scale))


def _datetime(name: str, q: str, code: int) -> Column:
    typ = {
        _DATE: pa.date32(),
        _NEWDATE: pa.date32(),
        _DATETIME: pa.timestamp("us"),
        _TIMESTAMP: pa.timestamp("us", tz="UTC"),  # the session's time zone is UTC
    }[code]
    # connectorx fails on a zero date (it never makes one up); the guard then names the column
    return Column(
        name,
        q,
        typ,
        guard=f"MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0",
        refusal="a zero date (`0000-00-00`, or a zero month or day)",
        read_guard=False,
    )

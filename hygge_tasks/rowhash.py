"""Row hashes that never change: SHA-256 over a canonical encoding, computed batch-wide.

The encoding is part of hygge's contract (an ID written today must equal the ID written for the
same values in five years, on any machine, with any library version), so it is built from
integers and raw bytes only, never from a library's text formatting of floats or decimals.

For each listed column, in the listed order, the row contributes one field:

    NULL     `-`
    a value  `<n>:<payload>`, with `<n>` the payload's length in bytes, in decimal

The fields are concatenated without separators (each is self-delimiting, so `("ab", "c")` and
`("a", "bc")` differ, and a NULL differs from an empty string, which is `0:`). Payloads:

    string            its UTF-8 bytes
    binary            the bytes
    boolean           `true` or `false`
    integer           decimal digits, with `-` when negative
    decimal           digits and exponent with trailing zeros moved to the exponent:
                      12.50 -> `125e-1`, 1200 -> `12e2`, zero -> `0` (the scale does not matter)
    float             `nan`, or the IEEE-754 bits of the float64 value as a signed decimal
                      integer; -0.0 counts as 0.0
    date              days since 1970-01-01
    timestamp, time,  microseconds (since the epoch in UTC, since midnight, or in total) as
    duration          an integer; nanosecond values that are not whole microseconds are written
                      as nanoseconds followed by `n`

The ID is the first 16 bytes of SHA-256 of that byte string, as 32 lowercase hex characters;
`hashlib.sha256(encoding).hexdigest()[:32]` reproduces it, and so can a SQL engine. SHA-256
runs over all rows of a batch at once in NumPy (no Python loop per row).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["encode_column", "encode_rows", "row_hash", "sha256_prefix"]

_BIN = pa.large_binary()
_NULL_FIELD = pa.scalar(b"-", _BIN)
_COLON = pa.scalar(b":", _BIN)
_EMPTY = pa.scalar(b"", _BIN)
_TO_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}


def row_hash(columns: list[pa.Array]) -> pa.Array:
    """The 32-hex-character ID of each row of `columns` (never NULL)."""
    return sha256_prefix(encode_rows(columns))


def encode_rows(columns: list[pa.Array]) -> pa.Array:
    """The canonical byte string of each row (see the module docstring)."""
    fields = []
    for col in columns:
        payload = encode_column(col)
        length = pc.cast(pc.cast(pc.binary_length(payload), pa.string()), _BIN)
        field = pc.binary_join_element_wise(length, payload, _COLON)
        fields.append(pc.fill_null(field, _NULL_FIELD))
    return pc.binary_join_element_wise(*fields, _EMPTY)


def encode_column(col: pa.Array) -> pa.Array:
    """One column's payloads as large_binary, NULL where the value is NULL.

    Raises `TypeError` for types without a canonical form (lists, structs, maps).
    """
    t = col.type
    if pa.types.is_dictionary(t):
        return encode_column(col.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(len(col), _BIN)
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return pc.cast(pc.cast(col, pa.large_binary()), _BIN)
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return pc.cast(col, _BIN)
    if pa.types.is_boolean(t):
        return pc.if_else(col, pa.scalar(b"true", _BIN), pa.scalar(b"false", _BIN))
    if pa.types.is_integer(t):
        return _digits(col)
    if pa.types.is_decimal(t):
        return _decimal(col)
    if pa.types.is_floating(t):
        return _float(col)
    if pa.types.is_date(t):
        return _digits(col.cast(pa.date32(), safe=False).view(pa.int32()))
    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_time(t):
        return _micros(col.view(pa.int32() if t.bit_width == 32 else pa.int64()), t.unit)
    msg = f"a column of type {t} has no canonical form for hashing (use scalar columns)"
    raise TypeError(msg)


def _digits(ints: pa.Array) -> pa.Array:
    # an integer has exactly one decimal spelling, whatever library prints it
    return pc.cast(pc.cast(ints, pa.string()), _BIN)


def _decimal(col: pa.Array) -> pa.Array:
    t = col.type
    if t.bit_width < 128:
        col = col.cast(pa.decimal128(38, t.scale))
        t = col.type
    # the unscaled integer, zero-copy: Arrow prints small scaled values as `1E-10`, so the
    # decimal's own text is not a stable form
    unscaled = col.view(pa.decimal256(76, 0) if t.bit_width == 256 else pa.decimal128(38, 0))
    text = pc.cast(unscaled, pa.string())
    digits = pc.replace_substring_regex(text, "0+$", "")
    moved = pc.subtract(pc.utf8_length(text), pc.utf8_length(digits))
    exponent = pc.cast(pc.subtract(pc.cast(moved, pa.int64()), t.scale), pa.string())
    spelled = pc.binary_join_element_wise(digits, exponent, "e")
    return pc.cast(pc.if_else(pc.equal(text, "0"), "0", spelled), _BIN)


def _float(col: pa.Array) -> pa.Array:
    f = col.cast(pa.float64())
    f = pc.if_else(pc.equal(f, 0.0), 0.0, f)  # -0.0 equals 0.0; give both the bits of 0.0
    bits = pc.cast(f.view(pa.int64()), pa.string())
    return pc.cast(pc.if_else(pc.is_nan(f), "nan", bits), _BIN)


def _micros(ints: pa.Array, unit: str) -> pa.Array:
    ints = ints.cast(pa.int64())
    if unit != "ns":
        return _digits(pc.multiply_checked(ints, _TO_MICROS[unit]))
    micros = pc.divide(ints, 1000)
    whole = pc.equal(pc.multiply(micros, 1000), ints)
    nanos = pc.binary_join_element_wise(pc.cast(ints, pa.string()), "n", "")
    return pc.cast(pc.if_else(whole, pc.cast(micros, pa.string()), nanos), _BIN)


# -- SHA-256 (FIPS 180-4) over many messages at once ------------------------------------------

_K = np.array(
    [
        0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
        0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
        0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
        0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
        0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
        0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
        0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
        0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
        0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
        0xC67178F2,
    ],
    dtype=np.uint32,
)  # fmt: skip
_H0 = np.array(
    [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB,
     0x5BE0CD19],
    dtype=np.uint32,
)  # fmt: skip
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def sha256_prefix(messages: pa.Array) -> pa.Array:
    """The first 16 bytes of SHA-256 of each binary value, as lowercase hex strings."""
    n = len(messages)
    if n == 0:
        return pa.array([], pa.string())
    state = _sha256_states(*_message_bytes(messages))
    digest = np.ascontiguousarray(state[:4].T).astype(">u4").view(np.uint8).reshape(n, 16)
    text = np.empty((n, 32), dtype=np.uint8)
    text[:, 0::2] = _HEX[digest >> 4]
    text[:, 1::2] = _HEX[digest & 15]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())]
    )


def _message_bytes(messages: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a binary array, without copying the data."""
    arr = messages.cast(_BIN) if messages.type != _BIN else messages
    _, off_buf, data_buf = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(off_buf, dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    if data_buf is None:
        return np.zeros(0, dtype=np.uint8), offsets
    return np.frombuffer(data_buf, dtype=np.uint8), offsets


def _sha256_states(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """SHA-256 states (8 x n words) of the n messages `data[offsets[i]:offsets[i+1]]`.

    Messages are padded into one buffer of 64-byte blocks; rows are sorted by block count so
    that block j is processed for a prefix of the rows, all of them at once.
    """
    n = len(offsets) - 1
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    blocks = (lengths + 8) // 64 + 1
    order = np.argsort(-blocks, kind="stable")
    blocks, lengths, starts = blocks[order], lengths[order], offsets[:-1][order]
    first_block = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(blocks, out=first_block[1:])
    padded = np.zeros(int(first_block[-1]) * 64, dtype=np.uint8)
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded[first_block[:-1][row] * 64 + pos] = data[starts[row] + pos]
    padded[first_block[:-1] * 64 + lengths] = 0x80
    bit_lengths = (lengths * 8).astype(">u8").view(np.uint8).reshape(n, 8)
    ends = first_block[1:] * 64
    for i in range(8):
        padded[ends - 8 + i] = bit_lengths[:, i]
    words = padded.view(">u4").astype(np.uint32).reshape(-1, 16)

    state = np.repeat(_H0[:, None], n, axis=1)
    for j in range(int(blocks[0])):
        m = int(np.count_nonzero(blocks > j))
        schedule = np.empty((64, m), dtype=np.uint32)
        schedule[:16] = words[first_block[:m] + j].T
        state[:, :m] += _compress(np.ascontiguousarray(state[:, :m]), schedule)
    out = np.empty_like(state)
    out[:, order] = state
    return out


def _rotr(x: np.ndarray, n: int) -> np.ndarray:
    return (x >> np.uint32(n)) | (x << np.uint32(32 - n))


def _compress(state: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One SHA-256 compression round for every column; returns the state increments."""
    for t in range(16, 64):
        x15, x2 = w[t - 15], w[t - 2]
        s0 = _rotr(x15, 7) ^ _rotr(x15, 18) ^ (x15 >> np.uint32(3))
        s1 = _rotr(x2, 17) ^ _rotr(x2, 19) ^ (x2 >> np.uint32(10))
        w[t] = w[t - 16] + s0 + w[t - 7] + s1
    a, b, c, d, e, f, g, h = (state[i].copy() for i in range(8))
    for t in range(64):
        t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        h, g, f, e, d, c, b, a = g, f, e, d + t1, c, b, a, t1 + t2
    return np.stack([a, b, c, d, e, f, g, h])

"""JsonHome: JSON files, one object per line (NDJSON) or one array of objects, plain or gzip.

Polars reads NDJSON as a stream (`scan_ndjson`), so a plain NDJSON file is read where it lies.
A file Polars cannot stream is first rewritten as NDJSON in a temporary folder, one record at
a time, so memory stays bounded however large the file: a gzip file (decompressed as it is
read), a JSON array (parsed item by item with ijson), and any file read with
`on_bad_line: skip` (each line is checked; a line that is not a JSON object is counted, named
in the log and left out). With `on_bad_line: fail` (the default) a line that does not parse
fails the entity naming the file and the line number.

Types are inferred from the first `infer_schema_length` records; `schema_overrides` pins
columns. Nested objects arrive as structs and arrays as lists, or, with `flatten: true`, each
struct field becomes a column named `parent__child` (lists stay lists).
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import polars as pl
import pyarrow as pa
from pydantic import Field

from blocks.base import ReadRequest
from blocks.homes._file_home import FileHome
from blocks.homes._files import check_scan, polars_types, stream_batches
from blocks.homes._place import local_paths
from hygge_core.errors import HomeError, first_line

_SUFFIXES = (".json", ".jsonl", ".ndjson", ".gz")
_GZIP_MAGIC = b"\x1f\x8b"


class JsonHome(FileHome):
    """Reads entities from JSON files: NDJSON (one object per line) or a JSON array; local, or
    in an S3 bucket, an ADLS Gen2 / Blob container or OneLake (`blocks.homes._file_home`).

    Example:
        ```python
        from blocks import JsonHome
        home = JsonHome.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "JSON Home"
    _block_type_slug = "json-home"
    _description = "JSON or NDJSON files (one, a directory, or a glob) as a hygge Home."
    spec_type = "json"
    suffixes = _SUFFIXES

    format: Literal["auto", "ndjson", "array"] = Field(
        default="auto",
        description="`ndjson` (one object per line), `array` (one JSON array of objects), or "
        "`auto`: an array when the file's first character is `[`.",
    )
    infer_schema_length: int = Field(
        default=10_000, ge=1, description="Records used to infer the column types."
    )
    schema_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Column types that skip inference, e.g. `{id: Int64, amount: Float64}`.",
    )
    flatten: bool = Field(
        default=False,
        description="Turn each nested object's fields into columns named `parent__child`.",
    )
    on_bad_line: Literal["fail", "skip"] = Field(
        default="fail",
        description="A line that is not a JSON object: `fail` the entity naming the file and "
        "line, or `skip` it, counting the lines skipped in the log and the summary.",
    )

    def read(self, request: ReadRequest) -> Generator[pa.RecordBatch, None, str | None]:
        with self._scan(request) as (lf, what, skipped):
            yield from stream_batches(lf, request, what)
        if not skipped:
            return None
        lines = ", ".join(f"{f} line {n}" for f, n in skipped[:3])
        more = f" and {len(skipped) - 3:,} more" if len(skipped) > 3 else ""
        what = (
            "lines that are not JSON objects"
            if len(skipped) > 1
            else "line that is not a JSON object"
        )
        return f"{len(skipped):,} {what} skipped ({lines}{more})"

    def check(self, request: ReadRequest) -> None:
        with self._scan(request) as (lf, what, _):
            check_scan(lf, request, what, footers=False)

    def describe(self, request: ReadRequest) -> str:
        return f"json {request.path or self.path}" if self.is_local else f"json {self.under()}"

    @contextmanager
    def _scan(
        self, request: ReadRequest
    ) -> Iterator[tuple[pl.LazyFrame, str, list[tuple[str, int]]]]:
        refs = self.files(request)
        skipped: list[tuple[str, int]] = []
        with (
            tempfile.TemporaryDirectory(prefix="hygge-json-") as tmp,
            local_paths(refs, Path(tmp), request.entity) as files,
        ):
            names = [f.name for f in refs]
            sources = [
                self._ndjson(f, name, Path(tmp), i, skipped, request.entity)
                for i, (f, name) in enumerate(zip(files, names, strict=True))
            ]
            what = f"{names[0]!r}" if len(files) == 1 else f"{len(files)} JSON files"
            try:
                lf = pl.scan_ndjson(
                    sources,
                    infer_schema_length=self.infer_schema_length,
                    schema_overrides=self._overrides(request.entity),
                )
                if self.flatten:
                    lf = _flattened(lf)
            except pl.exceptions.PolarsError as exc:
                raise self._parse_error(exc, names, request.entity) from exc
            try:
                yield lf, what, skipped
            except HomeError as exc:
                # Polars names no line: find the first one that does not parse, for the message
                bad = next(
                    (
                        b
                        for f, name in zip(files, names, strict=True)
                        if (b := _first_bad_line(f, name)) is not None
                    ),
                    None,
                )
                if bad is not None:
                    msg = (
                        f"{bad[0]!r} line {bad[1]:,} is not a JSON object ({bad[2]}); fix the "
                        "file, or set `on_bad_line: skip` to skip and count such lines"
                    )
                    raise HomeError(msg, entity=request.entity) from exc
                raise

    def _ndjson(
        self,
        file: Path,
        name: str,
        tmp: Path,
        index: int,
        skipped: list[tuple[str, int]],
        entity: str,
    ) -> Path:
        """The file as NDJSON Polars can stream: itself, or a rewritten copy in `tmp`."""
        compressed = _starts_with(file, _GZIP_MAGIC)
        kind = self.format
        if kind == "auto":
            kind = "array" if _first_char(file, compressed) == b"[" else "ndjson"
        if kind == "ndjson" and not compressed and self.on_bad_line == "fail":
            return file
        out = tmp / f"{index:05d}.ndjson"
        with _open(file, compressed) as src, out.open("wb") as dst:
            if kind == "array":
                _array_to_ndjson(src, dst, name, entity)
            else:
                _lines_to_ndjson(src, dst, name, self.on_bad_line, skipped, entity)
        return out

    def _overrides(self, entity: str) -> dict[str, pl.DataType] | None:
        return polars_types(self.schema_overrides, entity)

    def _parse_error(self, exc: BaseException, names: list[str], entity: str) -> HomeError:
        return HomeError(f"could not read {names[0]}: {first_line(exc)}", entity=entity)


def _starts_with(file: Path, magic: bytes) -> bool:
    with file.open("rb") as f:
        return f.read(len(magic)) == magic


def _open(file: Path, compressed: bool) -> IO[bytes]:
    return gzip.open(file, "rb") if compressed else file.open("rb")  # type: ignore[return-value]


def _first_char(file: Path, compressed: bool) -> bytes:
    with _open(file, compressed) as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _lines_to_ndjson(
    src: IO[bytes],
    dst: IO[bytes],
    file: str,
    on_bad_line: str,
    skipped: list[tuple[str, int]],
    entity: str,
) -> None:
    for number, line in enumerate(src, start=1):
        if not line.strip():
            continue  # a blank line is no record
        try:
            ok = isinstance(orjson.loads(line), dict)
            reason = "not an object"
        except orjson.JSONDecodeError as exc:
            ok, reason = False, first_line(exc)
        if ok:
            dst.write(line if line.endswith(b"\n") else line + b"\n")
            continue
        if on_bad_line == "skip":
            skipped.append((file, number))
            continue
        msg = (
            f"{file!r} line {number:,} is not a JSON object ({reason}); fix the file, or "
            "set `on_bad_line: skip` to skip and count such lines"
        )
        raise HomeError(msg, entity=entity)


def _array_to_ndjson(src: IO[bytes], dst: IO[bytes], file: str, entity: str) -> None:
    import ijson

    try:
        for number, item in enumerate(ijson.items(src, "item", use_float=True), start=1):
            if not isinstance(item, dict):
                msg = (
                    f"{file!r}: item {number:,} of the JSON array is not an object "
                    f"({type(item).__name__}); each item must be one record"
                )
                raise HomeError(msg, entity=entity)
            dst.write(orjson.dumps(item))
            dst.write(b"\n")
    except ijson.JSONError as exc:
        msg = (
            f"{file!r} is not a valid JSON array ({first_line(exc)}); a damaged array "
            "cannot be read past the damage: fix or re-export the file"
        )
        raise HomeError(msg, entity=entity) from exc


def _first_bad_line(file: Path, name: str) -> tuple[str, int, str] | None:
    with _open(file, _starts_with(file, _GZIP_MAGIC)) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(orjson.loads(line), dict):
                    return name, number, "not an object"
            except orjson.JSONDecodeError as exc:
                return name, number, first_line(exc)
    return None


def _flattened(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Every struct column's fields as columns `parent__child`, recursively."""
    schema = lf.collect_schema()
    exprs: list[pl.Expr] = []
    for name, dtype in schema.items():
        exprs += _leaves(pl.col(name), name, dtype)
    return lf.select(exprs)


def _leaves(expr: pl.Expr, name: str, dtype: Any) -> list[pl.Expr]:
    if isinstance(dtype, pl.Struct):
        out: list[pl.Expr] = []
        for field in dtype.fields:
            out += _leaves(expr.struct.field(field.name), f"{name}__{field.name}", field.dtype)
        return out
    return [expr.alias(name)]

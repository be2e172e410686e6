"""CsvHome: delimited text files (one, a directory, or a glob)."""

from __future__ import annotations

import codecs
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
from pydantic import Field

from blocks.base import HomeBlock, ReadRequest
from blocks.homes._files import resolve_files, stream_batches
from hygge_tasks.errors import ConfigError, HomeError

_POLARS_ENCODINGS = {"utf8", "utf-8", "utf8-lossy"}


class CsvHome(HomeBlock):
    """Reads entities from CSV (or other delimited) files.

    Column types are inferred from the first `infer_schema_length` rows; a later value that
    does not fit fails the entity with the column named (raise the length, set it to 0 to read
    every column as text, or pin types with `schema_overrides`). Files in an encoding other
    than UTF-8 are transcoded on the fly.

    Example:
        ```python
        from blocks import CsvHome
        home = CsvHome.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "CSV Home"
    _block_type_slug = "csv-home"
    _description = "Delimited text files (one, a directory, or a glob) as a hygge Home."
    spec_type = "csv"

    path: str | None = Field(
        default=None,
        description="Base directory that entity paths are relative to; empty: paths stand alone.",
    )
    delimiter: str = Field(default=",", description="The field separator, one character.")
    has_header: bool = Field(default=True, description="Whether the first line holds column names.")
    encoding: str = Field(
        default="utf8", description="Text encoding of the files, e.g. `utf8`, `latin-1`, `cp1252`."
    )
    quote_char: str | None = Field(default='"', description="Quote character; empty for none.")
    null_values: list[str] = Field(
        default_factory=list, description="Strings read as NULL besides the empty field."
    )
    infer_schema_length: int | None = Field(
        default=10_000,
        description="Rows used to infer types; 0 reads all columns as text, empty scans all.",
    )
    schema_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Column types that skip inference, e.g. `{id: Int64, code: String}`.",
    )
    try_parse_dates: bool = Field(
        default=True, description="Parse ISO-8601 looking columns as dates and timestamps."
    )

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        files = resolve_files(self.path, request.path, (".csv", ".tsv", ".txt"), request.entity)
        for f in files:
            if f.stat().st_size == 0:
                msg = f"file {str(f)!r} is empty (0 bytes): a CSV needs at least a header line"
                raise HomeError(msg, entity=request.entity)
        with tempfile.TemporaryDirectory(prefix="hygge-csv-") as tmp:
            sources = self._utf8_sources(files, Path(tmp), request.entity)
            lf = pl.scan_csv(
                sources,
                separator=self.delimiter,
                has_header=self.has_header,
                quote_char=self.quote_char or None,
                null_values=self.null_values or None,
                infer_schema_length=self.infer_schema_length,
                infer_schema=self.infer_schema_length != 0,
                schema_overrides=self._overrides(request.entity),
                try_parse_dates=self.try_parse_dates,
                encoding="utf8-lossy" if self.encoding == "utf8-lossy" else "utf8",
                raise_if_empty=True,
            )
            what = f"{str(files[0])!r}" if len(files) == 1 else f"{len(files)} CSV files"
            try:
                yield from stream_batches(lf, request, what)
            except HomeError as exc:
                hint = _CSV_HINT if "parse" in exc.msg or "dtype" in exc.msg else ""
                raise HomeError(exc.msg + hint, entity=request.entity) from exc.__cause__

    def describe(self, request: ReadRequest) -> str:
        return f"csv {request.path or ''} under {self.path or '.'}"

    def _overrides(self, entity: str) -> dict[str, pl.DataType] | None:
        out: dict[str, pl.DataType] = {}
        for col, name in self.schema_overrides.items():
            dtype = getattr(pl, name, None)
            if dtype is None or not (isinstance(dtype, type) and issubclass(dtype, pl.DataType)):
                msg = (
                    f"schema_overrides: {name!r} for column {col!r} is not a Polars type "
                    "(Int64, Float64, String, Date, Datetime, Boolean, ...)"
                )
                raise ConfigError(msg, entity=entity)
            out[col] = dtype()
        return out or None

    def _utf8_sources(self, files: list[Path], tmp: Path, entity: str) -> list[Path]:
        if self.encoding.lower() in _POLARS_ENCODINGS:
            return files
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            msg = f"unknown encoding {self.encoding!r}"
            raise ConfigError(msg, entity=entity) from exc
        out = []
        for i, f in enumerate(files):
            target = tmp / f"{i:05d}.csv"
            # streamed copy: memory stays at one buffer, whatever the file size
            with (
                open(f, encoding=self.encoding, newline="") as src,
                open(target, "w", encoding="utf-8", newline="") as dst,
            ):
                try:
                    shutil.copyfileobj(src, dst, 1 << 20)
                except UnicodeDecodeError as exc:
                    msg = (
                        f"file {str(f)!r} is not valid {self.encoding}: "
                        f"{exc.reason} at byte {exc.start}"
                    )
                    raise HomeError(msg, entity=entity) from exc
            out.append(target)
        return out


_CSV_HINT = (
    ". If a column holds mixed values, raise `infer_schema_length` (empty scans every row), "
    "set it to 0 to read all columns as text, or pin the column with `schema_overrides`"
)

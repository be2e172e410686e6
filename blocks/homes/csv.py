"""CsvHome: delimited text files (one, a directory, or a glob)."""

from __future__ import annotations

import codecs
import shutil
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from pydantic import Field

from blocks.base import ReadRequest
from blocks.homes._csv_blank import without_blank_lines
from blocks.homes._csv_dates import batch_parser, date_kind, find_format, reader_parse
from blocks.homes._csv_types import cast_batches, exact_reads, guard_hint
from blocks.homes._file_home import FileHome
from blocks.homes._files import check_scan, polars_types, stream_batches
from blocks.homes._place import local_paths
from hygge_core.errors import ConfigError, HomeError, first_line

_POLARS_ENCODINGS = {"utf8", "utf-8", "utf8-lossy"}


class CsvHome(FileHome):
    """Reads entities from CSV (or other delimited) files: local, or in an S3 bucket, an ADLS
    Gen2 / Blob container or OneLake (`blocks.homes._file_home`; a remote file is streamed to a
    temporary folder first).

    Column types are inferred from the first `infer_schema_length` rows; a later value that
    does not fit fails the entity with the column named (raise the length, set it to 0 to read
    every column as text, or pin types with `schema_overrides`). Files in an encoding other
    than UTF-8 are transcoded on the fly. Without a header line, columns are named `column_1`,
    `column_2`, ... (the names `schema_overrides` and `columns` use). A file holding only the
    header reads as zero rows with every column typed String, unless `schema_overrides` pins it.
    Blank lines are skipped and counted (a blank line inside a quoted field is data). A date,
    timestamp or time column is parsed with the one format its sample shows, to the values
    Polars' per-value inference gives (`_csv_dates`; `fast_dates=False` infers as before).

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
    suffixes = (".csv", ".tsv", ".txt")

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
    fast_dates: bool = Field(
        default=True,
        description=(
            "Parse each date column with the one format its sample shows (same values, several "
            "times faster); false: Polars' per-value inference, as before."
        ),
    )

    def read(self, request: ReadRequest) -> Generator[pa.RecordBatch, None, str | None]:
        with self._scan(request) as (lf, what, blank):
            yield from stream_batches(lf, request, what)
        # the engine reports it with the entity's result (`HomeBlock.read`)
        return f"skipped {blank:,} blank line(s) in {what}" if blank else None

    def check(self, request: ReadRequest) -> None:
        with self._scan(request) as (lf, what, _):
            check_scan(lf, request, what, footers=False)

    @contextmanager
    def _scan(self, request: ReadRequest) -> Iterator[tuple[pl.LazyFrame, str, int]]:
        """The entity's files as one scan, and the blank lines left out of it."""
        # transcoded to UTF-8 and without blank lines meanwhile; errors get a hint
        files = self.files(request)
        for f in files:
            if f.size() == 0:
                msg = (
                    f"file {str(f)!r} is empty (0 bytes): a CSV needs at least a header line; "
                    "remove the file or write it again"
                )
                raise HomeError(msg, entity=request.entity)
        with (
            tempfile.TemporaryDirectory(prefix="hygge-csv-") as tmp,
            local_paths(files, Path(tmp), request.entity) as local,
        ):
            names = [f.name for f in files]
            sources = self._utf8_sources(local, names, Path(tmp), request.entity)
            sources, blank = self._without_blank_lines(sources, Path(tmp), request.entity)
            what = f"{str(files[0])!r}" if len(files) == 1 else f"{len(files)} CSV files"
            lf = self._exact_scan(sources, request, what)
            try:
                yield lf, what, blank
            except HomeError as exc:
                # the hint comes from the engine's text, not from a path that may contain "utf8"
                hint = _hint(str(exc.__cause__ or ""))
                raise HomeError(exc.msg + hint, entity=request.entity) from exc.__cause__

    def _scan_csv(
        self,
        sources: list[Path],
        names: list[str] | None,
        overrides: dict[str, pl.DataType] | None,
        **options: Any,
    ) -> pl.LazyFrame:
        kwargs: dict[str, Any] = {
            "infer_schema_length": self.infer_schema_length,
            "infer_schema": self.infer_schema_length != 0,
            "schema_overrides": overrides,
            "try_parse_dates": self.try_parse_dates,
        }
        return pl.scan_csv(
            sources,
            separator=self.delimiter,
            has_header=self.has_header,
            new_columns=names,
            quote_char=self.quote_char or None,
            null_values=self.null_values or None,
            encoding="utf8-lossy" if self.encoding == "utf8-lossy" else "utf8",
            raise_if_empty=True,
            **(kwargs | options),
        )

    def _exact_scan(self, sources: list[Path], request: ReadRequest, what: str) -> pl.LazyFrame:
        """The scan, with integer and timestamp columns read exactly (`_csv_types`)."""
        # read once: each scan below takes the same names and the user's pinned types
        names = None if self.has_header else self._headerless_names(sources, request)
        pinned = self._overrides(request.entity)
        lf = self._scan_csv(sources, names, pinned)
        if self.infer_schema_length == 0:
            return lf
        fast = self.try_parse_dates and self.fast_dates
        try:
            inferred = lf.collect_schema()
            if not any(
                t.is_integer() or isinstance(t, pl.Datetime) or (fast and date_kind(t))
                for t in inferred.dtypes()
            ):
                return lf
            sample = self._scan_csv(
                sources, names, None, infer_schema=False, n_rows=self.infer_schema_length
            ).collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            msg = f"could not read {what}: {first_line(exc)}{_hint(str(exc))}"
            raise HomeError(msg, entity=request.entity) from exc
        pinned_names = set(self.schema_overrides)
        as_text, casts = exact_reads(inferred, sample, pinned_names, fast_dates=fast)
        if fast:
            as_text, casts = _fast_days(inferred, sample, pinned_names, as_text, casts)
        if not as_text:
            return lf
        overrides = {**(pinned or {}), **as_text}
        return cast_batches(self._scan_csv(sources, names, overrides), casts)

    def describe(self, request: ReadRequest) -> str:
        return f"csv {request.path or ''} under {self.under()}"

    def _headerless_names(self, sources: list[Path], request: ReadRequest) -> list[str]:
        """`column_1`, `column_2`, ...: stable names whatever the Polars version calls them."""
        try:
            width = (
                pl.scan_csv(
                    sources[0],
                    separator=self.delimiter,
                    has_header=False,
                    quote_char=self.quote_char or None,
                    infer_schema=False,
                    n_rows=1,
                    encoding="utf8-lossy",
                )
                .collect_schema()
                .len()
            )
        except pl.exceptions.PolarsError as exc:
            msg = f"could not read the first line of {str(sources[0])!r}: {first_line(exc)}"
            raise HomeError(msg, entity=request.entity) from exc
        return [f"column_{i}" for i in range(1, width + 1)]

    def _overrides(self, entity: str) -> dict[str, pl.DataType] | None:
        return polars_types(self.schema_overrides, entity)

    def _without_blank_lines(
        self, sources: list[Path], tmp: Path, entity: str
    ) -> tuple[list[Path], int]:
        try:
            return without_blank_lines(sources, tmp, self.quote_char)
        except OSError as exc:
            msg = f"cannot read {str(exc.filename)!r}: {exc.strerror or exc}"
            raise HomeError(msg, entity=entity) from exc

    def _utf8_sources(
        self, files: list[Path], names: list[str], tmp: Path, entity: str
    ) -> list[Path]:
        if self.encoding.lower() in _POLARS_ENCODINGS:
            return files
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            msg = f"unknown encoding {self.encoding!r}"
            raise ConfigError(msg, entity=entity) from exc
        out = []
        for i, (f, name) in enumerate(zip(files, names, strict=True)):
            target = tmp / f"{i:05d}.csv"
            # streamed copy: memory stays at one buffer, whatever the file size
            try:
                with (
                    open(f, encoding=self.encoding, newline="") as src,
                    open(target, "w", encoding="utf-8", newline="") as dst,
                ):
                    shutil.copyfileobj(src, dst, 1 << 20)
            except UnicodeDecodeError as exc:
                msg = (
                    f"file {name!r} is not valid {self.encoding}: {exc.reason} "
                    f"at byte {exc.start}; set `encoding` to the one the file was written in"
                )
                raise HomeError(msg, entity=entity) from exc
            except OSError as exc:
                msg = f"cannot transcode {name!r} from {self.encoding}: {exc.strerror or exc}"
                raise HomeError(msg, entity=entity) from exc
            out.append(target)
        return out


def _fast_days(
    inferred: pl.Schema,
    sample: pl.DataFrame,
    pinned: set[str],
    as_text: dict[str, pl.DataType],
    casts: list[pl.Expr],
) -> tuple[dict[str, pl.DataType], list[pl.Expr]]:
    """Date and time columns read as text and parsed with their sample's format."""
    as_text, casts = dict(as_text), list(casts)
    for number, (name, dtype) in enumerate(inferred.items(), 1):
        if date_kind(dtype) not in ("date", "time") or name in pinned or name not in sample:
            continue
        old = reader_parse(name, dtype, number)
        raw = sample.get_column(name)
        try:
            fmt = find_format(raw, old(raw), dtype)
        except pl.exceptions.PolarsError:
            fmt = None
        if fmt is None:
            continue  # no one format fits the sample: the reader parses it as before
        as_text[name] = pl.String()
        parse = batch_parser(name, fmt, dtype, old)
        casts.append(pl.col(name).map_batches(parse, return_dtype=dtype, is_elementwise=True))
    return as_text, casts


_CSV_HINT = (
    ". If a column holds mixed values, raise `infer_schema_length` (empty scans every row), "
    "set it to 0 to read all columns as text, or pin the column with `schema_overrides`"
)
_ENCODING_HINT = (
    ". The file is not UTF-8: set `encoding` (e.g. latin-1 or cp1252) on the Home or the entity"
)
_FIELDS_HINT = ". A line has more fields than the header: check `delimiter` and `quote_char`"


def _hint(msg: str) -> str:
    """What to do next about a CSV read error, from the engine's message."""
    if guarded := guard_hint(msg):
        return guarded
    text = msg.lower()
    if "utf-8" in text or "utf8" in text:
        return _ENCODING_HINT
    if "more fields" in text:
        return _FIELDS_HINT
    if "parse" in text or "dtype" in text or "conversion from" in text:
        return _CSV_HINT
    return ""

"""ParquetHome: a Parquet file, a directory of Parquet files, or a glob."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.base import CopySource, ReadRequest
from blocks.homes._arrow_read import needs_arrow, read_schema, scan_arrow
from blocks.homes._file_home import FileHome
from blocks.homes._files import check_scan, entity_files, stream_batches
from blocks.homes._place import FileRef, storage_options
from hygge_core.arrow_types import comparable
from hygge_core.errors import HomeError, first_line

_SUFFIXES = (".parquet", ".parq")


class ParquetHome(FileHome):
    """Reads entities from Parquet files on a local or mounted filesystem, in an S3 bucket, an
    ADLS Gen2 / Blob container or OneLake (`blocks.homes._file_home`).

    Each entity's `path` is a file, a directory (every `*.parquet` below it) or a glob,
    relative to this Home's `path` when that is set. Files are streamed in batches, so a
    table larger than memory is fine; remote files are scanned where they lie, by Polars'
    own object-store reader. Every file's footer is checked before the first row is
    read, so an empty, truncated or foreign file fails the entity with that file named.

    Example:
        ```python
        from blocks import ParquetHome
        home = ParquetHome.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Parquet Home"
    _block_type_slug = "parquet-home"
    _description = "Parquet files (one, a directory, or a glob) as a hygge Home."
    spec_type = "parquet"
    suffixes = _SUFFIXES

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        with self._scan(request) as (lf, what, _):
            yield from stream_batches(lf, request, what, remote=not self.is_local)

    def check(self, request: ReadRequest) -> None:
        with self._scan(request) as (lf, what, by_arrow):
            # a pyarrow scan has compared every file's schema already (and a filter that
            # admits no row would read it all)
            check_scan(lf, request, what, footers=not by_arrow)

    @contextmanager
    def _scan(self, request: ReadRequest) -> Iterator[tuple[pl.LazyFrame, str, bool]]:
        """The entity's files as one scan, every footer checked; read errors name the file.

        Also yields whether pyarrow reads the files (`_arrow_read`) rather than Polars."""
        files = self._files(request)
        footers = _check_footers(files, request.entity, remote=not self.is_local)
        try:
            by_arrow = any(needs_arrow(meta) for meta in footers)
            lf = (
                _arrow_scan(files, request)
                if by_arrow
                else pl.scan_parquet([f.url for f in files], storage_options=storage_options(files))
            )
            yield lf, _describe_files(files), by_arrow
        except HomeError as exc:
            raise _explain(exc, files, request.entity) from exc.__cause__

    def estimate_rows(self, request: ReadRequest) -> int | None:
        # footers only: no data pages are read
        try:
            files = self._files(request)
            return sum(f.metadata().num_rows for f in files)
        except Exception:
            return None

    def describe(self, request: ReadRequest) -> str:
        return f"parquet {request.path or ''} under {self.under()}"

    def _files(self, request: ReadRequest) -> list[FileRef]:
        # the module's own `entity_files`, which a test counts
        return entity_files(self.path, request, _SUFFIXES) if self.is_local else self.files(request)

    def copy_sources(self, request: ReadRequest) -> list[CopySource] | None:
        if request.columns or request.where or request.since is not None:
            return None
        if not self.is_local:
            return None  # a Store copies local files only: remote ones are read and re-encoded
        files = self._files(request)
        out = []
        for f in files:
            meta = _check_footer(f, request.entity)
            if needs_arrow(meta):
                return None  # read to carry its values exactly (`_arrow_read`)
            out.append(CopySource(f.name, meta.num_rows, meta.schema.to_arrow_schema()))
        if not out:
            return None
        first = _types(out[0].schema)
        if any(_types(c.schema) != first for c in out[1:]):
            return None  # the read names the odd file
        # the columns as a read would carry them: a copy must leave the table as a re-encode
        # would (time32 read as time64, fixed-size binary as binary, ...), or later runs'
        # files would not match it
        if _types(pl.scan_parquet(files[0].url).head(0).collect().to_arrow().schema) != first:
            return None
        return out


def _types(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """Names and types as readers see them (one flavour of text; nullability aside)."""
    return [(f.name, f.type) for f in comparable(schema)]


def _describe_files(files: list[FileRef]) -> str:
    if len(files) == 1:
        return f"{str(files[0])!r}"
    return f"{len(files)} files ({str(files[0])!r} …)"


def _arrow_scan(files: list[FileRef], request: ReadRequest) -> pl.LazyFrame:
    """pyarrow's scan, for files whose values Polars' reader would change (`_arrow_read`)."""
    if len(files) > 1:
        # Polars compares the files' schemas in its own scan; this one must do it itself
        odd = _first_odd_schema(files)
        if odd is not None:
            raise _odd_schema(odd, files[0], request.entity)
    schema = read_schema(files, request.columns, request.entity)
    return scan_arrow(files, schema, request.entity)


#: footers read at once from object storage, where each is a request's latency (20-50 ms)
FOOTER_READERS = 8


def _check_footers(files: list[FileRef], entity: str, *, remote: bool) -> list[pq.FileMetaData]:
    """Every file's footer, in order; the first file in order that fails names the error."""
    if not remote or len(files) < 2:
        return [_check_footer(f, entity) for f in files]
    with ThreadPoolExecutor(min(FOOTER_READERS, len(files))) as pool:
        return list(pool.map(lambda f: _check_footer(f, entity), files))


def _check_footer(path: FileRef, entity: str) -> pq.FileMetaData:
    """Fail early, naming the file, when it cannot be a complete Parquet file."""
    try:
        if path.size() == 0:
            msg = (
                f"file {str(path)!r} is empty (0 bytes), not a Parquet file: the export that "
                "wrote it failed or is still running; write it again or remove it"
            )
            raise HomeError(msg, entity=entity)
        return path.metadata()
    except OSError as exc:
        msg = f"cannot open {str(path)!r}: {exc.strerror or first_line(exc)}"
        raise HomeError(msg, entity=entity) from exc
    except pa.ArrowException as exc:
        # pyarrow adds "Either the file is corrupted or ..."; the advice below says it better
        reason = first_line(exc).split(". ")[0].rstrip(".")
        msg = (
            f"file {str(path)!r} is not a readable Parquet file ({reason}); it is "
            "truncated, still being written, or not Parquet: write it again or remove it"
        )
        raise HomeError(msg, entity=entity) from exc


def _explain(exc: HomeError, files: list[FileRef], entity: str) -> HomeError:
    """Turn the engine's read errors into ones that name the file and the fix."""
    cause = exc.__cause__
    if isinstance(cause, pl.exceptions.SchemaError) and len(files) > 1:
        odd = _first_odd_schema(files)
        if odd is not None:
            return _odd_schema(odd, files[0], entity)
    if "out of specification" in exc.msg:
        msg = (
            f"{exc.msg}. The file's data pages are damaged although its footer reads: "
            "write the file again or remove it"
        )
        return HomeError(msg, entity=entity)
    return exc


def _odd_schema(odd: tuple[FileRef, str], first: FileRef, entity: str) -> HomeError:
    msg = (
        f"file {str(odd[0])!r} does not share the schema of {str(first)!r} "
        f"({odd[1]}); every file of an entity must have the same columns and types: "
        "rewrite the odd file or move it out of the entity's `path`"
    )
    return HomeError(msg, entity=entity)


def _first_odd_schema(files: list[FileRef]) -> tuple[FileRef, str] | None:
    try:
        first = {f.name: str(f.type) for f in pq.read_schema(files[0].source())}
        for path in files[1:]:
            other = {f.name: str(f.type) for f in pq.read_schema(path.source())}
            if other != first:
                changes = [f"+{n} {t}" for n, t in other.items() if n not in first]
                changes += [f"-{n} {t}" for n, t in first.items() if n not in other]
                changes += [
                    f"{n}: {t} instead of {first[n]}"
                    for n, t in other.items()
                    if n in first and first[n] != t
                ]
                return path, "; ".join(changes) or "other column order"
    except (OSError, pa.ArrowException):
        return None
    return None

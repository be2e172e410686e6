"""ParquetHome: a Parquet file, a directory of Parquet files, or a glob."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from blocks.base import HomeBlock, ReadRequest
from blocks.homes._files import resolve_files, stream_batches


class ParquetHome(HomeBlock):
    """Reads entities from Parquet files on a local or mounted filesystem.

    Each entity's `path` is a file, a directory (every `*.parquet` below it) or a glob,
    relative to this Home's `path` when that is set. Files are streamed in batches, so a
    table larger than memory is fine.

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

    path: str | None = Field(
        default=None,
        description="Base directory that entity paths are relative to; empty: paths stand alone.",
    )

    def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
        files = resolve_files(self.path, request.path, (".parquet", ".parq"), request.entity)
        what = _describe_files(files)
        lf = pl.scan_parquet(files)
        yield from stream_batches(lf, request, what)

    def estimate_rows(self, request: ReadRequest) -> int | None:
        # footers only: no data pages are read
        try:
            files = resolve_files(self.path, request.path, (".parquet", ".parq"), request.entity)
            return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        except Exception:
            return None

    def describe(self, request: ReadRequest) -> str:
        return f"parquet {request.path or ''} under {self.path or '.'}"


def _describe_files(files: list) -> str:
    if len(files) == 1:
        return f"{str(files[0])!r}"
    return f"{len(files)} files ({str(files[0])!r} …)"

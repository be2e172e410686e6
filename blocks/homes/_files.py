"""What the file Homes share: resolving paths and globs, and streaming a Polars scan as batches."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

from blocks.base import ReadRequest, SourceFile
from blocks.homes._place import FileRef
from hygge_core.errors import ConfigError, HomeError, first_line
from hygge_core.timestamps import NanoTimestamp


def resolve_files(
    base: str | None, pattern: str | None, suffixes: tuple[str, ...], entity: str
) -> list[Path]:
    """The files an entity reads: one file, every matching file in a directory, or a glob.

    Names starting with `.` or `_` are skipped in directories and globs (staging debris,
    `_SUCCESS` markers, hidden files), as Spark and Arrow datasets do.
    """
    if not pattern and not base:
        msg = "no `path` given: set it on the entity or on the Home"
        raise HomeError(msg, entity=entity)
    target = Path(pattern or "")
    if base and not target.is_absolute():
        target = Path(base) / target
    text = str(target)
    joined = f" (the Home's `path` {base!r} joined with {pattern!r})" if base and pattern else ""
    if globlib.has_magic(text):
        root = _literal_root(target)
        found = [Path(p) for p in globlib.glob(text, recursive=True)]
        # only the parts the pattern matched can hide a file: `/data/_landing/*.csv` is fine
        files = sorted(
            p for p in found if p.is_file() and not _hidden(Path(*p.parts[len(root.parts) :]))
        )
        if not files:
            skipped = " (names starting with '.' or '_' are skipped)" if found else ""
            where = _where(target, root)
            msg = f"no file matches {text!r}{joined}{skipped}{where}; check the entity's `path`"
            raise HomeError(msg, entity=entity)
        return files
    if target.is_dir():
        files = sorted(
            p
            for p in target.rglob("*")
            if p.is_file() and p.suffix.lower() in suffixes and not _hidden(p.relative_to(target))
        )
        if not files:
            msg = (
                f"directory {text!r}{joined} holds no {'/'.join(suffixes)} files (names "
                "starting with '.' or '_' are skipped); check the entity's `path`"
            )
            raise HomeError(msg, entity=entity)
        return files
    if not target.exists():
        msg = (
            f"{text!r}{joined} does not exist: no such file or directory"
            f"{_where(target)}; check the entity's `path`"
        )
        raise HomeError(msg, entity=entity)
    return [target]


def entity_files(
    base: str | None, request: ReadRequest, suffixes: tuple[str, ...]
) -> list[FileRef]:
    """The local files a read takes: the request's own list (`incremental: files`), else its
    path's (a remote place's: `FileHome.remote_files`)."""
    if request.files is not None:
        return [FileRef(f) for f in request.files]
    return [FileRef(str(p)) for p in resolve_files(base, request.path, suffixes, request.entity)]


def source_files(
    base: str | None, request: ReadRequest, suffixes: tuple[str, ...]
) -> list[SourceFile]:
    """`HomeBlock.list_files` for a file Home: each file with its size and modification time."""
    return [SourceFile.of(p) for p in resolve_files(base, request.path, suffixes, request.entity)]


def polars_types(overrides: dict[str, str], entity: str) -> dict[str, pl.DataType] | None:
    """A file Home's `schema_overrides` (column -> Polars type name) as Polars types."""
    out: dict[str, pl.DataType] = {}
    for col, name in overrides.items():
        dtype = getattr(pl, name, None)
        if dtype is None or not (isinstance(dtype, type) and issubclass(dtype, pl.DataType)):
            msg = (
                f"schema_overrides: {name!r} for column {col!r} is not a Polars type "
                "(Int64, Float64, String, Date, Datetime, Boolean, ...)"
            )
            raise ConfigError(msg, entity=entity)
        out[col] = dtype()
    return out or None


def _hidden(path: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.parts if part not in (".", ".."))


def _literal_root(pattern: Path) -> Path:
    """The leading part of a glob pattern without wildcards: `/a/_b/*/x*.csv` -> `/a/_b`."""
    parts: list[str] = []
    for part in pattern.parts:
        if globlib.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path()


def _where(target: Path, folder: Path | None = None) -> str:
    """Where to look for a missing path: the working directory, the deepest existing folder."""
    looked = "" if target.is_absolute() else f" (looked from {Path.cwd()})"
    folder = (folder or target.parent).absolute()
    if folder.is_dir():
        return looked
    for existing in folder.parents:
        if existing.is_dir():
            return f"{looked}; the closest existing folder is {str(existing)!r}"
    return looked


def since_filter(lf: pl.LazyFrame, request: ReadRequest) -> pl.LazyFrame:
    """Push the incremental lower bound into the scan (NULLs kept: the engine counts them)."""
    if request.since is None:
        return lf
    names = request.since.sources
    schema = lf.collect_schema()
    dtype = schema.get(names[0])
    if dtype is None or any(schema.get(n) != dtype for n in names):
        return lf  # the engine reports a missing column or mismatched types
    col = pl.col(names[0]) if len(names) == 1 else pl.coalesce([pl.col(n) for n in names])
    value = request.since.value
    if isinstance(value, NanoTimestamp):
        # exact nanoseconds; a coarser column cuts the bound (a floor: a superset)
        zone = "UTC" if value.utc else None
        bound = pl.lit(value.ns, dtype=pl.Int64).cast(pl.Datetime("ns", zone)).cast(dtype)
    else:
        bound = pl.lit(value).cast(dtype)
    return lf.filter((col >= bound) | col.is_null())


#: Polars' read-ahead: Parquet row groups and CSV chunks decoded before they are asked for.
#: The Store's encoder is the slower side of a move, so more read-ahead only holds memory: at
#: one, a 10M-row Parquet file moves at the same speed with a peak of 350 MB instead of 510 MB
#: (CSV: 490 instead of 585; `bench/RESULTS.md`). Polars reads these per query, for the whole
#: process; a value already in the environment wins.
READ_AHEAD = {"POLARS_ROW_GROUP_PREFETCH_SIZE": "1", "POLARS_CSV_CHUNK_PREFETCH_LIMIT": "1"}
#: from object storage a row group waits on a request's latency: four in flight read 10
#: Parquet files from S3 at 0.93x Polars' own scan instead of 0.87x, for 150 MB more
#: (`bench/RESULTS.md`). Once a process has read remote files its later reads keep it (the
#: setting is the process's), which bounds them all at four row groups.
READ_AHEAD_REMOTE = {"POLARS_ROW_GROUP_PREFETCH_SIZE": "4"}
#: what the user set before hygge did: that wins, local or remote
_USER_SET = {name for name in READ_AHEAD if name in os.environ}


#: what a damaged or mismatched input raises from a scan (a panic is a BaseException: damaged
#: input can reach engine asserts)
_READ_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, pa.ArrowException)


def _shaped(lf: pl.LazyFrame, request: ReadRequest) -> pl.LazyFrame:
    """The scan with the entity's `columns`, `where` and incremental bound applied."""
    if request.columns:
        lf = lf.select(request.columns)
    lf = _arrow_typed(lf)
    if request.where:
        lf = lf.filter(pl.sql_expr(request.where))
    return since_filter(lf, request)


#: the exact Arrow form of Polars' 128-bit integers (CSV infers them for numbers past int64),
#: which pyarrow cannot import: a value of more than 38 digits fails its column by name
_WIDE_INTS: dict[type[pl.DataType], pl.DataType] = {
    pl.Int128: pl.Decimal(38, 0),
    pl.UInt128: pl.Decimal(38, 0),
}


def _arrow_typed(lf: pl.LazyFrame) -> pl.LazyFrame:
    wide = {
        name: _WIDE_INTS[dtype.base_type()]
        for name, dtype in lf.collect_schema().items()
        if dtype.base_type() in _WIDE_INTS
    }
    return lf.with_columns(pl.col(n).cast(t, strict=True) for n, t in wide.items()) if wide else lf


def check_scan(lf: pl.LazyFrame, request: ReadRequest, what: str, *, footers: bool) -> None:
    """`HomeBlock.check` for a file Home: run the entity's scan so that it yields no rows.

    Polars resolves the schema, the entity's `columns` and its `where`, and fails as the read
    would. With `footers` (Parquet) a filter that admits no row makes it open every file and
    compare its schema with the first file's, reading footers only; without (CSV, which has
    no footer) `head(0)` reads each file's header and the first file's inference rows.
    """
    shaped = _shaped(lf, request)
    try:
        (shaped.filter(pl.lit(False)) if footers else shaped.head(0)).collect()
    except _READ_ERRORS as exc:
        raise _read_error(exc, request, what) from exc


def stream_batches(
    lf: pl.LazyFrame, request: ReadRequest, what: str, *, remote: bool = False
) -> Iterator[pa.RecordBatch]:
    """Run a lazy scan on Polars' streaming engine and yield Arrow batches of one schema."""
    for name, value in READ_AHEAD.items():
        os.environ.setdefault(name, value)
    if remote:
        os.environ.update({k: v for k, v in READ_AHEAD_REMOTE.items() if k not in _USER_SET})
    try:
        lf = _shaped(lf, request)
        schema: pa.Schema | None = None
        # flat frames leave as views, without copying their text (`hygge_core.arrow_types`)
        compat = pl.CompatLevel.newest() if _flat(lf.collect_schema()) else None
        for frame in lf.collect_batches(chunk_size=request.batch_size):
            table = frame.to_arrow(compat_level=compat)
            if schema is None:
                schema = table.schema
            yield from table.cast(schema).to_batches(max_chunksize=request.batch_size)
        if schema is None:
            # no rows: still hand over the schema, so an empty table can be published
            schema = lf.head(0).collect().to_arrow(compat_level=compat).schema
            yield pa.RecordBatch.from_pylist([], schema=schema)
    except HomeError:
        raise
    except _READ_ERRORS as exc:
        raise _read_error(exc, request, what) from exc


def _read_error(exc: BaseException, request: ReadRequest, what: str) -> HomeError:
    return HomeError(f"could not read {what}: {first_line(exc)}", entity=request.entity)


def _flat(schema: pl.Schema) -> bool:
    """No nested, categorical or object columns: their view forms have fewer Arrow kernels."""
    return not any(
        dtype.is_nested() or isinstance(dtype, (pl.Categorical, pl.Enum, pl.Object))
        for dtype in schema.dtypes()
    )

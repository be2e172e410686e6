"""Repairing a file Fabric rejected: the same batch, under exactly the same name.

Fabric blocks a table's later files until a valid file with the rejected file's name replaces
it (Microsoft's best practices, 2026-09). `hygge status --repair` finds that file (the one
Fabric's error names, else the first the contract check flags, else `--file`), confirms from
the manifests that a hygge run published it, and uploads its rows again under the same name:
conformed to the table's contract (the column types of the file before it, `__rowMarker__`
last, non-key columns nullable) where the file strays from it, and the same bytes re-committed
where it does not (a rejection on Fabric's side). A change of type that would alter a value is
refused, never made: such a table is rebuilt with `--full-drop`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from azure.core.exceptions import AzureError

from blocks.base import utc_now
from blocks.stores._om_contract import (
    MARKER,
    schema_problems,
    table_findings,
)
from blocks.stores._om_monitor import find
from blocks.stores.blob_parquet import footer_schema
from hygge_core.errors import StoreError
from hygge_core.manifest import Manifest

if TYPE_CHECKING:
    from blocks.stores._om_monitor import TableStatus
    from blocks.stores.blob_parquet import BlobStoreBase

    _Base = BlobStoreBase
else:
    # a mixin, not a Block of its own
    _Base = object

_NAMED = re.compile(r"\d{20}\.parquet")


class FileRepair(_Base):
    """`repair`, mixed into `OpenMirroringStore`, which supplies these."""

    if TYPE_CHECKING:
        key_columns: list[str] | None
        table_schema: str | None

        def table_folder(self, entity: str) -> str: ...
        def monitor(self) -> list[TableStatus] | None: ...

        file_detection: str

        def data_files(self, entity: str) -> list[str]: ...
        def data_key(self, entity: str, name: str) -> str: ...

    def rejected_file(self, entity: str) -> str:
        """The file Fabric's error names, else the first file the contract check flags."""
        status = find(self.monitor() or [], entity, self.table_schema)
        files = self.data_files(entity)
        said = status.error_message or "" if status else ""
        named = [n for n in files if n in said] or _NAMED.findall(said)
        if named:
            return named[0]
        for finding in table_findings(self.area(), self.table_folder(entity)):
            if finding.file in files:
                return finding.file
        said = f"Fabric reports {status.describe()!r}" if status else "Fabric's monitor is silent"
        msg = (
            f"{said} and no file in the table folder breaks the landing-zone contract, so "
            "there is no file to repair; name the one Fabric rejected with `--file NAME`"
        )
        raise StoreError(msg, entity=entity)

    def repair(self, entity: str, name: str | None = None, wait_seconds: float = 0.0) -> str:
        """Upload a published file's batch again under its own name; one line says what."""
        with self.exclusive(f"hygge status --repair {entity}", wait_seconds):
            name = name or self.rejected_file(entity)
            if name.isdigit() and self.file_detection == "sequential":
                name = f"{int(name):020d}.parquet"
            manifest = self._published_by(entity, name)
            area = self.area()
            key = area.key(self.table_folder(entity), name)
            with tempfile.TemporaryDirectory(prefix="hygge-repair-") as tmp:
                local = Path(tmp) / name
                if not area.get_file(key, local):
                    msg = (
                        f"{name} is no longer in the landing zone (Fabric removes files it has "
                        "processed), so there is nothing to replace; if the table is still "
                        "blocked, rebuild it with --full-drop"
                    )
                    raise StoreError(msg, entity=entity)
                table = self._readable(entity, name, local)
                rows = _expected_rows(manifest, name)
                if rows is not None and table.num_rows != rows:
                    msg = (
                        f"{name} holds {table.num_rows:,} rows but run {manifest.run_id} "
                        f"published {rows:,} in it: it is not the batch hygge sent, so it is "
                        "not replaced; rebuild the table with --full-drop"
                    )
                    raise StoreError(msg, entity=entity)
                keys = list(self.key_columns or [])
                before = self._schema_before(entity, name)
                fixed = _conform(table, before, keys, entity, name)
                left = schema_problems(fixed.schema, keys, before)
                if left:
                    msg = f"{name} cannot be made valid: {'; '.join(left)}; run --full-drop"
                    raise StoreError(msg, entity=entity)
                out = Path(tmp) / f"repaired-{name}"
                pq.write_table(fixed, out, compression=self.compression)
                # one block-list commit: Fabric sees the old file or the whole new one
                area.put_file(key, out, self.upload_parallelism)
            manifest.extra.setdefault("repaired", []).append(
                {"file": name, "at": utc_now().isoformat()}
            )
            self.save_manifest(manifest)
        how = "conformed to the table" if fixed.schema != table.schema else "its bytes re-sent"
        return (
            f"{name} re-uploaded under its own name ({fixed.num_rows:,} rows of run "
            f"{manifest.run_id}, {how}); Fabric picks it up and resumes the table"
        )

    def _published_by(self, entity: str, name: str) -> Manifest:
        for run_id in sorted(self.manifest_ids(entity), reverse=True):
            manifest = self.load_manifest(entity, run_id)
            if manifest and manifest.state in ("published", "committed") and name in manifest.files:
                return manifest
        msg = (
            f"no kept manifest of this table names {name} (hygge keeps the last runs' "
            "manifests), so hygge cannot tell it sent that batch and does not replace it; "
            "rebuild the table with --full-drop"
        )
        raise StoreError(msg, entity=entity)

    def _readable(self, entity: str, name: str, local: Path) -> pa.Table:
        try:
            return pq.read_table(local)
        except (pa.ArrowException, OSError) as exc:
            msg = (
                f"{name} is not a readable Parquet file ({exc}), so its batch cannot be sent "
                "again from it; rebuild the table with --full-drop"
            )
            raise StoreError(msg, entity=entity) from exc

    def _schema_before(self, entity: str, name: str) -> pa.Schema | None:
        """The schema of the nearest readable file before this one: the table's contract."""
        files = self.data_files(entity)
        for n in reversed(files[: files.index(name)] if name in files else []):
            with contextlib.suppress(AzureError, pa.ArrowException, OSError):
                return footer_schema(self.area(), self.data_key(entity, n))
        return None


def _expected_rows(manifest: Manifest, name: str) -> int | None:
    rows = manifest.extra.get("file_rows")
    if not isinstance(rows, list) or len(rows) != len(manifest.files):
        return None  # a run from before per-file counts were kept
    return int(rows[manifest.files.index(name)])


def _conform(
    table: pa.Table, before: pa.Schema | None, keys: list[str], entity: str, name: str
) -> pa.Table:
    """The file's rows in the contract's shape; exact, or a StoreError."""
    columns, fields = [], []
    for f, col in zip(table.schema, table.columns, strict=True):
        if f.name == MARKER:
            continue
        want = before.field(f.name).type if before and f.name in before.names else f.type
        if want != f.type:
            col = _exactly(col, want, f"{name} column {f.name!r}", entity)
        columns.append(col)
        fields.append(pa.field(f.name, want, nullable=f.nullable or f.name not in keys))
    if MARKER in table.schema.names:
        columns.append(_exactly(table.column(MARKER), pa.int32(), f"{name} {MARKER}", entity))
        fields.append(pa.field(MARKER, pa.int32(), nullable=False))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _exactly(col: pa.ChunkedArray, want: pa.DataType, what: str, entity: str) -> pa.ChunkedArray:
    """`col` as `want` only when every value survives the round trip."""
    try:
        cast = col.cast(want, safe=True)
        same = pc.all(pc.equal(cast.cast(col.type), col)).as_py() is not False
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        same, cast = False, col
        why = f" ({exc})"
    else:
        why = ""
    if not same:
        msg = (
            f"{what} is {col.type} and the table's is {want}; the cast would change "
            f"values{why}, so it is not made; rebuild the table with --full-drop"
        )
        raise StoreError(msg, entity=entity)
    return cast

"""The landing-zone contract, checked file by file, as Fabric would read a table folder.

Microsoft's rules (shared/README.md §3 and 3b): `_metadata.json` with non-empty keyColumns;
data files named with 20-digit, continuous, increasing numbers (the sequential strategy);
no zero-byte or unreadable file; `__rowMarker__`, where present, the last column with the
values 0, 1, 2 or 4; every non-key column nullable; a column keeps its type from file to
file; `_partnerEvents.json` at the landing zone's top. `hygge status --repair` uses the check
to find a rejected file Fabric did not name, and the tests use it on everything hygge writes.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from blocks.stores._blob import BlobArea

MARKER = "__rowMarker__"
MARKERS = {0, 1, 2, 4}
NUMBERED = re.compile(r"^(\d{20})\.parquet$")
STRATEGIES = ("SequentialFileName", "LastUpdateTimeFileDetection")


@dataclass(frozen=True)
class Finding:
    """One way a file breaks the contract."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def partner_events_findings(landing: BlobArea) -> list[Finding]:
    """`_partnerEvents.json`: who writes to this landing zone."""
    doc = _json(landing, landing.key("_partnerEvents.json"))
    if doc is None:
        return [Finding("_partnerEvents.json", "missing or not JSON")]
    info = doc.get("sourceInfo") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("partnerName"), str):
        return [Finding("_partnerEvents.json", "has no partnerName")]
    if not isinstance(info, dict) or not isinstance(info.get("sourceType"), str):
        return [Finding("_partnerEvents.json", "has no sourceInfo.sourceType")]
    return []


def table_findings(landing: BlobArea, folder: str) -> list[Finding]:
    """Everything in one table folder that Fabric would refuse, in file order."""
    meta = _json(landing, landing.key(folder, "_metadata.json"))
    out = _metadata_findings(meta)
    keys = list(meta.get("keyColumns") or []) if isinstance(meta, dict) else []
    strategy = meta.get("fileDetectionStrategy") if isinstance(meta, dict) else None
    prefix = len(landing.key(folder)) + 1
    blobs = [(b.name[prefix:], b.last_modified) for b in landing.blobs(folder)]
    blobs = [(n, t) for n, t in blobs if "/" not in n and n != "_metadata.json"]
    if strategy == "LastUpdateTimeFileDetection":
        # any unique name; Fabric applies them in LastModified order (whole seconds)
        ordered = sorted((t, n) for n, t in blobs if n.endswith(".parquet"))
        numbered = [n for _, n in ordered]
        out += [Finding(n, "is not a .parquet file") for n, _ in blobs if n not in numbered]
        out += [
            Finding(b, f"has the same LastModified second as {a}: their order is undefined")
            for (ta, a), (tb, b) in itertools.pairwise(ordered)
            if ta == tb
        ]
    else:
        numbered = sorted(n for n, _ in blobs if NUMBERED.match(n))
        out += [
            Finding(n, "is neither _metadata.json nor a 20-digit numbered .parquet file")
            for n, _ in blobs
            if n not in numbered
        ]
        numbers = [int(n[:20]) for n in numbered]
        out += [
            Finding(f"{b:020d}.parquet", f"follows {a:020d}.parquet: a gap blocks the rest")
            for a, b in itertools.pairwise(numbers)
            if b != a + 1
        ]
    earlier: pa.Schema | None = None
    for name in numbered:  # in Fabric's order
        problems, schema = file_problems(landing, landing.key(folder, name), keys, earlier)
        out += [Finding(name, p) for p in problems]
        earlier = schema or earlier
    return out


def file_problems(
    area: BlobArea, key: str, keys: list[str], earlier: pa.Schema | None
) -> tuple[list[str], pa.Schema | None]:
    """What is wrong with one data file, and its schema (None when it cannot be read)."""
    with tempfile.TemporaryDirectory(prefix="hygge-om-") as tmp:
        local = Path(tmp) / "file.parquet"
        if not area.get_file(key, local):
            return ["is gone from the landing zone"], None
        if local.stat().st_size == 0:
            return ["is a zero-byte file"], None
        try:
            with pq.ParquetFile(local) as f:
                schema = f.schema_arrow
                marker = f.read(columns=[MARKER]).column(0) if MARKER in schema.names else None
                key_nulls = {
                    k: f.read(columns=[k]).column(0).null_count for k in keys if k in schema.names
                }
        except (pa.ArrowException, OSError) as exc:
            return [f"is not a readable Parquet file ({exc})"], None
    return schema_problems(schema, keys, earlier, marker, key_nulls), schema


def schema_problems(
    schema: pa.Schema,
    keys: list[str],
    earlier: pa.Schema | None,
    marker: pa.ChunkedArray | None = None,
    key_nulls: dict[str, int] | None = None,
) -> list[str]:
    """The contract's rules on one file's schema and marker column."""
    out = []
    missing = [k for k in keys if k not in schema.names]
    if missing:
        out.append(f"lacks the key columns {missing}")
    out += [f"key column {k!r} has {n} NULL values" for k, n in (key_nulls or {}).items() if n]
    if MARKER in schema.names:
        if schema.names[-1] != MARKER:
            out.append(f"{MARKER} is not the last column")
        if not pa.types.is_integer(schema.field(MARKER).type):
            out.append(f"{MARKER} is {schema.field(MARKER).type}, not an integer")
        elif marker is not None:
            seen = {v for v in pc.unique(marker).to_pylist() if v is not None}
            if marker.null_count or not seen <= MARKERS:
                bad = sorted(seen - MARKERS) + (["NULL"] if marker.null_count else [])
                out.append(f"{MARKER} holds {bad}; only 0, 1, 2 and 4 are markers")
    fixed = {*keys, MARKER}
    out += [
        f"non-key column {f.name!r} is NOT NULL (Fabric's schema merge needs it nullable)"
        for f in schema
        if f.name not in fixed and not f.nullable
    ]
    if earlier is not None:
        out += [
            f"column {f.name!r} is {f.type}, but {earlier.field(f.name).type} in the file "
            "before (a type change stops the table)"
            for f in schema
            if f.name != MARKER and f.name in earlier.names and earlier.field(f.name).type != f.type
        ]
    return out


def _metadata_findings(meta: Any) -> list[Finding]:
    if meta is None:
        return [Finding("_metadata.json", "missing or not JSON")]
    keys = meta.get("keyColumns") if isinstance(meta, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        return [Finding("_metadata.json", "keyColumns is not a non-empty list of column names")]
    out = []
    strategy = meta.get("fileDetectionStrategy")
    if strategy is not None and strategy not in STRATEGIES:
        out.append(Finding("_metadata.json", f"fileDetectionStrategy {strategy!r} is unknown"))
    if not isinstance(meta.get("isUpsertDefaultRowMarker", False), bool):
        out.append(Finding("_metadata.json", "isUpsertDefaultRowMarker is not true or false"))
    return out


def _json(area: BlobArea, key: str) -> Any:
    try:
        return area.get_json(key)
    except ValueError:
        return None

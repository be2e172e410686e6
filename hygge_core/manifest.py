"""Run manifests: the record that lets a Store publish atomically and recover after a crash.

The protocol (full description in `docs/crash-safety.md`):

1. stage     files are written under a hidden, run-scoped staging area;
2. prepared  the manifest lists the staged files and the ledger entry they cover;
3. published the files carry their final names (names include the run id, so repeating a
             move is harmless) and the manifest says so;
4. committed the parent flow has saved the ledger entry and marks the manifest.

At the start of every run a Store recovers each entity: `prepared` with every staged file
present rolls forward, anything less rolls back; `published` hands its ledger entry back to the
flow. The watermark therefore only ever moves together with the data it covers.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

#: `dropping` and `waiting` belong to a replace that must empty the destination first and then
#: wait for a downstream service (Fabric Open Mirroring) before it can publish
State = Literal["prepared", "dropping", "waiting", "publishing", "published", "committed"]


@dataclass
class Manifest:
    """One entity's run, as far as the Store is concerned."""

    entity: str
    run_id: str
    mode: Literal["append", "replace"]
    files: list[str]
    rows: int
    bytes: int
    ledger_entry: dict[str, Any] | None
    state: State = "prepared"
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**data)


def write_json_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old content or the new, never a torn file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old content or the new, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def run_file_name(run_id: str, index: int) -> str:
    """The final name of a run's data file: unique per run, sortable by run."""
    return f"part-{run_id}-{index:05d}.parquet"

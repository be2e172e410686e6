"""A mirrored table's data files, named and ordered by the table's file detection strategy.

- `sequential` (Fabric's `SequentialFileName`, the default): 20-digit, continuous numbers;
  Fabric applies files in number order and keeps the last one it processed, so a run
  continues after the highest number present, and a file numbered at or below it was sent.
- `last_update_time` (`LastUpdateTimeFileDetection`), for a landing zone other producers
  also write to: unique, never reused names (`part-<run_id>-<n>.parquet`), applied in
  LastModified order. Blob Storage keeps LastModified to the second, so a run's first commit
  waits past the newest file in the folder (another producer's too), and after each commit the
  next waits for the next second: a run's files never tie with each other or with the files
  before them, and its deletes never tie with its changes. What was sent is
  recorded in the manifest file by file, since a consumed file leaves no trace in the folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from blocks.base import utc_now
from blocks.stores._om_contract import NUMBERED
from blocks.stores.blob_parquet import _iter_blob, footer_schema
from hygge_core.manifest import Manifest, run_file_name

if TYPE_CHECKING:
    from blocks.stores.blob_parquet import BlobStoreBase

    _Base = BlobStoreBase
else:
    # a mixin, not a Block of its own
    _Base = object

Detection = Literal["sequential", "last_update_time"]
#: `_metadata.json`'s fileDetectionStrategy for each
STRATEGY = {"sequential": "SequentialFileName", "last_update_time": "LastUpdateTimeFileDetection"}


class LandingFiles(_Base):
    """File names, order and what a run already sent; mixed into `OpenMirroringStore`."""

    if TYPE_CHECKING:
        file_detection: Detection
        starting_sequence: int

        def table_folder(self, entity: str) -> str: ...

    def data_files(self, entity: str) -> list[str]:
        """The table folder's data files, in the order Fabric applies them."""
        blobs = self.area().blobs(self.table_folder(entity))
        prefix = len(self.area().key(self.table_folder(entity))) + 1
        named = [(b.name[prefix:], b.last_modified) for b in blobs if "/" not in b.name[prefix:]]
        if self.file_detection == "sequential":
            return sorted(n for n, _ in named if NUMBERED.match(n))
        return [n for _, n in sorted((t, n) for n, t in named if n.endswith(".parquet"))]

    def numbers(self, entity: str) -> list[int]:
        """The numbers of a sequential table's files present."""
        names = self.area().names(self.table_folder(entity))
        return sorted(int(m.group(1)) for n in names if (m := NUMBERED.match(n)))

    def first_number(self, entity: str) -> int:
        """Where a run's numbering starts: after the highest number present."""
        if self.file_detection != "sequential":
            return 0
        numbers = self.numbers(entity)
        return numbers[-1] + 1 if numbers else self.starting_sequence

    def file_name(self, run_id: str, index: int, first: int) -> str:
        if self.file_detection == "sequential":
            return f"{first + index:020d}.parquet"
        return run_file_name(run_id, index)

    def data_key(self, entity: str, name: str) -> str:
        return self.area().key(self.table_folder(entity), name)

    def sent(self, manifest: Manifest) -> set[str]:
        """The run's files already committed: visible now, or consumed by Fabric since."""
        files = manifest.files
        if self.file_detection == "sequential":
            numbers = self.numbers(manifest.entity)
            top = numbers[-1] if numbers else 0
            return {n for n in files if (m := NUMBERED.match(n)) and int(m.group(1)) <= top}
        present = set(self.area().names(self.table_folder(manifest.entity)))
        done = int(manifest.extra.get("sent", 0))
        # files are committed in order: one present means every one before it was sent
        last = max((i for i, n in enumerate(files) if i < done or n in present), default=-1)
        return set(files[: last + 1])

    def after_newest(self, entity: str) -> None:
        """Before a run's first commit: order it after every file already in the folder."""
        if self.file_detection == "sequential":
            return  # the numbers say it
        blobs = self.area().blobs(self.table_folder(entity))
        newest = max((b.last_modified for b in blobs if b.name.endswith(".parquet")), default=None)
        if newest is not None:
            _next_second(newest)

    def record_sent(self, manifest: Manifest, name: str) -> None:
        """After a commit: order the next file after this one, and remember what was sent."""
        if self.file_detection == "sequential":
            return  # the numbers say it
        blob = self.area().container.get_blob_client(self.data_key(manifest.entity, name))
        _next_second(blob.get_blob_properties().last_modified)
        manifest.extra["sent"] = manifest.files.index(name) + 1
        self.save_manifest(manifest)

    def table_schema_now(self, entity: str) -> pa.Schema | None:
        """The schema of the newest data file in the landing zone, if any remains."""
        files = self.data_files(entity)
        return footer_schema(self.area(), self.data_key(entity, files[-1])) if files else None

    def landing_files(self, entity: str) -> Iterator[pa.RecordBatch]:
        """Every data file still in the table folder, in file order (for checks and tests)."""
        for name in self.data_files(entity):
            yield from _iter_blob(self.area(), self.data_key(entity, name))


def _next_second(modified: datetime) -> None:
    """Wait until a commit now gets a later LastModified (whole seconds) than `modified`."""
    wait = 1.0 - (utc_now() - modified).total_seconds()
    if wait > 0:
        time.sleep(wait)

"""Where a Delta Store keeps its own records and staging: on local disk, or in its container.

A local Delta Store keeps the Parquet Store's layout beside its tables (`ParquetStore`). A
remote one keeps the same records in the same container as its tables, through the Blob-API
area of `AdlsStore` or `OneLakeStore` (`records()`), never on local disk:

    ADLS/Blob   <container>/<path>/_manifests/, _state/, _journal/, _staging/, _hygge.lock
                (tables at <container>/<path>/<entity>/)
    OneLake     <workspace>/<item>/Files/_hygge/Tables/[<schema>/]_manifests/, ...
                (tables at <workspace>/<item>/Tables/[<schema>/]<entity>/; the Lakehouse
                shows only Delta tables under `Tables/`, so the records sit in `Files/`)

A remote run is encoded into a local spool (`$TMPDIR/hygge-delta/...`, which delta-rs reads
for the commit) and each staged file is uploaded to `_staging/<entity>/<run_id>/` before the
manifest says prepared. So a run prepared on one machine is rolled forward by the next run
on any machine: what the spool no longer holds is downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from blocks.stores._blob import lease_lost
from blocks.stores._local_fs import make_dirs, remove_staging
from blocks.stores.blob_parquet import BlobParquetStore
from blocks.stores.parquet import ParquetStore
from hygge_core.errors import StoreError
from hygge_core.manifest import Manifest

if TYPE_CHECKING:
    _Base = ParquetStore
else:
    # a mixin, not a Block of its own (a subclass would take over the Parquet Store's slug)
    _Base = object


class DeltaArea(_Base):
    """The Parquet Store's records and staging, kept in `records()`'s Blob area when it has one.

    Mixed in before `ParquetStore`, whose local methods `super()` reaches.
    """

    def records(self) -> BlobParquetStore | None:
        """The Blob-API Store whose area holds the records (None: the local `path`)."""
        return None

    # -- records: manifests, state, journal, lock ---------------------------------------------

    def manifest_ids(self, entity: str) -> list[str]:
        r = self.records()
        return super().manifest_ids(entity) if r is None else r.manifest_ids(entity)

    def load_manifest(self, entity: str, run_id: str) -> Manifest | None:
        r = self.records()
        if r is None:
            return super().load_manifest(entity, run_id)
        return r.load_manifest(entity, run_id)

    def save_manifest(self, manifest: Manifest) -> None:
        r = self.records()
        if r is None:
            super().save_manifest(manifest)
        else:
            r.save_manifest(manifest)

    def delete_manifest(self, entity: str, run_id: str) -> None:
        r = self.records()
        if r is None:
            super().delete_manifest(entity, run_id)
        else:
            r.delete_manifest(entity, run_id)

    def put_state(self, entity: str, name: str, data: bytes) -> None:
        r = self.records()
        if r is None:
            super().put_state(entity, name, data)
        else:
            r.put_state(entity, name, data)

    def get_state(self, entity: str, name: str) -> bytes | None:
        r = self.records()
        return super().get_state(entity, name) if r is None else r.get_state(entity, name)

    def put_state_file(self, entity: str, name: str, path: Path) -> None:
        r = self.records()
        if r is None:
            super().put_state_file(entity, name, path)
        else:
            r.put_state_file(entity, name, path)

    def get_state_file(self, entity: str, name: str, dest: Path) -> bool:
        r = self.records()
        if r is None:
            return bool(super().get_state_file(entity, name, dest))
        return r.get_state_file(entity, name, dest)

    def state_names(self, entity: str) -> list[str]:
        r = self.records()
        return super().state_names(entity) if r is None else r.state_names(entity)

    def delete_state(self, entity: str, name: str) -> None:
        r = self.records()
        if r is None:
            super().delete_state(entity, name)
        else:
            r.delete_state(entity, name)

    def write_journal(self, run_id: str, records: pa.Table) -> None:
        r = self.records()
        if r is None:
            super().write_journal(run_id, records)
        else:
            r.write_journal(run_id, records)

    def read_journal(self) -> pa.Table | None:
        r = self.records()
        return super().read_journal() if r is None else r.read_journal()

    def lock_id(self) -> str:
        r = self.records()
        return super().lock_id() if r is None else r.lock_id()

    def exclusive(
        self, owner: str, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[None]:
        r = self.records()
        if r is None:
            return super().exclusive(owner, wait_seconds, on_wait)
        return r.exclusive(owner, wait_seconds, on_wait)

    def check(self) -> None:
        r = self.records()
        if r is None:
            super().check()
        else:
            r.check()

    # -- staging ------------------------------------------------------------------------------

    def staging_dir(self, entity: str, run_id: str) -> Path:
        return self._spool() / entity / run_id

    def _spool(self) -> Path:
        """Where runs are encoded: `<path>/_staging`, or a local spool for a remote Store."""
        if self.records() is None:
            return self._root / "_staging"
        return spool_root() / hashlib.sha256(self.lock_id().encode()).hexdigest()[:16]

    def keep_staged(self, entity: str, run_id: str, names: list[str]) -> None:
        """Make a run's staged files durable where the records are (before prepare)."""
        r = self.records()
        if r is None:
            return  # `close_files` fsynced them in place
        area, folder = r.area(), self.staging_dir(entity, run_id)
        for name in names:
            blob = area.container.get_blob_client(area.key("_staging", entity, run_id, name))
            with (folder / name).open("rb") as f:
                # the SDK stages blocks and commits them last: the blob appears whole or not
                blob.upload_blob(f, overwrite=True, max_concurrency=r.upload_parallelism)

    def staged_present(self, manifest: Manifest) -> bool:
        """Whether every staged file of a prepared run (its rows and its deleted keys) can
        still be read for its commit."""
        names = [*manifest.files, *manifest.extra.get("deletes", [])]
        if not names:
            return False
        r = self.records()
        if r is None:
            folder = self.staging_dir(manifest.entity, manifest.run_id)
            return all((folder / n).exists() for n in names)
        area = r.area()
        keys = [area.key("_staging", manifest.entity, manifest.run_id, n) for n in names]
        return all(area.exists(k) for k in keys)

    def staged_paths(self, manifest: Manifest, names: list[str] | None = None) -> list[Path]:
        """Local copies of a run's staged files (`names`, default its data files),
        downloading those the spool lacks."""
        entity, run_id = manifest.entity, manifest.run_id
        folder = self.staging_dir(entity, run_id)
        paths = [folder / n for n in (manifest.files if names is None else names)]
        r = self.records()
        if r is None:
            return paths
        sizes: dict[str, int] = manifest.extra.get("sizes", {})
        area = r.area()
        for path in paths:
            if path.exists() and path.stat().st_size == sizes.get(path.name):
                continue  # the writer's own spool (this process)
            make_dirs(folder)
            part = path.with_name(f".{path.name}.part")
            blob = area.container.get_blob_client(area.key("_staging", entity, run_id, path.name))
            with part.open("wb") as f:
                blob.download_blob(max_concurrency=r.upload_parallelism).readinto(f)
            os.replace(part, path)
        return paths

    def drop_staging(self, entity: str, run_id: str) -> None:
        remove_staging(self.staging_dir(entity, run_id))
        r = self.records()
        if r is not None:
            r.area().delete_folder("_staging", entity, run_id)

    def clean_staging(self, entity: str, live: set[str]) -> None:
        r = self.records()
        if r is None:
            super().clean_staging(entity, live)
            return
        spool = self._spool() / entity
        if spool.is_dir():
            for leftover in spool.iterdir():
                if leftover.name not in live:
                    shutil.rmtree(leftover, ignore_errors=True)
        area = r.area()
        runs = {name.split("/", 1)[0] for name in area.names("_staging", entity)}
        for run_id in sorted(runs - live):
            area.delete_folder("_staging", entity, run_id)

    def ensure_lease(self) -> None:
        """Refuse a commit once this run's lease on a remote Store's lock has lapsed."""
        r = self.records()
        if r is not None and lease_lost(r.area().container):
            msg = (
                "this run lost its lease on the Store's lock (the storage account did not answer "
                "the renewals), so another run may be writing: the Delta commit is not made; "
                "the next run finishes what this one prepared"
            )
            raise StoreError(msg)


def spool_root() -> Path:
    """The local spool of every remote Delta Store on this machine (for tests and cleanup)."""
    return Path(tempfile.gettempdir()) / "hygge-delta"

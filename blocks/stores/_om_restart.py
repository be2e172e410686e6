"""Restarting a mirrored table as Microsoft describes it: the full drop of an Open Mirroring Store.

1. stage the complete new table under `state_path` (the run's writer did that);
2. delete the table folder, retrying while the service holds it;
3. wait until Fabric's monitor (`Files/Monitoring/tables.json`) no longer lists the table, or
   without a readable monitor a fixed `drop_wait_seconds`;
4. recreate the folder, `_metadata.json` and the initial load with fresh numbering;
5. let incremental files follow only once the monitor lists the table again (`await_rebuilt`).

Each step records itself in the run's manifest first, so a kill anywhere resumes there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError, ResourceExistsError

from blocks.base import utc_now
from blocks.stores._blob import store_error, with_retries
from blocks.stores._om_monitor import find
from hygge_core import faults
from hygge_core.errors import StoreError, TransientStoreError
from hygge_core.manifest import Manifest

if TYPE_CHECKING:
    from blocks.stores._blob import BlobArea
    from blocks.stores._om_monitor import TableStatus
    from blocks.stores.blob_parquet import BlobStoreBase

    _Base = BlobStoreBase
else:
    # a mixin, not a Block of its own
    _Base = object

#: how often a restart asks Fabric's monitor whether the table has gone, or come back
POLL_SECONDS = 2.0
#: the state object that says a rebuilt table has not yet reappeared in Fabric's monitor
REBUILT = "rebuilt"


class TableRestart(_Base):
    """The full drop's steps, mixed into `OpenMirroringStore`, which supplies these."""

    if TYPE_CHECKING:
        drop_wait_seconds: float
        drop_timeout_seconds: float
        starting_sequence: int
        table_schema: str | None

        def state(self) -> BlobArea: ...
        def table_folder(self, entity: str) -> str: ...
        def monitor(self) -> list[TableStatus] | None: ...
        def file_name(self, run_id: str, index: int, first: int) -> str: ...
        def data_key(self, entity: str, name: str) -> str: ...
        def sent(self, manifest: Manifest) -> set[str]: ...
        def record_sent(self, manifest: Manifest, name: str) -> None: ...
        def ensure_metadata(self, entity: str) -> None: ...
        def put_state(self, entity: str, name: str, data: bytes) -> None: ...
        def get_state(self, entity: str, name: str) -> bytes | None: ...
        def delete_state(self, entity: str, name: str) -> None: ...

    def drop_table(self, manifest: Manifest) -> None:
        """Delete the table folder (Fabric then drops the table) and start the wait."""
        folder = self.table_folder(manifest.entity)
        if manifest.state != "dropping":
            self._supersede(manifest)
            # decided once, before deleting: a rerun after a kill mid-delete still waits
            manifest.extra["had_table"] = bool(self.area().blobs(folder))
            manifest.state = "dropping"
            self.save_manifest(manifest)
        # the service may hold the folder while it reads: retry with backoff
        with_retries(lambda: self.area().delete_folder(folder))
        faults.point("publish.between_swap_renames")
        # nothing was there (a first load): Fabric has no table to drop, nothing to wait for
        wait = self.drop_wait_seconds if manifest.extra.get("had_table", True) else 0.0
        if wait and self.monitor() is not None:
            # Fabric's monitor says when the table is gone: poll it instead of a fixed wait
            manifest.extra["drop_watch"] = utc_now().isoformat()
            wait = 0.0
        ready = utc_now() + dt.timedelta(seconds=wait)
        manifest.state = "waiting"
        manifest.extra["ready_at"] = ready.isoformat()
        self.save_manifest(manifest)

    def _supersede(self, manifest: Manifest) -> None:
        """Forget older unfinished replaces of the table: this one replaces them all."""
        state = self.state()
        folder = self.table_folder(manifest.entity)
        for name in state.names("_manifests", folder):
            raw = state.get_bytes(state.key("_manifests", folder, name))
            other = Manifest.from_json(raw.decode()) if raw else None
            if (
                other is not None
                and other.run_id != manifest.run_id
                and other.mode == "replace"
                and other.state in ("prepared", "dropping", "waiting", "publishing")
            ):
                for key in other.extra.get("staged", []):
                    state.delete(key)
                state.delete(state.key("_manifests", folder, name))

    def finish(self, entity: str, run_id: str) -> Manifest:
        """Publish a replace whose wait is over: fresh numbering from 1, each file atomic."""
        try:
            manifest = self.load_manifest(entity, run_id)
            if manifest is None:
                msg = f"run {run_id} has no manifest to finish"
                raise StoreError(msg, entity=entity)
            if manifest.state == "dropping":
                self.drop_table(manifest)
            if manifest.state == "waiting":
                _sleep_until(manifest.extra.get("ready_at"))
                if manifest.extra.get("drop_watch"):
                    self._await_drop(manifest)
                manifest.state = "publishing"
                self.save_manifest(manifest)
            if manifest.state == "publishing":
                self._copy_in(manifest)
            if manifest.state not in ("published", "committed"):
                msg = f"run {run_id} cannot be finished from state {manifest.state!r}"
                raise StoreError(msg, entity=entity)
            return manifest
        except AzureError as exc:
            raise store_error(exc, "cannot publish the new table", entity=entity) from exc

    def _await_drop(self, manifest: Manifest) -> None:
        """Wait until Fabric's monitor no longer lists the dropped table (Microsoft's restart:
        delete the folder, wait for the table to disappear, then recreate it)."""
        since = dt.datetime.fromisoformat(manifest.extra["drop_watch"])
        late = (
            f"Fabric still lists the table {self.drop_timeout_seconds:g}s after its folder was "
            "deleted, so the rebuilt table is not published yet; it stays staged and the next "
            "run resumes the full drop. Check the mirrored database in Fabric (is replication "
            "running?), or raise `drop_timeout_seconds`"
        )
        if not self._watch(manifest.entity, since, listed=False, late=late):
            # the monitor went away: fall back to the fixed wait from the drop
            _sleep_until((since + dt.timedelta(seconds=self.drop_wait_seconds)).isoformat())

    def await_rebuilt(self, entity: str) -> None:
        """Hold a run's incremental files until Fabric lists the table a full drop rebuilt
        (Microsoft: resume incremental publishing only after the table reappears)."""
        raw = self.get_state(entity, REBUILT)
        if raw is None:
            return
        late = (
            f"Fabric has not listed the table {self.drop_timeout_seconds:g}s after a full drop "
            "published its new initial load, and incremental files may only follow once it "
            "does; nothing of this run was written, and the next run loads it again. Check the "
            "mirrored database in Fabric (is replication running?), or raise "
            "`drop_timeout_seconds`"
        )
        since = dt.datetime.fromisoformat(json.loads(raw)["at"])
        # no readable monitor: nothing to wait on (the fixed wait already passed)
        self._watch(entity, since, listed=True, late=late)
        self.delete_state(entity, REBUILT)

    def _watch(self, entity: str, since: dt.datetime, *, listed: bool, late: str) -> bool:
        """Poll Fabric's monitor until it lists the table (`listed`) or no longer does; False
        when the monitor cannot be read. At `drop_timeout_seconds` after `since`, `late`."""
        deadline = since + dt.timedelta(seconds=self.drop_timeout_seconds)
        while True:
            tables = self.monitor()
            if tables is None:
                return False
            if (find(tables, entity, self.table_schema) is not None) == listed:
                return True
            if utc_now() >= deadline:
                raise TransientStoreError(late, entity=entity)
            time.sleep(POLL_SECONDS)

    def _copy_in(self, manifest: Manifest) -> None:
        area, state = self.area(), self.state()
        self.ensure_metadata(manifest.entity)
        if manifest.extra.get("drop_watch"):
            # the monitor saw the table go: incremental files wait until it sees it come back
            mark = {"run_id": manifest.run_id, "at": utc_now().isoformat()}
            self.put_state(manifest.entity, REBUILT, json.dumps(mark).encode())
        staged = manifest.extra["staged"]
        # the rebuilt table's names, known before the first copy: what was sent is then known
        # after any interruption (and files copied may have been consumed since)
        names = [
            self.file_name(manifest.run_id, i, self.starting_sequence) for i in range(len(staged))
        ]
        if manifest.files != names:
            manifest.files = names
            self.save_manifest(manifest)
        sent = self.sent(manifest)
        for i, (key, name) in enumerate(zip(staged, names, strict=True)):
            if name in sent:
                continue
            if i:
                faults.point("publish.between_files")
            target = area.container.get_blob_client(self.data_key(manifest.entity, name))
            source = state.container.get_blob_client(key).download_blob(
                max_concurrency=self.upload_parallelism
            )
            # upload_blob stages blocks and commits them at the end: the file appears whole
            with contextlib.suppress(ResourceExistsError):  # copied just before a kill
                target.upload_blob(
                    source.chunks(),
                    length=source.size,
                    overwrite=False,
                    max_concurrency=self.upload_parallelism,
                )
            self.record_sent(manifest, name)
        self.mark_published(manifest)


def _sleep_until(ready_at: str | None) -> None:
    if not ready_at:
        return
    left = (dt.datetime.fromisoformat(ready_at) - utc_now()).total_seconds()
    if left > 0:
        time.sleep(left)

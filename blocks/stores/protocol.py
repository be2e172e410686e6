"""The one publishing protocol every Store follows: stage, prepare, publish, commit, recover.

`docs/crash-safety.md` describes it in full. This module owns the order of the steps, the
manifest states, the fault points between them and how many committed manifests are kept; a
Store supplies the primitives below and its encoder, and never writes these loops again.

Primitives of a `PublishingStore` (each safe to repeat after a crash):

- manifests: `manifest_ids`, `load_manifest`, `save_manifest` (atomic: old or new, never torn),
  `delete_manifest`;
- `staged_complete`: can every file of a prepared run still be made visible?
- `unpublished` and `publish_file`: which of a run's files are not yet visible, and make one
  visible under its final name in one step (a rename, a block-list commit);
- `replace_table`: put a replace's new table in place of the old one (or start doing so and
  return False when the destination needs time: `finish` completes it);
- `commit_run`, for a `transactional` Store (one with its own log, as Delta): publish the
  whole run, append or replace, in one commit that records the run id, in place of
  `publish_file` and `replace_table`; `unpublished` is then empty once that commit exists;
- `unpublish`: remove whatever of a run that never fully published is visible, and its staging;
- `after_publish` and `clean_staging`: drop what a published run no longer needs, and staging
  that no pending run owns;
- `abort_prepared`: a failed attempt whose manifest is prepared (default: roll it back);
- `backend_errors` and `backend_error`: the storage client's exceptions, and their translation
  into a `StoreError` that names the cause and the fix;
- `exclusive` (from `StoreBlock`): the lock that lets one run at a time write the Store;
- `put_state`, `get_state`, `state_names`, `delete_state`: small named objects an entity keeps
  beside its manifests (a boundary set too large for the ledger), each written in one step. An
  object named `<run_id>.<what>` belongs to that run and goes when its manifest goes;
  `put_state_file` and `get_state_file` move one between the state area and a local file
  without holding it in memory (a key set of 10M keys is 100+ MB), where the Store can stream.

A `StagedWriter` stages one entity's run; it supplies `close_files` (finish encoding, make the
staged files durable), `abandon_files` and `discard_staging`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from blocks.base import EntityWriter, StoreBlock, WriteMode, utc_now
from hygge_core import faults
from hygge_core.errors import StoreError, first_line
from hygge_core.manifest import Manifest

#: committed manifests kept per entity (older ones are deleted by recovery)
KEEP_COMMITTED = 10
#: states of a replace that must empty the destination and wait before it can publish
DEFERRED = ("dropping", "waiting", "publishing")


def waiting_message(where: str, holder: str, wait_seconds: float) -> str:
    """What a run says, once, when it queues for a Store another run holds (`exclusive`)."""
    return (
        f"waiting up to {wait_seconds:g} s (`lock_wait_seconds`) for another hygge run writing "
        f"to {where} ({holder}) to finish"
    )


@dataclass
class Staged:
    """What a writer staged: final file names, their bytes, and Store-specific manifest data."""

    files: list[str]
    bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


class PublishingStore(StoreBlock):
    """A Store that publishes through run manifests: the protocol, over a Store's primitives."""

    #: exceptions of the storage client that `backend_error` turns into a StoreError
    backend_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: a Store with its own transaction log publishes a whole run, of either mode, in one
    #: commit (`commit_run`) that records the run id; `unpublished` reads that record
    transactional: ClassVar[bool] = False

    # -- primitives ---------------------------------------------------------------------------

    @abstractmethod
    def manifest_ids(self, entity: str) -> list[str]:
        """Run ids of the entity's manifests, oldest first."""

    @abstractmethod
    def load_manifest(self, entity: str, run_id: str) -> Manifest | None:
        """A run's manifest, or None when it has none."""

    @abstractmethod
    def save_manifest(self, manifest: Manifest) -> None:
        """Write a manifest in one step: a reader sees the old one or the new one."""

    @abstractmethod
    def delete_manifest(self, entity: str, run_id: str) -> None: ...

    @abstractmethod
    def staged_complete(self, manifest: Manifest) -> bool:
        """Whether every file of a prepared run is staged or visible, so it can roll forward."""

    def unpublished(self, manifest: Manifest) -> list[str]:
        """The run's files not yet visible (default: all; publishing one again is harmless)."""
        return list(manifest.files)

    @abstractmethod
    def publish_file(self, manifest: Manifest, name: str) -> None:
        """Make one staged file visible under its final name, in one step."""

    @abstractmethod
    def replace_table(self, manifest: Manifest) -> bool:
        """Put a replace's new table in place of the old; False when `finish` completes it."""

    @abstractmethod
    def unpublish(self, manifest: Manifest) -> None:
        """Remove what is visible of a run that never fully published, and its staging."""

    @abstractmethod
    def put_state(self, entity: str, name: str, data: bytes) -> None:
        """Keep a named object in the entity's state area, written in one step."""

    @abstractmethod
    def get_state(self, entity: str, name: str) -> bytes | None: ...

    @abstractmethod
    def state_names(self, entity: str) -> list[str]: ...

    @abstractmethod
    def delete_state(self, entity: str, name: str) -> None: ...

    def put_state_file(self, entity: str, name: str, path: Path) -> None:
        """Keep a local file as a named state object, in one step (default: read whole into
        memory and `put_state`; the local and blob Stores stream it)."""
        self.put_state(entity, name, path.read_bytes())

    def get_state_file(self, entity: str, name: str, dest: Path) -> bool:
        """Copy a state object to the local file `dest`; False when there is none (default:
        `get_state`, whole in memory; the local and blob Stores stream it)."""
        data = self.get_state(entity, name)
        if data is None:
            return False
        dest.write_bytes(data)
        return True

    def run_committed(self, manifest: Manifest) -> bool:
        """Whether the Store's log holds this run's commit (`transactional` Stores)."""
        msg = f"{type(self).__name__} keeps no log of commits"
        raise NotImplementedError(msg)

    def commit_run(self, manifest: Manifest) -> None:
        """Make a whole run visible in one commit of the Store's log (`transactional` Stores)."""
        msg = f"{type(self).__name__} publishes file by file, not in one commit"
        raise NotImplementedError(msg)

    def before_publish(self, manifest: Manifest) -> None:
        """Get the destination ready for a run's files (a folder, a metadata file)."""

    def after_publish(self, manifest: Manifest) -> None:
        """Drop what a published run no longer needs (its staging, a parked old table)."""

    def clean_staging(self, entity: str, live: set[str]) -> None:
        """Remove staging that none of the `live` (published, uncommitted) runs owns."""

    def abort_prepared(self, manifest: Manifest) -> None:
        """A failed attempt left this manifest prepared: roll it back, unless part of it is
        visible and must be finished instead (a Store's own rule)."""
        self.roll_back(manifest)

    def backend_error(self, exc: BaseException, action: str, entity: str | None) -> StoreError:
        """The storage client's exception as a StoreError naming the cause and the fix."""
        return StoreError(f"{action}: {exc}", entity=entity)

    # -- the protocol -------------------------------------------------------------------------

    @contextmanager
    def translated(self, action: str, entity: str | None) -> Iterator[None]:
        try:
            yield
        except self.backend_errors as exc:
            raise self.backend_error(exc, action, entity) from exc

    def recover(self, entity: str) -> list[Manifest]:
        with self.translated("cannot recover earlier runs", entity):
            pending: list[Manifest] = []
            committed: list[str] = []
            for run_id in self.manifest_ids(entity):
                manifest = self.load_manifest(entity, run_id)
                if manifest is None:
                    continue
                if manifest.state == "prepared":
                    if not self.staged_complete(manifest):
                        self.roll_back(manifest)
                        continue  # nothing of that run remains
                    self.publish(manifest)
                elif manifest.state in DEFERRED:
                    # the old table is (being) dropped: only going forward restores the data
                    manifest = self.finish(entity, run_id)
                if manifest.state == "published":
                    pending.append(manifest)
                else:
                    committed.append(run_id)
            for run_id in committed[:-KEEP_COMMITTED]:
                self.delete_manifest(entity, run_id)
            live = {m.run_id for m in pending}
            self.clean_staging(entity, live)
            self.sweep_state(entity, live | set(committed[-KEEP_COMMITTED:]))
            return pending

    def sweep_state(self, entity: str, kept: set[str]) -> None:
        """Delete the state objects of runs no kept manifest names (`<run_id>.<what>`)."""
        for name in self.state_names(entity):
            run_id, dot, _ = name.partition(".")
            if dot and run_id not in kept:
                self.delete_state(entity, name)

    def publish(self, manifest: Manifest) -> None:
        """Make a prepared run visible, then mark it published; safe to repeat."""
        self.before_publish(manifest)
        if self.transactional:
            if self.unpublished(manifest):
                self.commit_run(manifest)
        elif manifest.mode == "append":
            self.publish_files(manifest)
        elif not self.replace_table(manifest):
            return  # deferred: `finish` publishes it
        self.mark_published(manifest)

    def publish_files(self, manifest: Manifest) -> None:
        """Make each file visible in order, skipping those that already are."""
        todo = set(self.unpublished(manifest))
        for i, name in enumerate(manifest.files):
            if name not in todo:
                continue
            if i:
                faults.point("publish.between_files")
            self.publish_file(manifest, name)

    def mark_published(self, manifest: Manifest) -> None:
        faults.point("publish.before_mark")
        manifest.state = "published"
        self.save_manifest(manifest)
        self.after_publish(manifest)

    def roll_back(self, manifest: Manifest) -> None:
        """Undo a run that never fully published: nothing of it stays visible."""
        self.unpublish(manifest)
        self.delete_manifest(manifest.entity, manifest.run_id)

    def mark_committed(self, entity: str, run_id: str) -> None:
        with self.translated("cannot mark the run committed", entity):
            manifest = self.load_manifest(entity, run_id)
            if manifest is not None:
                manifest.state = "committed"
                self.save_manifest(manifest)


class StagedWriter(EntityWriter):
    """Stages one entity's run, then prepares its manifest and publishes through the protocol."""

    store: PublishingStore
    entity: str
    run_id: str
    mode: WriteMode
    _prepared: bool = False

    @abstractmethod
    def close_files(self) -> Staged:
        """Finish encoding and make every staged file durable; nothing is visible yet."""

    @abstractmethod
    def abandon_files(self) -> None:
        """Stop encoding at once; called on failure (errors are swallowed)."""

    def discard_staging(self) -> None:
        """Delete what this attempt staged (before prepare; default: it expires by itself)."""

    def publish_error(self, exc: BaseException) -> StoreError:
        error = self.store.backend_error(exc, "cannot publish to the Store", self.entity)
        if not self.store.transactional:
            return error
        try:
            manifest = self.store.load_manifest(self.entity, self.run_id)
            done = manifest is not None and self.store.run_committed(manifest)
        except self.store.backend_errors:
            return error
        if not done:
            return error
        # a retry would re-read the rows this commit holds and apply them again: the entity
        # fails instead, and the next run's recovery records the commit
        msg = (
            f"the run's {self.store.spec_type} commit is in the table, but recording it failed "
            f"({first_line(exc)}); the next run records it and moves the watermark"
        )
        return StoreError(msg, entity=self.entity)

    def commit_files(self, ledger_entry: dict[str, Any] | None, rows: int) -> Manifest:
        try:
            staged = self.close_files()
            manifest = Manifest(
                entity=self.entity,
                run_id=self.run_id,
                mode=self.mode,
                files=staged.files,
                rows=rows,
                bytes=staged.bytes,
                ledger_entry=ledger_entry,
                created_at=utc_now().isoformat(),
                extra=staged.extra,
            )
            self.store.save_manifest(manifest)
            self._prepared = True
            faults.point("publish.after_prepare")
            self.store.publish(manifest)
            return manifest
        except self.store.backend_errors as exc:
            raise self.publish_error(exc) from exc

    def abort(self) -> None:
        self.abandon_files()
        if not self._prepared:
            self.discard_staging()
            return
        try:
            manifest = self.store.load_manifest(self.entity, self.run_id)
        except self.store.backend_errors:
            return  # the next run's recovery finishes or undoes it
        if manifest is not None and manifest.state == "prepared":
            self.store.abort_prepared(manifest)

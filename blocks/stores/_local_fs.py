"""Local-filesystem steps of the Parquet Store: folders, fsyncs, the atomic swap, OS errors."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

from hygge_core import faults
from hygge_core.errors import StoreError, TransientStoreError, is_transient
from hygge_core.manifest import fsync_dir


def make_dirs(folder: Path, attempts: int = 5) -> None:
    """`mkdir -p` that tolerates another entity's `remove_staging` removing an empty parent
    (`_staging/`) between the creation of that parent and of its child."""
    for attempt in range(attempts):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def remove_staging(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # only when no other run stages this entity
        staged.parent.parent.rmdir()


def has_all(folder: Path, names: list[str]) -> bool:
    return bool(names) and all((folder / n).exists() for n in names)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_atomic(source: Path, dest: Path, *, durable: bool = True) -> None:
    """Copy `source` to `dest` so a reader sees the old file or the new, never a torn one
    (the kernel copies: nothing passes through memory). `durable` fsyncs it in place."""
    make_dirs(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        if durable:
            fsync_file(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(dest.parent)


def swap_in(staged: Path, final: Path) -> None:
    """Put the staged folder in place of the final one, in one step where the OS allows."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(staged, final)
    elif _exchange(staged, final):
        pass  # `staged` now holds the old table; publish() removes it
    else:
        old = staged.with_name(staged.name + ".old")
        os.rename(final, old)
        faults.point("publish.between_swap_renames")
        os.rename(staged, final)
    fsync_dir(final.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where unsupported."""
    if os.environ.get("HYGGE_NO_RENAME_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    res = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_OS_REASONS = {
    errno.ENOSPC: ("the disk is full", "free space there or point the Store's `path` elsewhere"),
    errno.EDQUOT: ("the disk quota is exhausted", "raise the quota or free space there"),
    errno.EACCES: ("permission denied", "give the user running hygge write access there"),
    errno.EPERM: (
        "permission denied",
        "give the user running hygge write access there (and clear any immutable flag)",
    ),
    errno.EROFS: (
        "the filesystem is read-only",
        "remount it read-write or point the Store's `path` elsewhere",
    ),
    errno.ENOTDIR: ("a part of that path is not a directory", "point the Store's `path` at one"),
}


def os_error(
    exc: OSError, entity: str | None, where: Path, *, during_run: bool = True
) -> StoreError:
    reason, advice = _OS_REASONS.get(exc.errno or 0, (exc.strerror or str(exc), ""))
    path = Path(exc.filename) if exc.filename else where
    if exc.errno == errno.ENOTDIR:
        blocker = _file_in_the_way(path)
        if blocker is not None:
            reason = f"{str(blocker)!r} is a file, not a directory"
    if exc.filename2:
        # a rename while publishing: the folder it goes into is what a reader can act on
        action = f"cannot move a staged file into {str(Path(exc.filename2).parent)!r}"
    else:
        action = f"cannot write {str(path)!r}"
    after = f"; {advice}" if advice else ""
    unchanged = "; the published table and the ledger are unchanged" if during_run else ""
    msg = f"{action}: {reason}{unchanged}{after}"
    # a dropped network mount is worth a retry; a full disk or a permission is not
    kind = TransientStoreError if is_transient(exc) else StoreError
    return kind(msg, entity=entity)


def _file_in_the_way(path: Path) -> Path | None:
    """The existing non-directory that stops `path` (or one of its parents) being created."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def copy_bytes(source: Path, target: Path) -> None:
    """Copy a file's bytes: in the kernel (`copy_file_range`, a reflink on filesystems that
    share extents), falling back to a plain copy; then make it durable."""
    with source.open("rb") as src, target.open("wb") as dst:
        size = os.fstat(src.fileno()).st_size
        try:
            done = 0
            while done < size:
                sent = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
                if sent == 0:
                    break
                done += sent
        except (AttributeError, OSError):
            src.seek(0)
            dst.seek(0)
            dst.truncate()
            shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())

"""Where a file Home's files are: local disk, an ADLS Gen2 / Blob container, OneLake, or S3.

One abstraction for the three file Homes (Parquet, CSV, JSON): it lists an entity's files
(one file, a directory, a glob), opens one as a seekable stream, and names each for Polars'
own object-store scan. Remote places go through `obstore` (Rust's `object_store`, the crate
Polars and delta-rs read with), so listing, ranged reads and Polars' scan take one set of
options: the ones `blocks.stores._delta_place` builds for Azure, and an S3 set here. Listing
gives each object's size, modification time and ETag (what `incremental: files` compares).

Parquet is scanned where it lies, row group by row group (`pl.scan_parquet` on the URLs).
CSV and JSON are first streamed to a temporary folder in 8 MB chunks and read there, since
their checks (blank lines, transcoding, line numbers of bad JSON) read the bytes anyway.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hygge_core.errors import HomeError, TransientHomeError, first_line, redact

_CHUNK = 8 * 1024 * 1024
_READ_AHEAD = 256 * 1024
#: the tail read for a footer: most footers fit, a larger one takes a second read
_TAIL = 64 * 1024
_REFUSED = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AuthorizationFailure",
    "AuthenticationFailed",
    "AuthorizationPermissionMismatch",
    "403 Forbidden",
    "401 Unauthorized",
)
#: the Blob API's own host for OneLake, without a credentials block's account URL
ONELAKE_URL = "https://onelake.blob.fabric.microsoft.com"


@dataclass(frozen=True)
class Remote:
    """An object store and the folder (key prefix) of it that a Home reads."""

    #: how messages and the ledger name an object: `<root>/<key>`
    root: str
    #: how Polars names the same object: `<scan_root>/<key>`
    scan_root: str
    #: object_store options (hold secrets: never log them, nor show them in a repr)
    options: dict[str, str] = field(repr=False)
    #: what to fix when the place refuses or is missing, for messages
    what: str
    store: Any = field(repr=False)

    def name(self, key: str) -> str:
        return f"{self.root}/{key}"

    def key(self, name: str) -> str:
        return name[len(self.root) + 1 :] if name.startswith(self.root + "/") else name

    def scan_url(self, name: str) -> str:
        return f"{self.scan_root}/{self.key(name)}"


@dataclass(frozen=True)
class FileRef:
    """One file of an entity: a local path, or an object in a `Remote`."""

    #: the local path as given, or the object's URL: what messages and the ledger show
    name: str
    remote: Remote | None = None
    #: what the listing said (a local file is asked when needed)
    known_size: int | None = None
    mtime_ns: int = 0
    etag: str | None = None

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        """What Polars' scan takes: the path, or the object's URL."""
        return self.name if self.remote is None else self.remote.scan_url(self.name)

    def size(self) -> int:
        if self.known_size is not None:
            return self.known_size
        return Path(self.name).stat().st_size

    def source(self) -> Any:
        """What pyarrow reads: the path, or a seekable stream of the object (ranged reads)."""
        return self.name if self.remote is None else _Reader(self.remote, self.name)

    def metadata(self) -> pq.FileMetaData:
        """The Parquet footer; of an object, from one ranged read of its tail (its size known)."""
        if self.remote is None:
            return pq.read_metadata(self.name)
        import obstore

        size, key = self.size(), self.remote.key(self.name)
        tail = bytes(
            obstore.get_range(self.remote.store, key, start=size - min(size, _TAIL), end=size)
        )
        if len(tail) < 12 or tail[-4:] != b"PAR1":
            msg = "Parquet magic bytes not found in footer"
            raise pa.ArrowInvalid(msg)
        length = int.from_bytes(tail[-8:-4], "little")
        if length + 8 > len(tail):  # a footer larger than the tail read
            start = max(size - 8 - length, 0)
            tail = bytes(obstore.get_range(self.remote.store, key, start=start, end=size))
        # the magic bytes in front make the footer read like the whole file, for metadata
        return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(length + 8) :]))


def storage_options(files: list[FileRef]) -> dict[str, str] | None:
    """Polars' `storage_options` for a scan of these files (None: local)."""
    return files[0].remote.options if files and files[0].remote is not None else None


@contextlib.contextmanager
def local_paths(files: list[FileRef], tmp: Path, entity: str) -> Iterator[list[Path]]:
    """The files as local paths: themselves, or copies streamed into `tmp` (bounded memory)."""
    out = []
    for i, f in enumerate(files):
        if f.remote is None:
            out.append(Path(f.name))
            continue
        target = tmp / f"{i:05d}-{f.name.rsplit('/', 1)[-1]}"
        import obstore

        try:
            with target.open("wb") as dst:
                for chunk in obstore.get(f.remote.store, f.remote.key(f.name)).stream(_CHUNK):
                    dst.write(chunk)
        except Exception as exc:
            raise remote_error(exc, f"cannot read {f.name!r}", f.remote, entity) from None
        out.append(target)
    yield out


def list_remote(
    remote: Remote, base: str | None, pattern: str | None, suffixes: tuple[str, ...], entity: str
) -> list[FileRef]:
    """The entity's objects: one, every matching one under a folder, or a glob's.

    The same rules as local paths: names starting with `.` or `_` are skipped under a folder
    or a glob, a folder takes the Home's suffixes, and nothing found is an error.
    """
    import obstore

    key = "/".join(p.strip("/") for p in (base, pattern) if p and p.strip("/"))
    where = remote.name(key) if key else remote.root
    if _has_magic(key):
        literal = "/".join(_literal_parts(key))
        matcher = _glob_regex(key)
        found = [m for m in _listing(remote, literal, entity) if matcher.fullmatch(m["path"])]
        kept = [m for m in found if not _hidden(m["path"][len(literal) :])]
        if not kept:
            skipped = " (names starting with '.' or '_' are skipped)" if found else ""
            msg = f"no object matches {where!r}{skipped}; check the entity's `path`"
            raise HomeError(msg, entity=entity)
        return [_ref(remote, m) for m in sorted(kept, key=lambda m: m["path"])]
    inside = [
        m
        for m in _listing(remote, key, entity)
        if m["path"].lower().endswith(suffixes) and not _hidden(m["path"][len(key) :])
    ]
    if inside:
        return [_ref(remote, m) for m in sorted(inside, key=lambda m: m["path"])]
    try:
        if key:
            return [_ref(remote, obstore.head(remote.store, key))]
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise remote_error(exc, f"cannot read {where!r}", remote, entity) from None
    msg = (
        f"nothing at {where!r}: no such object, and no {'/'.join(suffixes)} objects under it "
        "(names starting with '.' or '_' are skipped); check the entity's `path`"
    )
    raise HomeError(msg, entity=entity)


def head_remote(remote: Remote, name: str, entity: str) -> FileRef:
    """One object named by its URL (`incremental: files`), with what the store says of it."""
    import obstore

    try:
        return _ref(remote, obstore.head(remote.store, remote.key(name)))
    except Exception as exc:
        raise remote_error(exc, f"cannot read {name!r}", remote, entity) from None


def _listing(remote: Remote, prefix: str, entity: str) -> list[Any]:
    import obstore

    folder = prefix.rstrip("/") + "/" if prefix else ""
    try:
        return [m for page in obstore.list(remote.store, prefix=folder or None) for m in page]
    except Exception as exc:
        where = remote.name(prefix) if prefix else remote.root
        raise remote_error(exc, f"cannot list {where!r}", remote, entity) from None


def _ref(remote: Remote, meta: Any) -> FileRef:
    modified = meta.get("last_modified")
    ns = int(modified.timestamp() * 1_000_000) * 1_000 if modified is not None else 0
    return FileRef(remote.name(meta["path"]), remote, int(meta["size"]), ns, meta.get("e_tag"))


def remote_error(exc: BaseException, action: str, remote: Remote, entity: str) -> HomeError:
    """The object store's error as a HomeError that names the fix (never a secret).

    Raised `from None`: the store's text is redacted here, and the original would print it.
    """
    detail = " ".join(redact(first_line(exc)).split())[:300]
    text = str(exc)
    if re.search(r"NoSuchBucket|ContainerNotFound", text):
        msg = f"{action}: {remote.what} does not exist; create it, or fix the Home's setting"
        return HomeError(msg, entity=entity)
    if isinstance(exc, FileNotFoundError):
        msg = f"{action}: no such object (removed or renamed since it was listed?); run again"
        return HomeError(msg, entity=entity)
    # the service's own code says most; the HTTP status is the fallback
    code = next((c for c in _REFUSED if c in text), None)
    if code or type(exc).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
        msg = (
            f"{action}: {remote.what} refused the credentials ({code or 'refused'}); check "
            "the Home's credentials block (key, secret, connection string or service "
            "principal) and that the identity may read there"
        )
        return HomeError(msg, entity=entity)
    dropped = ("error sending request", "timed out", "connection", "dns error", "503", "500")
    if any(s in text.lower() for s in dropped):
        msg = f"{action}: the storage did not answer ({detail}); will retry"
        return TransientHomeError(msg, entity=entity)
    return HomeError(f"{action}: {detail}", entity=entity)


class _Reader(io.RawIOBase):
    """A seekable, read-only stream of one object: each read is a ranged request, buffered."""

    def __init__(self, remote: Remote, name: str) -> None:
        import obstore

        super().__init__()
        # small reads: a footer check must not fetch megabytes of data pages with it
        self._file = obstore.open_reader(remote.store, remote.key(name), buffer_size=_READ_AHEAD)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(len(buffer))
        size = len(data)
        buffer[:size] = memoryview(data)
        return size

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self._file.read() if size is None or size < 0 else self._file.read(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        super().close()


def _has_magic(text: str) -> bool:
    return bool(re.search(r"[*?\[]", text))


def _literal_parts(key: str) -> list[str]:
    parts = []
    for part in key.split("/"):
        if _has_magic(part):
            break
        parts.append(part)
    return parts


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over object keys: `*` and `?` stay within one folder, `**` crosses folders."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)

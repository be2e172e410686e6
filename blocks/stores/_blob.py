"""Blob API plumbing shared by the Azure Stores: clients, errors, block uploads and the lease lock.

Everything goes through the Blob API because it works on Azure Data Lake Gen2 accounts, on
OneLake and on the Azurite emulator alike. Two of its properties carry the crash-safety
protocol: staged blocks are invisible until their block list is committed (so no reader ever
sees a partial file under its final name), and a single Put Blob is atomic (manifests).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient

from blocks.stores.protocol import waiting_message
from hygge_core.errors import StoreError, TransientStoreError, first_line

if TYPE_CHECKING:
    from prefect_azure import AzureBlobStorageCredentials

ONELAKE_URL = "https://onelake.blob.fabric.microsoft.com"
#: the storage audience: what OneLake and Blob storage accept Entra ID tokens for
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: HTTP statuses worth another try: throttling and a busy or failing service
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
#: the SDK retries itself first; keep it short so an unreachable account fails in seconds
_CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 3, "connection_timeout": 20, "read_timeout": 120}


def service_client(
    credentials: AzureBlobStorageCredentials | None, default_url: str | None = None
) -> BlobServiceClient:
    """A synchronous Blob client from prefect-azure's credentials block.

    The block offers a connection string, an account URL with a service principal, or an
    account URL alone (DefaultAzureCredential: managed identity, workload identity, Azure
    CLI...). Without a block, `default_url` is used with DefaultAzureCredential, which is how
    OneLake is reached (it accepts Entra ID tokens only; the SDK asks for the storage audience).
    """
    if credentials is not None and credentials.connection_string is not None:
        return BlobServiceClient.from_connection_string(
            credentials.connection_string.get_secret_value(), **_CLIENT_OPTIONS
        )
    url = credentials.account_url if credentials is not None else default_url
    if not url:
        msg = "the Store needs credentials: a connection string or an account URL"
        raise StoreError(msg)
    if credentials is not None and credentials.client_id and credentials.client_secret:
        from azure.identity import ClientSecretCredential

        token: Any = ClientSecretCredential(
            tenant_id=credentials.tenant_id or "",
            client_id=credentials.client_id,
            client_secret=credentials.client_secret.get_secret_value(),
        )
    else:
        from azure.identity import DefaultAzureCredential

        token = DefaultAzureCredential()
    try:
        # one token up front: without an identity, fail once here instead of on every retry
        token.get_token(STORAGE_SCOPE)
    except ClientAuthenticationError as exc:
        raise store_error(exc, f"cannot get a token for {url}") from exc
    return BlobServiceClient(url, credential=token, **_CLIENT_OPTIONS)


def store_error(exc: BaseException, action: str, *, entity: str | None = None) -> StoreError:
    """Turn an Azure SDK error into a StoreError that says what to fix; transient ones retry."""
    code = getattr(exc, "error_code", None)
    status = getattr(exc, "status_code", None)
    detail = first_line(exc)
    if type(exc).__name__ == "CredentialUnavailableError" or "failed to retrieve a token" in detail:
        msg = (
            f"{action}: no Microsoft Entra ID identity is available here (DefaultAzureCredential "
            "found no managed identity, workload identity, AZURE_* variables or Azure CLI "
            "login); run where one exists, or give the Store a credentials block"
        )
        return StoreError(msg, entity=entity)
    if isinstance(exc, ClientAuthenticationError) or code in (
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "InsufficientAccountPermissions",
    ):
        msg = (
            f"{action}: the storage account refused the credentials ({code or detail}); check "
            "the Azure credentials block (key, connection string or service principal) and that "
            "the identity has the Storage Blob Data Contributor role"
        )
        return StoreError(msg, entity=entity)
    if code == "ContainerNotFound":
        msg = f"{action}: the container does not exist; create it or fix `container`/`workspace`"
        return StoreError(msg, entity=entity)
    dropped = isinstance(exc, ServiceRequestError | ServiceResponseError | IncompleteReadError)
    if dropped or status in _TRANSIENT_STATUS:
        msg = f"{action}: the storage service did not answer ({detail}); will retry"
        return TransientStoreError(msg, entity=entity)
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"{action}: {detail}", entity=entity)


def table_url(container_url: str, path: str) -> str:
    """Where a folder of a container is, as a URI without credentials.

    On Azure's own hosts (`<account>.blob.core.windows.net`, `onelake.blob.fabric.microsoft.com`)
    it is the `abfss://<container>@<host with .dfs.>/<path>` URI that Spark, Fabric and
    Databricks use for the same folder; elsewhere (the emulator) the Blob URL itself.
    """
    url = unquote(container_url.split("?", 1)[0])
    parts = urlsplit(url)
    host = parts.hostname or ""
    container = parts.path.strip("/")
    if parts.scheme == "https" and ".blob." in host and container and "/" not in container:
        return f"abfss://{container}@{host.replace('.blob.', '.dfs.', 1)}/{path}"
    return f"{url}/{path}"


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class BlobArea:
    """A container and a folder (prefix) in it: what one Store writes."""

    def __init__(self, container: ContainerClient, root: str) -> None:
        self.container = container
        self.root = root.strip("/")

    def key(self, *parts: str) -> str:
        return join(self.root, *parts)

    def url(self) -> str:
        """Where the area is, for messages: never with a SAS token's query string."""
        return f"{self.container.url.split('?', 1)[0]}/{self.root}"

    def blobs(self, *parts: str) -> list[Any]:
        prefix = self.key(*parts) + "/"
        return list(self.container.list_blobs(name_starts_with=prefix))

    def names(self, *parts: str) -> list[str]:
        """Blob names under the folder, relative to it, sorted."""
        prefix = self.key(*parts) + "/"
        return sorted(b.name[len(prefix) :] for b in self.blobs(*parts))

    def exists(self, name: str) -> bool:
        return bool(self.container.get_blob_client(name).exists())

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return bytes(self.container.get_blob_client(name).download_blob().readall())
        except ResourceNotFoundError:
            return None

    def get_json(self, name: str) -> Any:
        data = self.get_bytes(name)
        return None if data is None else json.loads(data)

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        """One Put Blob: readers see the old content or the new, never a torn one."""
        self.container.get_blob_client(name).upload_blob(data, overwrite=overwrite)

    def put_file(self, name: str, path: Path, parallel: int = 2) -> None:
        """Upload a local file in blocks, never whole in memory; the blob appears (or changes)
        in one step, when the SDK commits the block list (one Put Blob when it is small)."""
        with path.open("rb") as fh:
            self.container.get_blob_client(name).upload_blob(
                fh, length=path.stat().st_size, overwrite=True, max_concurrency=parallel
            )

    def get_file(self, name: str, dest: Path, parallel: int = 2) -> bool:
        """Download a blob to a local file in chunks; False when there is none."""
        tmp = dest.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{dest.name}")
        try:
            download = self.container.get_blob_client(name).download_blob(max_concurrency=parallel)
            with tmp.open("wb") as fh:
                download.readinto(fh)
            os.replace(tmp, dest)
        except ResourceNotFoundError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def delete(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.container.get_blob_client(name).delete_blob()

    def delete_folder(self, *parts: str) -> int:
        """Delete every blob under the folder (deepest first, as hierarchical namespaces need)."""
        blobs = sorted((b.name for b in self.blobs(*parts)), key=lambda n: (-n.count("/"), n))
        for name in blobs:
            self.delete(name)
        # on hierarchical namespaces (ADLS Gen2, OneLake) the emptied directory is an entry too
        with contextlib.suppress(HttpResponseError):
            self.delete(self.key(*parts))
        return len(blobs)

    def commit(self, name: str, block_ids: list[str]) -> None:
        """Make a file of staged blocks visible, in one step."""
        if _container_key(self.container) in _LOST_LEASES:
            msg = (
                "this run lost its lease on the Store's lock (the storage account did not answer "
                "the renewals), so another run may be writing: nothing more is published; the "
                "next run finishes what this one prepared"
            )
            raise StoreError(msg)
        self.container.get_blob_client(name).commit_block_list(
            [BlobBlock(block_id=b) for b in block_ids]
        )

    def staged_ids(self, name: str) -> set[str]:
        """The block ids staged (uncommitted) for a blob name."""
        try:
            _, uncommitted = self.container.get_blob_client(name).get_block_list("uncommitted")
        except ResourceNotFoundError:
            return set()
        return {b.id for b in uncommitted}


def block_ids(run_id: str, name: str, count: int) -> list[str]:
    """Deterministic block ids: recovery recomputes them from the manifest's block count.

    Azure wants every block id of a blob to have the same length, including ids left over
    from another attempt on the same name, so the id has a fixed shape whatever the run id.
    """
    base = name.rsplit("/", 1)[-1]  # the file name: the same whichever folder it sits in
    tag = hashlib.sha256(f"{run_id}/{base}".encode()).hexdigest()[:16]
    return [base64.b64encode(f"{tag}-{i:07d}".encode()).decode() for i in range(count)]


class BlockSink:
    """A write-only file for pyarrow's ParquetWriter that stages its bytes as blob blocks.

    Memory is bounded by `block_size * (parallel + 1)`: a full block goes to a thread pool
    and, when `parallel` are already in flight, `write` waits for the oldest one.
    Nothing is visible until the caller commits the block list.
    """

    def __init__(
        self,
        area: BlobArea,
        name: str,
        run_id: str,
        pool: ThreadPoolExecutor,
        *,
        block_size: int,
        parallel: int,
    ) -> None:
        self.area = area
        self.name = name
        self.run_id = run_id
        self.pool = pool
        self.block_size = block_size
        self.parallel = parallel
        self.blocks = 0
        self.size = 0
        self.closed = False
        self._buffer = bytearray()
        self._inflight: deque[Future[Any]] = deque()
        self._client = area.container.get_blob_client(name)

    # the file protocol pyarrow uses
    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._buffer += view
        self.size += len(view)
        while len(self._buffer) >= self.block_size:
            chunk = bytes(self._buffer[: self.block_size])
            del self._buffer[: self.block_size]
            self._stage(chunk)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        """Stage the last block and wait for every upload (the block list is not committed)."""
        if self.closed:
            return
        self.closed = True
        if self._buffer or self.blocks == 0:
            self._stage(bytes(self._buffer))
            self._buffer = bytearray()
        while self._inflight:
            self._inflight.popleft().result()

    def abandon(self) -> None:
        self.closed = True
        self._buffer = bytearray()
        for f in self._inflight:
            f.cancel()
        self._inflight.clear()

    @property
    def ids(self) -> list[str]:
        return block_ids(self.run_id, self.name, self.blocks)

    def _stage(self, chunk: bytes) -> None:
        block_id = block_ids(self.run_id, self.name, self.blocks + 1)[-1]
        self.blocks += 1
        while len(self._inflight) >= self.parallel:
            self._inflight.popleft().result()  # raises the upload's error here
        self._inflight.append(self.pool.submit(self._client.stage_block, block_id, chunk))


def with_retries(fn: Any, attempts: int = 6, first_delay: float = 1.0) -> Any:
    """Call `fn` again while the service says the resource is busy (409/412 leases, 5xx)."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except HttpResponseError as exc:
            busy = exc.status_code in (409, 412, *_TRANSIENT_STATUS)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 30)
    return None


@contextmanager
def lease_lock(
    area: BlobArea,
    owner: str,
    wait_seconds: float = 0.0,
    lease_seconds: int = 60,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold `<root>/_hygge.lock` with a blob lease for the duration.

    A lease expires `lease_seconds` after its last renewal, so a run that dies (even by
    SIGKILL) frees the Store within that time; a background thread renews it meanwhile.
    """
    name = area.key("_hygge.lock")
    blob = area.container.get_blob_client(name)
    where = area.url()
    try:
        with contextlib.suppress(ResourceExistsError):
            blob.upload_blob(b"", overwrite=False)
    except HttpResponseError as exc:
        if getattr(exc, "error_code", None) not in ("LeaseIdMissing", "LeaseAlreadyPresent"):
            raise store_error(exc, f"cannot create the Store's lock blob {name!r}") from exc
    except AzureError as exc:
        raise store_error(exc, f"cannot create the Store's lock blob {name!r}") from exc
    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        try:
            lease = blob.acquire_lease(lease_duration=lease_seconds)
            break
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) != "LeaseAlreadyPresent":
                raise store_error(exc, f"cannot lock the Store at {where}") from exc
            if not told and on_wait is not None and wait_seconds > 0:
                on_wait(waiting_message(where, _holder(blob), wait_seconds))
                told = True
            if time.monotonic() >= deadline:
                msg = (
                    f"another hygge run is writing to {where} ({_holder(blob)}); runs that share "
                    "a Store take turns so neither corrupts the other. Wait for it to finish, or "
                    "set `lock_wait_seconds` in the spec to queue (a crashed run's lease expires "
                    f"within {lease_seconds} s)"
                )
                raise StoreError(msg) from None
            time.sleep(1.0)
    info = {"run": owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    with contextlib.suppress(AzureError):
        blob.upload_blob(json.dumps(info).encode(), overwrite=True, lease=lease)
    stop = threading.Event()

    def renew() -> None:
        renewed = time.monotonic()
        while not stop.wait(lease_seconds / 3):
            try:
                lease.renew()
                renewed = time.monotonic()
            except AzureError as exc:
                _log.warning("could not renew the Store's lease: %s", first_line(exc))
                if time.monotonic() - renewed >= lease_seconds:
                    # another run may hold it now: stop publishing into this container
                    _LOST_LEASES.add(_container_key(area.container))

    keeper = threading.Thread(target=renew, name="hygge-lease", daemon=True)
    _LOST_LEASES.discard(_container_key(area.container))
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=5)
        with contextlib.suppress(AzureError):
            lease.release()


_LOST_LEASES: set[str] = set()
_log = logging.getLogger("hygge.store")


def lease_lost(container: ContainerClient) -> bool:
    """Whether this process's lease on the container's Store lock lapsed (see `lease_lock`)."""
    return _container_key(container) in _LOST_LEASES


def _container_key(container: ContainerClient) -> str:
    return str(container.url.split("?", 1)[0])


def _holder(blob: Any) -> str:
    try:
        info = json.loads(blob.download_blob().readall() or b"{}")
    except (AzureError, ValueError):
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"run {info.get('run')}, pid {info.get('pid')} on {info.get('host')}, since {since}"

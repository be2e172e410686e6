"""Where a Delta Store's tables are: a local path, an ADLS Gen2 / Blob container, or OneLake.

A Delta table is a URI plus delta-rs's storage options, built here from prefect-azure's
credentials block, the same block `AdlsStore` takes:

- a connection string: its account key (`account_key`) or SAS (`sas_token`); an explicit
  `BlobEndpoint` (Azurite, a private endpoint) becomes `endpoint`, with `allow_http` for http;
- an account URL with a service principal: delta-rs's own client-secret options
  (`azure_client_id`, `azure_client_secret`, `azure_tenant_id`), so delta-rs refreshes the
  token itself during a long commit;
- an account URL alone, or no block (OneLake): a Microsoft Entra ID token from
  `DefaultAzureCredential` for the storage audience, passed as `bearer_token`. delta-rs
  cannot refresh such a token, so one is taken each time a table is opened (azure-identity
  hands out a cached token until shortly before it expires; a commit that outlives it fails
  with the ledger unchanged and is retried).

On Azure's own hosts the URI is the `abfss://<container>@<account>.dfs.<suffix>/<path>` that
Spark and Fabric show for the same folder; OneLake's is
`abfss://<workspace>@onelake.dfs.fabric.microsoft.com/<item>/Tables/[<schema>/]<table>`, with
`use_fabric_endpoint`. With an explicit endpoint the URI is `az://<container>/<path>`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from blocks.stores._blob import STORAGE_SCOPE
from hygge_core.errors import StoreError, TransientStoreError, redact

if TYPE_CHECKING:
    from prefect_azure import AzureBlobStorageCredentials

Place = Literal["local", "adls", "onelake"]
ONELAKE_DFS = "onelake.dfs.fabric.microsoft.com"
#: characters a Delta table without column mapping cannot take in a column name (Spark's rule,
#: which Fabric's SQL endpoint applies too); delta-rs 1.6 writes them, and readers then fail
_BAD_NAME = re.compile(r"[ ,;{}()\n\t=]")
_tokens: dict[str | None, Any] = {}


def place_of(
    path: str,
    container: str | None,
    workspace: str | None,
    item: str | None,
    lakehouse_schema: str | None,
    has_credentials: bool,
) -> Place:
    """Which of the three places the settings name, or a ValueError saying how to fix them."""
    where = (
        "give `path` (a local directory), `container` (an ADLS Gen2 or Blob container, with "
        "`credentials`) or `workspace` and `item` (a Fabric Lakehouse)"
    )
    if workspace or item:
        if container:
            msg = f"`container` and `workspace` name two places for one Store; {where}"
            raise ValueError(msg)
        if not (workspace and item):
            msg = "a OneLake Delta Store needs both `workspace` and `item` (the Lakehouse)"
            raise ValueError(msg)
        if re.search(r"[^A-Za-z0-9._~-]", workspace):
            # the workspace is the URI's user part, which delta-rs 1.6 percent-encodes twice
            msg = (
                f"workspace {workspace!r} holds characters delta-rs cannot address (it encodes "
                "them twice); give the workspace's id (the GUID in its Fabric URL) instead"
            )
            raise ValueError(msg)
        if path:
            msg = (
                "a OneLake Delta Store writes each table to `Tables/[<lakehouse_schema>/]<entity>`"
                " of the Lakehouse: leave `path` empty (set `lakehouse_schema` for a schema)"
            )
            raise ValueError(msg)
        return "onelake"
    if lakehouse_schema:
        msg = "`lakehouse_schema` is for a OneLake Lakehouse: give `workspace` and `item` too"
        raise ValueError(msg)
    if container:
        if not has_credentials:
            msg = (
                "an ADLS/Blob Delta Store needs `credentials` (prefect-azure's block: a "
                "connection string, or an account URL with a service principal or Entra ID)"
            )
            raise ValueError(msg)
        return "adls"
    if not path:
        msg = f"the Delta Store has nowhere to write: {where}"
        raise ValueError(msg)
    if has_credentials:
        msg = "`credentials` are for a `container` or a `workspace`; a local `path` takes none"
        raise ValueError(msg)
    return "local"


def refused_names(names: list[str]) -> list[str]:
    """Column names a Delta table without column mapping (and Fabric) cannot take."""
    return [n for n in names if _BAD_NAME.search(n)]


def remote_uri(
    credentials: AzureBlobStorageCredentials | None, container: str, key: str, *, fabric: bool
) -> str:
    """The table's URI: `abfss://` on Azure's hosts and OneLake, `az://` at an explicit endpoint."""
    account, suffix, endpoint = _account(credentials, fabric)
    if endpoint:
        return f"az://{container}/{key}"
    host = ONELAKE_DFS if fabric else f"{account}.dfs.{suffix}"
    return f"abfss://{container}@{host}/{key}"


def remote_options(
    credentials: AzureBlobStorageCredentials | None, *, fabric: bool
) -> dict[str, str]:
    """delta-rs's storage options for the credentials (they hold secrets: never log them)."""
    account, suffix, endpoint = _account(credentials, fabric)
    options: dict[str, str] = {"account_name": account}
    if fabric:
        options["use_fabric_endpoint"] = "true"
    if endpoint == "emulator":
        options["use_emulator"] = "true"
    elif endpoint:
        options["endpoint"] = endpoint
        if endpoint.lower().startswith("http:"):
            options["allow_http"] = "true"
    elif not fabric and suffix != "core.windows.net":
        options["endpoint"] = f"https://{account}.blob.{suffix}"  # a sovereign cloud
    conn = credentials.connection_string if credentials is not None else None
    url = credentials.account_url if credentials is not None else None
    if conn is not None:
        parts = connection_parts(conn.get_secret_value())
        if "accountkey" in parts:
            options["account_key"] = parts["accountkey"]
        elif "sharedaccesssignature" in parts:
            options["sas_token"] = parts["sharedaccesssignature"]
    elif url and "?" in url:
        options["sas_token"] = url.split("?", 1)[1]
    elif credentials is not None and credentials.client_id and credentials.client_secret:
        # delta-rs's own client-secret flow: it refreshes the token during a long commit
        options["azure_client_id"] = credentials.client_id
        options["azure_client_secret"] = credentials.client_secret.get_secret_value()
        options["azure_tenant_id"] = credentials.tenant_id or ""
    else:
        options["bearer_token"] = entra_token(credentials)
    return options


def _account(
    credentials: AzureBlobStorageCredentials | None, fabric: bool
) -> tuple[str, str, str | None]:
    """The account name, its DNS suffix, and an explicit endpoint (or `emulator`), if any."""
    conn = credentials.connection_string if credentials is not None else None
    if conn is not None:
        parts = connection_parts(conn.get_secret_value())
        suffix = parts.get("endpointsuffix", "core.windows.net")
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            return "devstoreaccount1", suffix, "emulator"
        endpoint = (parts.get("blobendpoint") or "").rstrip("/")
        host = urlsplit(endpoint).hostname or ""
        account = parts.get("accountname") or host.split(".", 1)[0]
        if host.endswith(f".blob.{suffix}"):
            return account, suffix, None  # Azure's own host: the abfss URI says it all
        return account, suffix, endpoint or None
    if fabric:
        return "onelake", "fabric.microsoft.com", None
    url = credentials.account_url if credentials is not None else None
    split = urlsplit((url or "").split("?", 1)[0])
    account, _, rest = (split.hostname or "").partition(".")
    if not rest.startswith(("blob.", "dfs.")):
        # a private endpoint or an emulator: the account is the URL's first path segment
        named = split.path.strip("/").split("/", 1)[0]
        return named or account, "core.windows.net", split.geturl().rstrip("/") or None
    return account, rest.split(".", 1)[1], None


def connection_parts(connection_string: str) -> dict[str, str]:
    """`Key=value;...` with lower-case keys (values may hold `=`, as keys and SAS do)."""
    parts = {}
    for piece in connection_string.split(";"):
        name, eq, value = piece.partition("=")
        if eq:
            parts[name.strip().lower()] = value.strip()
    return parts


def entra_token(credentials: AzureBlobStorageCredentials | None) -> str:
    """A storage-audience token from DefaultAzureCredential (one credential per process)."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    from blocks.stores._blob import store_error

    key = credentials.account_url if credentials is not None else None
    credential = _tokens.get(key)
    if credential is None:
        credential = _tokens[key] = DefaultAzureCredential()
    try:
        return str(credential.get_token(STORAGE_SCOPE).token)
    except ClientAuthenticationError as exc:
        raise store_error(exc, "cannot get a Microsoft Entra ID token for the Delta table") from exc


def storage_error(exc: OSError, action: str, where: str, entity: str | None) -> StoreError:
    """delta-rs's error from remote storage (an OSError with a chain of causes) as a
    StoreError: refused credentials are terminal, a dropped or busy service retries."""
    detail = detail_of(exc)
    lowered = detail.lower()
    refused = ("authorizationfailure", "authenticationfailed", "permissionmismatch")
    if re.search(r"\b(401|403)\b", detail) or any(s in lowered for s in refused):
        msg = (
            f"{action}: the storage refused the credentials for {where} ({detail}); check the "
            "Azure credentials block and that the identity may write there (Storage Blob Data "
            "Contributor, or a Contributor of the Fabric workspace)"
        )
        return StoreError(msg, entity=entity)
    dropped = ("error sending request", "timed out", "timeout", "connection", "dns error")
    if any(s in lowered for s in dropped) or re.search(r"\b(429|50[0-4])\b", detail):
        msg = f"{action}: the storage at {where} did not answer ({detail}); will retry"
        return TransientStoreError(msg, entity=entity)
    return StoreError(f"{action}: {where}: {detail}", entity=entity)


def detail_of(exc: BaseException, limit: int = 800) -> str:
    """delta-rs's multi-line error as one redacted line (its first line alone says nothing)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("↳", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = redact(": ".join(lines)) or type(exc).__name__
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."

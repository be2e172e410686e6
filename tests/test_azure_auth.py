"""The Entra ID (token) path of the Azure Stores, end to end up to the token issuer.

OneLake and Open Mirroring accept only Microsoft Entra ID tokens, which a Store without a
connection string gets from DefaultAzureCredential. Here that path runs for real: the
Store builds DefaultAzureCredential, azure-identity's managed-identity client asks an
App Service style identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER) for a token with
the storage audience, and the Blob SDK sends it as a bearer token over HTTPS to an Azurite
started with `--oauth basic`, which checks its audience, issuer and lifetime.

Faked, because Entra ID cannot run here: the identity endpoint (a small local HTTP server
that issues an unsigned JWT; Azurite's basic OAuth mode does not verify signatures).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient

from tests.azurite import ACCOUNT, KEY, Azurite, start_azurite
from tests.conftest import make_events_db, run_flow
from tests.flow_helpers import events_rows

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class _Issuer(BaseHTTPRequestHandler):
    """An App Service managed-identity endpoint: GET ?resource=...&api-version=2019-08-01."""

    requests: list[dict[str, str]] = []

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlparse

        query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        query["header"] = self.headers.get("X-IDENTITY-HEADER", "")
        type(self).requests.append(query)
        now = int(time.time())
        claims = {
            "aud": query.get("resource", ""),
            "iss": f"https://sts.windows.net/{TENANT}/",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
            "oid": "00000000-0000-0000-0000-000000000001",
            "tid": TENANT,
        }
        token = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.c2lnbmF0dXJl"
        body = json.dumps(
            {
                "access_token": token,
                "expires_on": str(now + 3600),
                "resource": query.get("resource", ""),
                "token_type": "Bearer",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Refuser(BaseHTTPRequestHandler):
    """An identity endpoint of a host with no identity assigned."""

    def do_GET(self) -> None:
        body = b'{"error": "invalid_request", "error_description": "no identity assigned"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Azurite, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = start_azurite("--oauth", "basic", "--cert", str(cert), "--key", str(key))
    try:
        yield server, cert
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


def test_default_credential_token_reaches_the_store(
    oauth_azurite: tuple[Azurite, Path],
    tmp_path: Path,
    spec_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, cert = oauth_azurite
    url = f"https://127.0.0.1:{server.port}/{ACCOUNT}"
    issuer = ThreadingHTTPServer(("127.0.0.1", 0), _Issuer)
    threading.Thread(target=issuer.serve_forever, daemon=True).start()
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{issuer.server_port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "local-test-header")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trust the emulator's own TLS cert
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)

    admin = BlobServiceClient(url, credential={"account_name": ACCOUNT, "account_key": KEY})
    admin.create_container("workspace")
    db = make_events_db(tmp_path / "src.db", events_rows(0, 120))
    spec = {
        "name": spec_name,
        "home": {"type": "sqlite", "path": str(db)},
        # no credentials block: OneLake's default, DefaultAzureCredential on `endpoint`
        "store": {
            "type": "onelake",
            "workspace": "workspace",
            "item": "Shop.Lakehouse",
            "endpoint": url,
        },
        "entities": [{"name": "events", "table": "events"}],
    }
    try:
        state = run_flow(spec)
    finally:
        issuer.shutdown()
    assert state.is_completed(), state.message
    # the token was asked for the storage audience, with the identity header
    assert _Issuer.requests, "no token was requested"
    assert {r["resource"] for r in _Issuer.requests} == {"https://storage.azure.com"}
    assert {r["header"] for r in _Issuer.requests} == {"local-test-header"}
    c = admin.get_container_client("workspace")
    [name] = [
        b.name
        for b in c.list_blobs(name_starts_with="Shop.Lakehouse/Files/events/")
        if b.name.endswith(".parquet")
    ]
    table = pq.read_table(io.BytesIO(c.download_blob(name).readall()))
    assert table.num_rows == 120


def test_a_rejected_token_is_an_authentication_error(
    oauth_azurite: tuple[Azurite, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No identity available at all: the error says to fix the credentials, and names no key."""
    from blocks import OneLakeStore
    from hygge_core.errors import StoreError

    server, cert = oauth_azurite
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    # an identity endpoint that has no identity to give: DefaultAzureCredential fails
    refuser = ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    threading.Thread(target=refuser.serve_forever, daemon=True).start()
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{refuser.server_port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "x")
    store = OneLakeStore(
        workspace="workspace", item="X.Lakehouse", endpoint=f"https://127.0.0.1:{server.port}/a"
    )
    started = time.monotonic()
    with (
        pytest.raises(StoreError, match=r"no Microsoft Entra ID identity .* credentials block"),
        store.exclusive("run-1"),
    ):
        pass
    refuser.shutdown()
    assert time.monotonic() - started < 45  # one token attempt, not one per SDK retry

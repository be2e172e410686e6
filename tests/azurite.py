"""A real Azurite Blob emulator on 127.0.0.1, for the Azure Store tests.

Azurite 3.35.0 (the last release for Node 20) comes from npm; `.ci/run` installs it into
`.ci/node/`, and the fixture installs it there itself when it is missing (needs `npm`).
It runs in memory on a free port, once per test session. No part of the Azure SDK is
mocked: every Store call is a real HTTP request to the emulator.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

AZURITE_VERSION = "3.35.0"
NODE_DIR = Path(__file__).resolve().parents[1] / ".ci" / "node"
ACCOUNT = "devstoreaccount1"
# the emulator's well-known, public development key (not a secret)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob_url};"
        )

    def container(self, name: str) -> ContainerClient:
        """A client for one container, with the emulator's key (for checks and set-up)."""
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(self.connection_string)
        return service.get_container_client(name)

    def new_container(self) -> str:
        from azure.storage.blob import BlobServiceClient

        name = f"t{uuid.uuid4().hex[:12]}"
        BlobServiceClient.from_connection_string(self.connection_string).create_container(name)
        return name


def azurite_binary() -> Path:
    found = os.environ.get("HYGGE_AZURITE_BIN") or shutil.which("azurite-blob")
    if found:
        return Path(found)
    local = NODE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not local.exists():
        npm = shutil.which("npm")
        if npm is None:
            msg = "Azurite is needed for the Azure Store tests: install Node.js 20 and npm"
            raise RuntimeError(msg)
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
             f"azurite@{AZURITE_VERSION}"],
            check=True,
            capture_output=True,
            timeout=600,
        )  # fmt: skip
    return local


def start_azurite(*extra: str) -> Azurite:
    cmd = [
        str(azurite_binary()),
        "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
        "--loose", "--skipApiVersionCheck", "--disableTelemetry", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = re.search(r"listens on https?://127\.0\.0\.1:(\d+)", line)
        if m:
            # keep draining its output so the emulator never blocks on a full pipe
            subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
            return Azurite(int(m.group(1)), proc)
    proc.kill()
    msg = f"Azurite did not start: {''.join(seen)[-2000:]}"
    raise RuntimeError(msg)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = start_azurite()
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)

"""A real Azurite Blob emulator on 127.0.0.1, for the Azure Store tests.

Azurite 3.35.0 (the last release for Node 20) comes from npm; `.ci/run` installs it into
`.ci/node/`, and the fixture installs it there itself when it is missing (needs `npm`).
It runs in memory on a free port, once per test session. No part of the Azure SDK is
mocked: every Store call is a real HTTP request to the emulator.

The Delta Store's tests use Azurite 3.37.0 (`azurite_delta`, in `.ci/node-3.37.0/`): delta-rs
1.6 finds a table's newest commit with List Blobs' `startFrom`, which Azure honours and
Azurite ignored before 3.37, so on 3.35 every commit after a table's second fails ("Invalid
table version: 1"). 3.37.0 declares Node 22 but runs on Node 20 (measured here).
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
DELTA_AZURITE_VERSION = "3.37.0"
DELTA_NODE_DIR = NODE_DIR.with_name(f"node-{DELTA_AZURITE_VERSION}")
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


def azurite_binary(version: str = AZURITE_VERSION) -> Path:
    if version == AZURITE_VERSION:
        found = os.environ.get("HYGGE_AZURITE_BIN") or shutil.which("azurite-blob")
        node_dir = NODE_DIR
    else:
        found = os.environ.get("HYGGE_DELTA_AZURITE_BIN")
        node_dir = DELTA_NODE_DIR
    if found:
        return Path(found)
    local = node_dir / "node_modules" / ".bin" / "azurite-blob"
    if not local.exists():
        npm = shutil.which("npm")
        if npm is None:
            msg = "Azurite is needed for the Azure Store tests: install Node.js 20 and npm"
            raise RuntimeError(msg)
        node_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(node_dir), "--no-audit", "--no-fund",
             f"azurite@{version}"],
            check=True,
            capture_output=True,
            timeout=600,
        )  # fmt: skip
    return local


def start_azurite(*extra: str, version: str = AZURITE_VERSION) -> Azurite:
    cmd = [
        str(azurite_binary(version)),
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


@pytest.fixture(scope="session")
def azurite_delta() -> Iterator[Azurite]:
    """An Azurite that honours List Blobs' `startFrom`, as delta-rs needs (see the top)."""
    server = start_azurite(version=DELTA_AZURITE_VERSION)
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)

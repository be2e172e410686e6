"""A real S3 server on 127.0.0.1, for the file Homes' S3 tests: moto's standalone server.

`moto[server]` (a dev extra) runs as its own process on a free port, once per test session,
with request signing enforced: the first three calls (unsigned) create an IAM user with S3
rights and its access key, and from then on every request must be signed with that key, so a
wrong secret is refused as by AWS. No part of a client is mocked: every call is real HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen[bytes]
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 client signed with the server's key (for set-up and checks)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def credentials(self, secret: str | None = None) -> dict[str, Any]:
        """The `aws_credentials` of a spec (prefect-aws's `AwsCredentials` fields)."""
        return {
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": secret or self.secret_key,
            "region_name": REGION,
            "aws_client_parameters": {"endpoint_url": self.endpoint},
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_s3_server() -> S3Server:
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"moto's S3 server exited at once (code {proc.returncode})"
            raise RuntimeError(msg)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        msg = "moto's S3 server did not start within 60 s"
        raise RuntimeError(msg)
    import boto3

    # the three unsigned calls the server allows: a user, its S3 rights and its key
    iam = boto3.client(
        "iam",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        region_name=REGION,
    )
    iam.create_user(UserName="hygge")
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allow]}
    iam.put_user_policy(UserName="hygge", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="hygge")["AccessKey"]
    return S3Server(port, proc, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with start_s3_server() as server:
        yield server

"""What the file Homes (Parquet, CSV, JSON) share as blocks: the place their files are in.

Exactly one place: a local `path` (the default), an S3 or S3-compatible `bucket` (with
prefect-aws's `AwsCredentials`), an ADLS Gen2 / Blob `container` (with prefect-azure's
credentials block, as `AdlsStore` takes it), or OneLake (`workspace` and `item`: the
Lakehouse's `Files/`, with the credentials optional, as `OneLakeStore`). In a remote place
`path` is the folder the entities' paths are relative to.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, ClassVar

from prefect_aws import AwsCredentials
from prefect_azure import AzureBlobStorageCredentials
from pydantic import Field, model_validator

from blocks.base import HomeBlock, ReadRequest, SourceFile
from blocks.homes._files import entity_files, source_files
from blocks.homes._place import ONELAKE_URL, FileRef, Remote, head_remote, list_remote
from hygge_core.errors import ConfigError, HomeError, HyggeError, first_line, redact

#: the place settings, as the ledger's `location` names them (a local Home: only `path`)
_PLACE_FIELDS = ("bucket", "container", "workspace", "item")


class FileHome(HomeBlock):
    """A Home that reads files: locally, from S3, from an Azure container or from OneLake."""

    location_fields: ClassVar[tuple[str, ...]] = ("path",)
    #: the suffixes a folder's files are taken by
    suffixes: ClassVar[tuple[str, ...]] = ()

    path: str | None = Field(
        default=None,
        description="Base directory (or, in a bucket or container, folder) that entity paths "
        "are relative to; empty: paths stand alone.",
    )
    bucket: str | None = Field(
        default=None, description="An S3 (or S3-compatible) bucket that holds the files."
    )
    aws_credentials: AwsCredentials | None = Field(
        default=None,
        title="AWS credentials",
        description="prefect-aws credentials for `bucket`: access key and secret, or a "
        "profile; `aws_client_parameters.endpoint_url` for MinIO and other S3-compatible "
        "servers. Empty: boto3's own chain (environment, profile, instance role).",
    )
    container: str | None = Field(
        default=None, description="An ADLS Gen2 or Blob container that holds the files."
    )
    credentials: AzureBlobStorageCredentials | None = Field(
        default=None,
        description="prefect-azure credentials for `container` or `workspace`: a connection "
        "string, or an account URL with a service principal or DefaultAzureCredential.",
    )
    workspace: str | None = Field(
        default=None, description="Fabric workspace name or id: the files are in OneLake."
    )
    item: str | None = Field(
        default=None, description="With `workspace`: the Lakehouse, e.g. 'Sales.Lakehouse'."
    )

    @model_validator(mode="after")
    def _one_place(self) -> FileHome:
        places = [n for n in ("bucket", "container", "workspace") if getattr(self, n)]
        if len(places) > 1:
            msg = (
                f"{' and '.join(f'`{p}`' for p in places)} name two places for one Home; give "
                "one: `bucket` (S3), `container` (ADLS/Blob), `workspace` + `item` (OneLake), "
                "or none (local files)"
            )
            raise ValueError(msg)
        if bool(self.workspace) != bool(self.item):
            msg = "OneLake needs both `workspace` and `item` (the Lakehouse)"
            raise ValueError(msg)
        if self.aws_credentials is not None and not self.bucket:
            msg = "`aws_credentials` are for a `bucket`: give the S3 bucket the files are in"
            raise ValueError(msg)
        if self.credentials is not None and not (self.container or self.workspace):
            msg = "`credentials` are for a `container` or a `workspace`; local files take none"
            raise ValueError(msg)
        if self.container and self.credentials is None:
            msg = (
                "an ADLS/Blob container needs `credentials` (prefect-azure's block: a "
                "connection string, or an account URL with a service principal or Entra ID)"
            )
            raise ValueError(msg)
        return self

    def location(self) -> str:
        parts = [self.spec_type]
        for name in ("path", *_PLACE_FIELDS):
            value = getattr(self, name)
            if name == "path" and isinstance(value, str) and self.is_local:
                value = os.path.normpath(value)  # `./data` is `data`
            if name == "path" or value:
                parts.append(f"{name}={value}")
        return " ".join(parts)

    @property
    def is_local(self) -> bool:
        return not (self.bucket or self.container or self.workspace)

    def under(self) -> str:
        """Where the entities' paths start, for `describe` (no secrets)."""
        if self.is_local:
            return self.path or "."
        if self.bucket:
            place = f"s3://{self.bucket}"
        elif self.container:
            place = f"container {self.container!r}"
        else:
            place = f"OneLake {self.workspace}/{self.item}/Files"
        return f"{place}/{self.path}" if self.path else place

    # -- the entity's files --------------------------------------------------------------------

    def files(self, request: ReadRequest) -> list[FileRef]:
        """The files a read takes, wherever they are (`_files.entity_files` for local ones)."""
        if self.is_local:
            return entity_files(self.path, request, self.suffixes)
        return self.remote_files(request)

    def remote_files(self, request: ReadRequest) -> list[FileRef]:
        """The request's own list (`incremental: files`), else the objects its path names."""
        remote = self.remote(request.entity)
        if request.files is not None:
            return [head_remote(remote, f, request.entity) for f in request.files]
        return list_remote(remote, self.path, request.path, self.suffixes, request.entity)

    def list_files(self, request: ReadRequest) -> list[SourceFile]:
        """`HomeBlock.list_files`: each file with its size and its ETag or modification time."""
        if self.is_local:
            return source_files(self.path, request, self.suffixes)
        refs = self.remote_files(replace(request, files=None))
        return [SourceFile(r.name, r.size(), r.mtime_ns, r.etag) for r in refs]

    def remote(self, entity: str) -> Remote:
        """The object store the files are in, with the options Polars scans it with."""
        from obstore.store import AzureStore, S3Store

        try:
            if self.bucket:
                options = aws_options(self.aws_credentials)
                store: Any = S3Store(
                    self.bucket, config=_config(options), client_options=_client(options)
                )
                what = f"S3 bucket {self.bucket!r}"
                root = f"s3://{self.bucket}"
                return Remote(root, root, options, what, store)
            from blocks.stores._delta_place import remote_options

            fabric = bool(self.workspace)
            container = self.workspace or self.container or ""
            options = remote_options(self.credentials, fabric=fabric)
            if fabric and "endpoint" not in options and "use_emulator" not in options:
                options["endpoint"] = ONELAKE_URL
            prefix = f"{self.item}/Files" if fabric else ""
            # keys start under `<item>/Files` on OneLake
            store = AzureStore(
                container,
                prefix=prefix or None,
                config=_config(options),
                client_options=_client(options),
            )
            base = (
                options.get("endpoint")
                or f"https://{options['account_name']}.blob.core.windows.net"
            )
            root = "/".join(p for p in (base.rstrip("/"), container, prefix) if p)
            what = (
                f"OneLake workspace {container!r} (item {self.item!r})"
                if fabric
                else f"container {container!r} at {base.rstrip('/')}"
            )
            scan_root = "/".join(p for p in (f"az://{container}", prefix) if p)
            return Remote(root, scan_root, options, what, store)
        except HyggeError as exc:  # no identity for a token, no AWS credentials
            raise HomeError(exc.msg, entity=entity) from None
        except Exception as exc:
            detail = redact(first_line(exc))
            msg = (
                f"cannot set up the Home's object store ({detail}); check its place and its "
                "credentials block"
            )
            raise ConfigError(msg, entity=entity) from None


#: obstore takes these as client options; Polars takes them among the others
_CLIENT_KEYS = {"allow_http", "aws_allow_http"}


def _config(options: dict[str, str]) -> Any:
    return {k: v for k, v in options.items() if k not in _CLIENT_KEYS}


def _client(options: dict[str, str]) -> Any:
    return {"allow_http": True} if any(options.get(k) == "true" for k in _CLIENT_KEYS) else {}


def aws_options(credentials: AwsCredentials | None) -> dict[str, str]:
    """object_store's S3 options for prefect-aws's block (they hold secrets: never log them).

    A key pair is taken as given; otherwise boto3 resolves the profile (or its default chain:
    environment, shared files, instance role) once, now, to a key pair for this read.
    """
    creds = credentials or AwsCredentials()
    params = creds.aws_client_parameters
    key = creds.aws_access_key_id
    secret = creds.aws_secret_access_key.get_secret_value() if creds.aws_secret_access_key else None
    token = creds.aws_session_token
    region = creds.region_name
    if not (key and secret):
        import boto3

        session = boto3.Session(profile_name=creds.profile_name, region_name=region)
        found = session.get_credentials()
        if found is None:
            msg = (
                "no AWS credentials: give `aws_credentials` an access key and secret or a "
                "`profile_name`, or run where boto3 finds some (AWS_* variables, an instance role)"
            )
            raise HomeError(msg)
        frozen = found.get_frozen_credentials()
        key, secret, token = frozen.access_key, frozen.secret_key, frozen.token
        region = region or session.region_name
    options = {
        "aws_access_key_id": key,
        "aws_secret_access_key": secret,
        "aws_region": region or "us-east-1",
    }
    if token:
        options["aws_session_token"] = token
    endpoint = params.endpoint_url if params is not None else None
    if endpoint:
        options["aws_endpoint_url"] = str(endpoint)
        if str(endpoint).lower().startswith("http:"):
            options["aws_allow_http"] = "true"
        # S3-compatible servers (MinIO, moto) address buckets by path
        options["aws_virtual_hosted_style_request"] = "false"
    return options

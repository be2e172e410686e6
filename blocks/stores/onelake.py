"""OneLakeStore: Parquet tables in the `Files/` area of a Microsoft Fabric Lakehouse."""

from __future__ import annotations

from pydantic import Field

from blocks.stores._blob import ONELAKE_URL, join
from blocks.stores.blob_parquet import BlobParquetStore


class OneLakeStore(BlobParquetStore):
    """Writes entities as Parquet files under `<workspace>/<item>/Files/<path>/<entity>/`.

    OneLake speaks the Blob API at `https://onelake.blob.fabric.microsoft.com`, with the
    workspace as the container. It accepts Microsoft Entra ID tokens only: leave `credentials`
    empty to use DefaultAzureCredential (managed identity, workload identity, Azure CLI), or
    give a credentials block with an account URL and a service principal.

    Example:
        ```python
        from blocks import OneLakeStore
        store = OneLakeStore.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "OneLake Store"
    _block_type_slug = "onelake-store"
    _description = "Parquet tables in a Fabric Lakehouse's Files area (OneLake), as a hygge Store."
    spec_type = "onelake"

    workspace: str = Field(description="Fabric workspace name or id (the Blob container).")
    item: str = Field(description="Lakehouse item, e.g. 'Sales.Lakehouse' or its id.")
    path: str = Field(default="", description="Folder under Files/ that holds the tables.")
    endpoint: str = Field(
        default=ONELAKE_URL, description="OneLake Blob endpoint (used without a credentials URL)."
    )

    def _default_url(self) -> str | None:
        return self.endpoint

    def _container_name(self) -> str:
        return self.workspace

    def _root(self) -> str:
        return join(self.item, "Files", self.path)

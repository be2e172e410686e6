"""AdlsStore: Parquet tables in an Azure Data Lake Gen2 (or plain Blob storage) container."""

from __future__ import annotations

from pydantic import Field

from blocks.stores.blob_parquet import BlobParquetStore


class AdlsStore(BlobParquetStore):
    """Writes entities as Parquet files under `<container>/<path>/<entity>/`.

    Speaks the Blob API, which ADLS Gen2 accounts accept alongside DFS. Each file appears
    whole when its staged blocks are committed; an interrupted run is finished or undone by
    the next one (see docs/crash-safety.md).

    Example:
        ```python
        from blocks import AdlsStore
        store = AdlsStore.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "ADLS Store"
    _block_type_slug = "adls-store"
    _description = "Parquet tables in an Azure Data Lake Gen2 / Blob container, as a hygge Store."
    spec_type = "adls"

    container: str = Field(description="Container (file system) name.")
    path: str = Field(default="", description="Folder in the container that holds the tables.")

    def _container_name(self) -> str:
        return self.container

    def _root(self) -> str:
        return self.path

"""One Store per module; each stages and publishes to one kind of destination.

The Azure Stores import prefect-azure and the Azure SDK, about a second on every command, and
the Delta Store imports deltalake, so they are imported on first use (`blocks.stores.AdlsStore`),
not with the package (as is the SQLite Store, which imports ADBC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blocks._lazy import lazy_exports
from blocks.stores.parquet import ParquetStore

if TYPE_CHECKING:
    from blocks.stores.adls import AdlsStore
    from blocks.stores.delta import DeltaStore
    from blocks.stores.onelake import OneLakeStore
    from blocks.stores.open_mirroring import OpenMirroringStore
    from blocks.stores.sqlite import SqliteStore

#: class name -> module, for the Stores imported on first use
LAZY = {
    "AdlsStore": "blocks.stores.adls",
    "DeltaStore": "blocks.stores.delta",
    "OneLakeStore": "blocks.stores.onelake",
    "OpenMirroringStore": "blocks.stores.open_mirroring",
    "SqliteStore": "blocks.stores.sqlite",
}

__all__ = [
    "AdlsStore",
    "DeltaStore",
    "OneLakeStore",
    "OpenMirroringStore",
    "ParquetStore",
    "SqliteStore",
]


__getattr__, __dir__ = lazy_exports(globals(), LAZY)

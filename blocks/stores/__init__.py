"""One Store per module; each stages and publishes to one kind of destination."""

from blocks.stores.adls import AdlsStore
from blocks.stores.onelake import OneLakeStore
from blocks.stores.open_mirroring import OpenMirroringStore
from blocks.stores.parquet import ParquetStore

__all__ = ["AdlsStore", "OneLakeStore", "OpenMirroringStore", "ParquetStore"]

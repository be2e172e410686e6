"""hygge's Prefect Blocks: Homes (sources), Stores (destinations) and the watermark ledger.

`prefect block register -m blocks` registers every class listed in `__all__`.
"""

from blocks.base import HomeBlock, StoreBlock
from blocks.credentials import PostgresCredentials, SqlServerCredentials
from blocks.homes import CsvHome, MssqlHome, ParquetHome, PostgresHome, SqliteHome
from blocks.ledger import WatermarkLedger
from blocks.stores import AdlsStore, OneLakeStore, OpenMirroringStore, ParquetStore

__all__ = [
    "AdlsStore",
    "CsvHome",
    "HomeBlock",
    "MssqlHome",
    "OneLakeStore",
    "OpenMirroringStore",
    "ParquetHome",
    "ParquetStore",
    "PostgresCredentials",
    "PostgresHome",
    "SqlServerCredentials",
    "SqliteHome",
    "StoreBlock",
    "WatermarkLedger",
]

HOMES: dict[str, type[HomeBlock]] = {
    c.spec_type: c for c in (CsvHome, MssqlHome, ParquetHome, PostgresHome, SqliteHome)
}
STORES: dict[str, type[StoreBlock]] = {
    c.spec_type: c for c in (AdlsStore, OneLakeStore, OpenMirroringStore, ParquetStore)
}

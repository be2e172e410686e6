"""One Home per module; each reads one kind of source.

The file Homes (Parquet, CSV, JSON) import prefect-aws and prefect-azure for the object stores
they read from, about two seconds on every command, so they are imported on first use
(`blocks.homes.CsvHome`), as the Azure Stores are (`blocks.stores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blocks._lazy import lazy_exports
from blocks.homes.mssql import MssqlHome
from blocks.homes.mysql import MysqlHome
from blocks.homes.postgres import PostgresHome
from blocks.homes.sqlite import SqliteHome

if TYPE_CHECKING:
    from blocks.homes.csv import CsvHome
    from blocks.homes.json import JsonHome
    from blocks.homes.parquet import ParquetHome

#: class name -> module, for the Homes imported on first use
LAZY = {
    "CsvHome": "blocks.homes.csv",
    "JsonHome": "blocks.homes.json",
    "ParquetHome": "blocks.homes.parquet",
}

__all__ = [
    "CsvHome",
    "JsonHome",
    "MssqlHome",
    "MysqlHome",
    "ParquetHome",
    "PostgresHome",
    "SqliteHome",
]


__getattr__, __dir__ = lazy_exports(globals(), LAZY)

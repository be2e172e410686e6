"""One Home per module; each reads one kind of source."""

from blocks.homes.csv import CsvHome
from blocks.homes.json import JsonHome
from blocks.homes.mssql import MssqlHome
from blocks.homes.mysql import MysqlHome
from blocks.homes.parquet import ParquetHome
from blocks.homes.postgres import PostgresHome
from blocks.homes.sqlite import SqliteHome

__all__ = [
    "CsvHome",
    "JsonHome",
    "MssqlHome",
    "MysqlHome",
    "ParquetHome",
    "PostgresHome",
    "SqliteHome",
]

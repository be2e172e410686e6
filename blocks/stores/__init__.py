"""One Store per module; each stages and publishes to one kind of destination."""

from blocks.stores.parquet import ParquetStore

__all__ = ["ParquetStore"]

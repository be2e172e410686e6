"""hygge's Prefect Blocks: Homes (sources), Stores (destinations) and the watermark ledger.

`prefect block register -m blocks` registers every class listed in `__all__`. The Azure
Stores are imported on first use (see `blocks.stores`); `HOMES` and `STORES` map a spec's
`type:` to its class and import a lazy one when it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prefect.blocks.core import Block

from blocks import stores
from blocks.base import HomeBlock, StoreBlock
from blocks.credentials import PostgresCredentials, SqlServerCredentials
from blocks.homes import CsvHome, MssqlHome, ParquetHome, PostgresHome, SqliteHome
from blocks.ledger import WatermarkLedger
from blocks.stores import ParquetStore

if TYPE_CHECKING:
    from blocks.stores import AdlsStore, OneLakeStore, OpenMirroringStore

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

B = TypeVar("B", bound=Block)


class BlockKinds(Mapping[str, type[B]]):
    """A spec's `type:` -> block class; a lazy class is imported when it is looked up."""

    def __init__(self, eager: list[type[B]], lazy: dict[str, str]) -> None:
        self._eager = {c.spec_type: c for c in eager}  # type: ignore[attr-defined]
        self._lazy = lazy  # type -> class name in blocks.stores

    def __getitem__(self, kind: str) -> type[B]:
        if kind in self._eager:
            return self._eager[kind]
        cls: type[B] = getattr(stores, self._lazy[kind])
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._eager, *self._lazy}))

    def __len__(self) -> int:
        return len(self._eager) + len(self._lazy)


HOMES: BlockKinds[HomeBlock] = BlockKinds(
    [CsvHome, MssqlHome, ParquetHome, PostgresHome, SqliteHome], {}
)
STORES: BlockKinds[StoreBlock] = BlockKinds(
    [ParquetStore],
    {"adls": "AdlsStore", "onelake": "OneLakeStore", "open_mirroring": "OpenMirroringStore"},
)


def __getattr__(name: str) -> Any:
    if name in stores.LAZY:
        return getattr(stores, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *stores.LAZY})


def load_all() -> None:
    """Import every block class, so Prefect can find each by its type slug."""
    for module in stores.LAZY.values():
        importlib.import_module(module)

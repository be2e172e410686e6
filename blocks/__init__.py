"""hygge's Prefect Blocks: Homes (sources), Stores (destinations) and the watermark ledger.

`prefect block register -m blocks` registers every class listed in `__all__`. The Azure,
Delta and SQLite Stores and the file Homes are imported on first use (see `blocks.stores` and
`blocks.homes`); `HOMES` and `STORES` map a spec's `type:` to its class and import a lazy one
when it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from prefect.blocks.core import Block

import hygge_core  # noqa: F401  (before Polars loads: the allocator's settings)
from blocks import homes, stores
from blocks.base import HomeBlock, StoreBlock
from blocks.credentials import MysqlCredentials, PostgresCredentials, SqlServerCredentials
from blocks.homes import MssqlHome, MysqlHome, PostgresHome, SqliteHome
from blocks.ledger import WatermarkLedger
from blocks.stores import ParquetStore

if TYPE_CHECKING:
    from blocks.homes import CsvHome, JsonHome, ParquetHome
    from blocks.stores import AdlsStore, DeltaStore, OneLakeStore, OpenMirroringStore, SqliteStore

__all__ = [
    "AdlsStore",
    "CsvHome",
    "DeltaStore",
    "HomeBlock",
    "JsonHome",
    "MssqlHome",
    "MysqlCredentials",
    "MysqlHome",
    "OneLakeStore",
    "OpenMirroringStore",
    "ParquetHome",
    "ParquetStore",
    "PostgresCredentials",
    "PostgresHome",
    "SqlServerCredentials",
    "SqliteHome",
    "SqliteStore",
    "StoreBlock",
    "WatermarkLedger",
]

B = TypeVar("B", bound=Block)


class BlockKinds(MutableMapping[str, type[B]]):
    """A spec's `type:` -> block class; a lazy class is imported when it is looked up.

    Other kinds can be added (a plugin's Home, a test's) and removed again.
    """

    def __init__(
        self, eager: list[type[B]], lazy: dict[str, tuple[str, str]], package: Any
    ) -> None:
        self._eager = {c.spec_type: c for c in eager}  # type: ignore[attr-defined]
        self._lazy = lazy  # type -> (class name in `package`, its block type slug)
        self._package = package
        self._slugs = {c.get_block_type_slug(): k for k, c in self._eager.items()}
        self._slugs |= {slug: kind for kind, (_, slug) in lazy.items()}

    def __getitem__(self, kind: str) -> type[B]:
        if kind in self._eager:
            return self._eager[kind]
        cls: type[B] = getattr(self._package, self._lazy[kind][0])
        return cls

    def __setitem__(self, kind: str, cls: type[B]) -> None:
        self._eager[kind] = cls
        self._slugs[cls.get_block_type_slug()] = kind

    def __delitem__(self, kind: str) -> None:
        cls = self._eager.pop(kind)
        self._slugs.pop(cls.get_block_type_slug(), None)

    def slugs(self) -> list[str]:
        """The block type slugs of these classes (`sqlite-home`), importing none of them."""
        return sorted(self._slugs)

    def by_slug(self, slug: str) -> type[B] | None:
        """The class whose block type slug this is, or None; imports only that class."""
        kind = self._slugs.get(slug)
        return None if kind is None else self[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._eager, *self._lazy}))

    def __len__(self) -> int:
        return len({*self._eager, *self._lazy})


HOMES: BlockKinds[HomeBlock] = BlockKinds(
    [MssqlHome, MysqlHome, PostgresHome, SqliteHome],
    {
        "csv": ("CsvHome", "csv-home"),
        "json": ("JsonHome", "json-home"),
        "parquet": ("ParquetHome", "parquet-home"),
    },
    homes,
)
STORES: BlockKinds[StoreBlock] = BlockKinds(
    [ParquetStore],
    {
        "adls": ("AdlsStore", "adls-store"),
        "delta": ("DeltaStore", "delta-store"),
        "onelake": ("OneLakeStore", "onelake-store"),
        "open_mirroring": ("OpenMirroringStore", "open-mirroring-store"),
        "sqlite": ("SqliteStore", "sqlite-store"),
    },
    stores,
)


def __getattr__(name: str) -> Any:
    if name in stores.LAZY:
        return getattr(stores, name)
    if name in homes.LAZY:
        return getattr(homes, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *stores.LAZY, *homes.LAZY})


def load_all() -> None:
    """Import every block class, so Prefect can find each by its type slug."""
    for module in [*stores.LAZY.values(), *homes.LAZY.values()]:
        importlib.import_module(module)

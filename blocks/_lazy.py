"""Classes a package names but imports on first use (the Homes and Stores with heavy SDKs)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], lazy: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` for `lazy` (class name -> its module)."""

    def getattr_(name: str) -> Any:
        if name in lazy:
            return getattr(importlib.import_module(lazy[name]), name)
        msg = f"module {namespace['__name__']!r} has no attribute {name!r}"
        raise AttributeError(msg)

    def dir_() -> list[str]:
        # `prefect block register -m` finds blocks through dir(): list the lazy ones too
        return sorted({*namespace, *lazy})

    return getattr_, dir_

"""A SQL Home logging in with a wrong password, through a real flow run with retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest

import blocks
from blocks.base import HomeBlock, ReadRequest
from tests.conftest import run_flow


def counting_home(home: type[HomeBlock]) -> type[HomeBlock]:
    """`home` itself, counting how many times a read starts (attempts)."""
    kind = home.spec_type

    class Counting(home):  # type: ignore[valid-type,misc]
        _block_type_slug = f"test-counting-{kind}-home"
        spec_type = f"counting-{kind}"
        reads: ClassVar[int] = 0

        def read(self, request: ReadRequest) -> Iterator[pa.RecordBatch]:
            type(self).reads += 1
            yield from super().read(request)

    return Counting


def refused_login(
    home_spec: dict[str, Any],
    home: type[HomeBlock],
    table: str,
    lake: Path,
    spec_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, int]:
    """Run one entity (3 retries) from `home_spec`; the failure's text and the read attempts."""
    counting = counting_home(home)
    monkeypatch.setitem(blocks.HOMES, counting.spec_type, counting)
    spec = {
        "name": spec_name,
        "home": {**home_spec, "type": counting.spec_type},
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 3,
        "retry_delay_seconds": 0,
        "entities": [{"name": "orders", "table": table}],
    }
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"1 of 1 entities failed: orders") as info:
        state.result()
    return str(info.value) + str(info.value.summary), counting.reads  # type: ignore[attr-defined]

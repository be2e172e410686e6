"""The block types: Prefect's standard checks, registration, and saved blocks used by a spec."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

import blocks
from blocks import ParquetStore, SqliteHome, WatermarkLedger
from tests.conftest import make_events_db, read_lake, run_flow

#: every concrete block hygge registers (`prefect block register -m blocks` takes `__all__`),
#: so a new block is checked by the standards without being listed here
ALL_BLOCKS: list[type[Block]] = [
    cls for cls in (getattr(blocks, name) for name in blocks.__all__) if not inspect.isabstract(cls)
]


def test_the_standards_cover_every_registered_block() -> None:
    kinds = [blocks.HOMES[k] for k in blocks.HOMES] + [blocks.STORES[k] for k in blocks.STORES]
    assert {c.__name__ for c in kinds} <= {c.__name__ for c in ALL_BLOCKS}
    assert {"AdlsStore", "OneLakeStore", "OpenMirroringStore"} <= {c.__name__ for c in ALL_BLOCKS}
    # `__all__` less the two abstract bases, as `block register` counts them
    assert len(ALL_BLOCKS) == len(blocks.__all__) - 2


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:
        return block

    # these two fetch or link to hosted pages, which an offline machine and an
    # unpublished project cannot provide; the rest of the suite applies as is
    test_has_a_documentation_url = None  # type: ignore[assignment]
    test_has_a_valid_image = None  # type: ignore[assignment]


def test_block_register_lists_every_block_type(tmp_path: Path, prefect_server: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"Successfully registered {len(blocks.__all__) - 2} blocks" in result.stdout
    for name in (
        "CSV Home",
        "Parquet Home",
        "Parquet Store",
        "PostgreSQL Credentials",
        "PostgreSQL Home",
        "SQL Server Credentials",
        "SQL Server Home",
        "SQLite Home",
        "Watermark Ledger",
    ):
        assert name in result.stdout


def test_spec_can_name_saved_blocks(tmp_path: Path, spec_name: str) -> None:
    db = make_events_db(tmp_path / "src.sqlite", [(1, "2024-01-01 00:00:00", "1.5", "x")])
    SqliteHome(path=str(db)).save(f"{spec_name}-home")
    ParquetStore(path=str(tmp_path / "lake"), compression="snappy").save(f"{spec_name}-lake")
    spec = {
        "name": spec_name,
        "home": f"sqlite-home/{spec_name}-home",
        "store": f"parquet-store/{spec_name}-lake",
        "entities": [{"name": "events", "table": "events"}],
    }
    state = run_flow(spec)
    assert state.is_completed()
    assert read_lake(tmp_path / "lake", "events")["label"].to_list() == ["x"]
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(next((tmp_path / "lake" / "events").glob("*.parquet"))).metadata
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_spec_naming_a_missing_block_fails_clearly(tmp_path: Path, spec_name: str) -> None:
    spec = {
        "name": spec_name,
        "home": "sqlite-home/not-saved-anywhere",
        "store": {"type": "parquet", "path": str(tmp_path / "lake")},
        "entities": [{"name": "events", "table": "events"}],
    }
    state = run_flow(spec)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"no saved block 'sqlite-home/not-saved-anywhere'"):
        state.result()


def test_ledger_roundtrips_through_the_server(spec_name: str) -> None:
    ledger = WatermarkLedger.load_or_new(spec_name)
    assert ledger.value == {}
    ledger.commit(spec_name, "orders", {"watermark": {"column": "ts", "value": 5}})
    ledger.commit(spec_name, "lines", {"watermark": None})
    again = WatermarkLedger.load(spec_name)
    assert again.value == {
        "orders": {"watermark": {"column": "ts", "value": 5}},
        "lines": {"watermark": None},
    }

"""Progress lines of a moving entity, and the row estimate behind their percentage."""

from __future__ import annotations

import logging

import pytest

from hygge_tasks import progress
from hygge_tasks.progress import EntityProgress


def test_the_estimate_is_asked_for_only_when_a_progress_line_is_due(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # counting rows costs a query or a scan: an entity done within the log interval never pays
    asked: list[int] = []

    def estimate() -> int:
        asked.append(1)
        return 2_000

    logger = logging.getLogger("hygge-test-progress")
    caplog.set_level(logging.INFO, logger=logger.name)
    quick = EntityProgress("quick", logger, estimate)
    quick.update(500)
    quick.done(1_000, 0.5)
    assert asked == []
    assert [r.getMessage() for r in caplog.records] == [
        "quick: 1,000 rows in 0.50 s (2,000 rows/s)"
    ]

    caplog.clear()
    monkeypatch.setattr(progress, "_LOG_EVERY_SECONDS", 0.0)
    slow = EntityProgress("slow", logger, estimate)
    slow.update(500)
    slow.update(1_500)
    assert asked == [1] and slow.expected == 2_000  # asked once, then remembered
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "slow: 500 rows so far",
        "slow: 1,500 rows so far",
    ]

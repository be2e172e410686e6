"""Progress of one entity: periodic log lines and a Prefect progress artifact."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

_LOG_EVERY_SECONDS = 5.0


class EntityProgress:
    """Reports rows and rows/s while an entity moves; quiet for fast entities."""

    def __init__(
        self, entity: str, logger: Any, estimate: Callable[[], int | None] | None = None
    ) -> None:
        self.entity = entity
        self.logger = logger
        # asked for only when the first progress line is due: an entity that finishes within
        # `_LOG_EVERY_SECONDS` never pays for the count (a SQL round trip, Parquet footers)
        self._estimate = estimate
        self.expected: int | None = None
        self.start = time.perf_counter()
        self._last = self.start
        self._artifact: Any = None

    def update(self, rows: int) -> None:
        now = time.perf_counter()
        if now - self._last < _LOG_EVERY_SECONDS:
            return
        self._last = now
        rate = rows / (now - self.start)
        self.logger.info("%s: %s rows so far (%s rows/s)", self.entity, f"{rows:,}", f"{rate:,.0f}")
        self._report(rows)

    def done(self, rows: int, seconds: float) -> None:
        rate = rows / seconds if seconds > 0 else 0.0
        self.logger.info(
            "%s: %s rows in %.2f s (%s rows/s)", self.entity, f"{rows:,}", seconds, f"{rate:,.0f}"
        )
        if self._artifact is not None:
            self._update(100.0)

    def _report(self, rows: int) -> None:
        if self._estimate is not None:
            estimate, self._estimate = self._estimate, None
            self.expected = estimate()
        if not self.expected:
            return  # no honest percentage to show; the log lines carry the counts
        pct = min(99.0, 100.0 * rows / self.expected)
        if self._artifact is None:
            if FlowRunContext.get() is None and TaskRunContext.get() is None:
                # outside a Prefect run (the engine called directly, e.g. by bench/): creating
                # an artifact would start a temporary Prefect server mid-move
                self._artifact = False
                return
            try:
                self._artifact = create_progress_artifact(
                    progress=pct, description=f"{self.entity}: rows moved"
                )
            except Exception:  # outside a Prefect run there is nowhere to show it
                self._artifact = False
            return
        self._update(pct)

    def _update(self, pct: float) -> None:
        if not self._artifact:
            return
        try:
            update_progress_artifact(artifact_id=self._artifact, progress=pct)
        except Exception:
            self._artifact = False

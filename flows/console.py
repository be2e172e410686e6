"""What a run prints on the terminal: one line per failure and the summary, not tracebacks.

hygge reports each failed entity once (`flows.commit`: `<entity>: failed: <cause and fix>`)
and then the summary. Prefect would also print each failed task's final state and the flow's
traceback; on the console those repeat what was said, so they are left out there. The Prefect
run logs and the UI keep everything, and `--verbose` shows it all on the console too.
"""

from __future__ import annotations

import logging

from hygge_core.errors import FlowError, HyggeError, InterruptError


class RepeatsOnly(logging.Filter):
    """Drops the console records that only repeat a failure hygge has reported itself, and
    prints a retry notice as its one line, without the traceback."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("prefect.task_runs"):
            if " - Retry " in message:
                if not record.exc_info:
                    return True
                # worth seeing (the entity is retried), its traceback is not: a copy without it
                bare = {"exc_info": None, "exc_text": None}
                plain = logging.makeLogRecord(record.__dict__ | bare)
                self.handler.emit(plain)
                return False
            # the flow logs `<entity>: failed: ...` for every failed entity task
            return not message.startswith(("Finished in state Failed", "Task run failed"))
        if record.name.startswith("prefect.flow_runs"):
            if isinstance(exc, HyggeError) and "Encountered exception" in message:
                return False  # the summary and the last line say it, without a traceback
            if message.startswith("Finished in state Failed") and any(
                e.__name__ in message for e in (FlowError, InterruptError)
            ):
                return False
        return True


def quiet_failures() -> None:
    """Install the filter on Prefect's console handler (set up first, so it stays)."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, RepeatsOnly) for f in handler.filters
        ):
            handler.addFilter(RepeatsOnly(handler))

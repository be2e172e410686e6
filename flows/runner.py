"""Runs the chosen specs as hygge flow runs from the command line, and reports them once.

One spec is one flow run. A project's flows run side by side in threads, each its own flow
run with its own ledger; together they move at most the project's `concurrency` entities at
once (each flow gets its share, `Target.concurrency`, and at most that many flows run).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from flows import run as flow_module
from flows.spec import RunType
from flows.summary import SummaryRow, render
from hygge_core import stop

if TYPE_CHECKING:
    from flows.cli import Target


def run_targets(targets: list[Target], run_type: RunType | None, concurrency: int | None) -> int:
    """Run every target; print each one's summary table once; 0 if all committed, else 1.

    `concurrency` (the command line's) overrides each flow's own.
    """
    flow_module.ECHO_SUMMARY = False  # the table is printed below, not logged as well

    def one(target: Target) -> tuple[str, str, bool]:
        workers = concurrency or target.concurrency
        state = flow_module.hygge(
            target.spec, target.entities, run_type, workers, return_state=True
        )
        return target.label, *_report(state)

    if len(targets) == 1:
        results = [one(targets[0])]
    else:
        with ThreadPoolExecutor(max_workers=targets[0].flows_at_once) as pool:
            results = list(pool.map(one, targets))
    if stop.requested():
        return 1  # the command line prints the interrupted run's one line instead
    failed = 0
    for label, text, ok in results:
        print(f"{label}:\n{text}" if len(results) > 1 else text)
        failed += not ok
    return 1 if failed else 0


def _report(state: Any) -> tuple[str, bool]:
    """The summary table of a finished flow run, and whether every entity committed."""
    if state.is_completed():
        return render([SummaryRow(**r) for r in state.result()]), True
    try:
        state.result()
        message, table = state.message or "", ""
    except Exception as exc:
        message = str(exc)
        summary = getattr(exc, "summary", None)
        table = render([SummaryRow(**r) for r in summary]) + "\n" if summary else ""
        if summary:
            # each failure was reported on its own line as it happened: name them, once
            failed = [r["entity"] for r in summary if r["status"].lower() == "failed"]
            message = (
                f"{len(failed)} of {len(summary)} entities failed: {', '.join(failed)}; each "
                "one's cause and fix is above, and the Prefect run logs keep the details"
            )
    if not stop.requested():
        print(f"hygge: run {state.name}: {message}", file=sys.stderr)
    return table.rstrip("\n"), False

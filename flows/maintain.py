"""`hygge maintain`: compact and vacuum the Delta tables of a spec's entities, on request only.

Each selected entity whose Store keeps Delta tables is maintained while that Store's lock is
held (`DeltaStore.maintain`), so no hygge run commits to it meanwhile and a reader never loses
the files of the version it reads. Entities of other Stores are listed as skipped. Vacuum's
retention is 7 days unless `--retention-hours` says otherwise, and a shorter one also needs
`--allow-short-retention`; `--dry-run` lists the files a vacuum would delete and changes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from hygge_core.errors import ConfigError


def maintain_spec(
    spec: str | dict[str, Any], entities: list[str] | None, args: argparse.Namespace
) -> list[str]:
    """Maintain the spec's selected entities; one report line (or block) per entity."""
    # imported here: the command line builds this command's parser on every start
    from blocks import DeltaStore
    from flows.plan import blocks_of, resolve_blocks
    from flows.spec import load_any

    if not (args.compact or args.vacuum):
        msg = "say what to do: --compact, --vacuum, or both (--dry-run to only look)"
        raise ConfigError(msg)
    plan = load_any(spec)
    home, store = resolve_blocks(plan)
    lines = []
    for e in blocks_of(plan, home, store, entities):
        if not isinstance(e.store, DeltaStore):
            lines.append(f"{e.name}: skipped, {e.store.describe(e.name)} is not a Delta table")
            continue
        upkeep = e.store.maintain(
            e.name,
            compact=args.compact,
            vacuum=args.vacuum,
            retention_hours=args.retention_hours,
            allow_short_retention=args.allow_short_retention,
            dry_run=args.dry_run,
            wait_seconds=args.wait,
        )
        lines.append(f"{e.name}: no Delta table yet" if upkeep is None else upkeep.describe())
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compact", action="store_true", help="rewrite small files into fewer")
    p.add_argument("--vacuum", action="store_true", help="delete files older versions name")
    p.add_argument(
        "--retention-hours",
        type=int,
        metavar="H",
        help="vacuum only files removed more than H hours ago (default 168, 7 days)",
    )
    p.add_argument(
        "--allow-short-retention",
        action="store_true",
        help="allow a retention under 7 days (time travel to older versions stops working)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what a vacuum would delete")
    p.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="wait up to S s for a running run"
    )

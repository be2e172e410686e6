"""`hygge status`: what the destination's own service says of each table, running nothing.

For an Open Mirroring Store that is Fabric's monitor (`Files/Monitoring/tables.json`): each
entity's table with its status, Fabric's error and the rows it processed. Stores without a
service of their own report none.
"""

from __future__ import annotations

from flows.plan import blocks_of, resolve_blocks
from flows.spec import FlowSpec


def destination_status(spec: FlowSpec, entities: list[str] | None = None) -> tuple[str, bool]:
    """The status table of a spec's entities, and whether none of them failed."""
    home, store = resolve_blocks(spec)
    rows = []
    ok = True
    for e in blocks_of(spec, home, store, entities):
        verdict = e.store.destination_verdict(e.name)
        if verdict is None:
            rows.append((e.name, "-", f"no verdict (the {e.store.spec_type} Store reports none)"))
            continue
        ok = ok and verdict.state != "failed"
        rows.append((e.name, verdict.state, verdict.text))
    width = [max(len(r[i]) for r in [("entity", "state", ""), *rows]) for i in range(2)]
    lines = [f"{'entity'.ljust(width[0])}  {'state'.ljust(width[1])}  fabric"]
    lines += [f"{n.ljust(width[0])}  {s.ljust(width[1])}  {t}" for n, s, t in rows]
    return "\n".join(lines), ok

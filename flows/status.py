"""`hygge status`: what the destination's own service says of each table, running nothing.

For an Open Mirroring Store that is Fabric's monitor (`Files/Monitoring/tables.json`): each
entity's table with its status, Fabric's error and the rows it processed. Stores without a
service of their own report none. `--repair` sends the file Fabric rejected again under its
own name (`OpenMirroringStore.repair`), for each table Fabric reports failed, or the file
`--file` names.
"""

from __future__ import annotations

from flows.plan import blocks_of, resolve_blocks
from flows.spec import FlowSpec
from hygge_core.errors import ConfigError, StoreError


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


def repair_tables(
    spec: FlowSpec, entities: list[str] | None, name: str | None = None
) -> tuple[str, bool]:
    """Repair the rejected file of each failed table (or the file named); lines, and whether
    every repair asked for was made."""
    home, store = resolve_blocks(spec)
    selected = blocks_of(spec, home, store, entities)
    if name is not None and len(selected) != 1:
        msg = "`--file` names one file of one table: pick its entity with --entity"
        raise ConfigError(msg)
    lines, ok = [], True
    for e in selected:
        verdict = e.store.destination_verdict(e.name)
        if name is None and verdict is not None and verdict.state != "failed":
            lines.append(f"{e.name}: nothing to repair (Fabric: {verdict.text})")
            continue
        try:
            done = e.store.repair(e.name, name)
        except StoreError as exc:
            ok = False
            lines.append(f"{e.name}: not repaired: {exc.msg}")
            continue
        if done is None:
            lines.append(f"{e.name}: skipped, the {e.store.spec_type} Store has no files to repair")
        else:
            lines.append(f"{e.name}: {done}")
    return "\n".join(lines), ok

"""The `hygge` command, and `python -m flows.run` (the first release's flags) over the same code.

Which specs a command works on: `--spec FILE`; else the project whose `hygge.yml` is found
walking up from the current directory (`--flow`, `--entity flow.entity` pick parts of it);
else, only for `run` and `python -m flows.run`, the bundled example. Every spec is loaded and
its inline blocks checked before a Prefect server is needed, so a configuration mistake is
one message and exit code 2. Exit codes: 0 all committed, 1 an entity (or check) failed,
2 configuration error, nothing ran; 130 and 143 a run stopped by Ctrl-C or SIGTERM
(`flows.interrupts`).

Prefect is imported only by the commands that need it, after `flows.local_server` has found
or started a Prefect API.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hygge_core.errors import ConfigError, HyggeError

if TYPE_CHECKING:
    from flows.spec import RunType


@dataclass(frozen=True)
class Target:
    """One spec a command works on, and the entities of it that were picked."""

    label: str
    spec: str | dict[str, Any]
    entities: list[str] | None
    saved_blocks: bool  # the spec names saved blocks: resolving it needs the Prefect API
    #: entities of this flow at once when it shares a project's concurrency with other flows
    concurrency: int | None = None
    #: how many of the project's flows run at once (so their shares add up to its concurrency)
    flows_at_once: int = 1


def _targets(
    args: argparse.Namespace, example: bool, prestart: Callable[[], None] | None = None
) -> list[Target]:
    """The specs named by --spec, else the project found from here, else the example.

    `prestart` is called before the example's database is built, so that a Prefect server
    that has to start can create its own database meanwhile.
    """
    from flows.spec import load_spec

    if args.spec:
        if args.flows:
            msg = "give --spec or --flow, not both (--flow picks flows of a project)"
            raise ConfigError(msg)
        spec = load_spec(args.spec)
        return [Target(spec.name, args.spec, args.entities, _names_saved(spec))]
    from flows.project import find_project, load_project

    found = find_project(Path.cwd())
    if found is not None:
        project = load_project(found)
        picked = project.select(args.flows, args.entities)
        # the flows run side by side and share the project's concurrency
        share = max(1, project.concurrency // len(picked))
        return [
            Target(
                name,
                spec.model_dump(mode="json", by_alias=True),
                ents,
                _names_saved(spec),
                min(spec.concurrency, share),
                min(len(picked), project.concurrency),
            )
            for name, spec, ents in picked
        ]
    if args.flows:
        msg = f"--flow needs a project: no hygge.yml in {Path.cwd()} or any folder above it"
        raise ConfigError(msg)
    if not example:
        msg = (
            f"no --spec given and no hygge.yml in {Path.cwd()} or above; give --spec FILE, or "
            "run `hygge init` to start a project"
        )
        raise ConfigError(msg)
    from flows.example import EXAMPLE_SPEC, REPO, ensure_example_data

    print(
        "hygge: no --spec and no hygge.yml here or above: running the bundled example "
        f"({EXAMPLE_SPEC.relative_to(REPO)})",
        file=sys.stderr,
    )

    if prestart is not None:
        prestart()
    ensure_example_data()
    return [Target("example", str(EXAMPLE_SPEC), args.entities, False)]


def _names_saved(spec: Any) -> bool:
    return isinstance(spec.home, str) or isinstance(spec.store, str)


def _preflight(targets: list[Target], api: bool, run_type: RunType | None = None) -> None:
    """Resolve each spec's blocks and check its entities now: a mistake stops all, exit 2.

    Without the Prefect API (`api=False`) only the specs with inline blocks are checked;
    with it, every spec against its ledger, so a saved block that does not exist or a ledger
    that belongs to another source is found before anything runs. No Store is asked anything:
    each flow run plans its entities once, when it holds its Stores (`flows.plan`).
    """
    from blocks import WatermarkLedger
    from flows.plan import blocks_of, check_ledger, resolve_blocks
    from flows.spec import load_any

    for target in targets:
        if target.saved_blocks and not api:
            continue
        plan = load_any(target.spec)
        home, store = resolve_blocks(plan)
        entities = blocks_of(plan, home, store, target.entities)
        if api:
            ledger = WatermarkLedger.load_or_new(plan.ledger_name)
            check_ledger(plan, entities, ledger, run_type)


def _readable_targets(args: argparse.Namespace, example: bool) -> list[Target]:
    """The targets of a command that only reads: the Prefect API only for saved blocks."""
    targets = _targets(args, example=example)
    if any(t.saved_blocks for t in targets):
        _api()
    return targets


def _api() -> None:
    from flows.local_server import ensure_api

    ensure_api()


# -- commands ---------------------------------------------------------------------------------


def _prestart() -> None:
    """Launch the local server (if one will be needed) without waiting for it."""
    from flows import local_server

    if local_server.enabled() and local_server.configured_api_url() is None:
        local_server.start(wait=False)


def cmd_run(args: argparse.Namespace) -> int:
    from flows import interrupts

    # Ctrl-C and SIGTERM stop the run within seconds, saying what was kept
    interrupts.install()
    targets = _targets(args, example=True, prestart=_prestart)
    _preflight(targets, api=False, run_type=args.run_type)
    if args.dry_run:
        from flows.preview import dry_run

        _api()  # each dry run plans against its ledger, as the preflight would
        texts = [dry_run(t.spec, t.entities, args.run_type, args.concurrency) for t in targets]
        print("\n\n".join(texts))
        return 0
    _api()
    _preflight(targets, api=True, run_type=args.run_type)
    from flows.runner import run_targets

    if not args.verbose:
        from flows.console import quiet_failures

        quiet_failures()

    return run_targets(targets, args.run_type, args.concurrency)


def cmd_history(args: argparse.Namespace) -> int:
    from flows.preview import history

    targets = _readable_targets(args, example=True)
    print("\n\n".join(history(t.spec, t.entities, args.limit) for t in targets))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    targets = _targets(args, example=False)
    _api()
    from flows.check import all_passed, check_spec, render_check
    from flows.spec import load_any

    passed = True
    for target in targets:
        lines = check_spec(load_any(target.spec), target.entities)
        passed = all_passed(lines) and passed
        text = render_check(lines)
        print(f"{target.label}:\n{text}" if len(targets) > 1 else text)
    return 0 if passed else 1


def cmd_status(args: argparse.Namespace) -> int:
    targets = _readable_targets(args, example=False)
    from flows.spec import load_any
    from flows.status import destination_status, repair_tables

    if args.file and not args.repair:
        msg = "`--file` says which file `--repair` sends again: add --repair"
        raise ConfigError(msg)
    passed = True
    for target in targets:
        if args.repair:
            text, ok = repair_tables(load_any(target.spec), target.entities, args.file)
        else:
            text, ok = destination_status(load_any(target.spec), target.entities)
        passed = passed and ok
        print(f"{target.label}:\n{text}" if len(targets) > 1 else text)
    return 0 if passed else 1


def cmd_maintain(args: argparse.Namespace) -> int:
    from flows.maintain import maintain_spec

    targets = _readable_targets(args, example=False)
    print("\n".join(line for t in targets for line in maintain_spec(t.spec, t.entities, args)))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from flows.scaffold import scaffold

    target = Path(args.dir)
    written = scaffold(target)
    for path in written:
        print(f"  wrote {path}")
    where = "" if target.resolve() == Path.cwd() else f"cd {args.dir} && "
    print(f"hygge: project ready; try `{where}hygge check` and `{where}hygge run`")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from flows import local_server

    if args.action == "start":
        print(local_server.start().url)
        return 0
    if args.action == "stop":
        stopped = local_server.stop()
        print(f"stopped the local Prefect server (pid {stopped.pid})" if stopped else "not running")
        return 0
    record = local_server.running()
    if args.action == "url":
        if record is None:
            print("hygge: the local Prefect server is not running", file=sys.stderr)
            return 3
        print(record.url)
        return 0
    if record is None:
        print(f"not running (state in {local_server.state_dir()})")
        return 3
    print(
        f"running at {record.url} (pid {record.pid}; Prefect home {record.prefect_home}; "
        f"log {local_server.log_path()})"
    )
    return 0


# -- parsers ----------------------------------------------------------------------------------


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", metavar="FILE", help="a flow spec (YAML); default: the project")
    p.add_argument(
        "--flow",
        action="append",
        dest="flows",
        metavar="NAME",
        help="only this flow of the project (repeatable, or a comma list)",
    )
    p.add_argument(
        "--entity",
        action="append",
        dest="entities",
        metavar="NAME",
        help="only this entity (repeatable); in a project write flow.entity",
    )


def _run_flags(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--full-drop",
        dest="run_type",
        action="store_const",
        const="full_drop",
        help="replace every selected entity and reset its watermark",
    )
    mode.add_argument(
        "--incremental",
        dest="run_type",
        action="store_const",
        const="incremental",
        help="load only new rows where a watermark is configured (the usual default)",
    )
    p.add_argument("--concurrency", type=int, metavar="N", help="entities moving at once")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Prefect's own failure records and tracebacks (the run logs keep them)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show each entity's source, destination, mode (and why) and watermark; move nothing",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hygge",
        description="Move tables from where data lives (Homes) to where it should rest "
        "(Stores). Works on --spec FILE, else on the project (hygge.yml) found from the "
        "current folder upward.",
        epilog="Exit codes: 0 ok, 1 an entity or check failed, 2 configuration error, "
        "130/143 interrupted (Ctrl-C/SIGTERM).",
    )
    top.add_argument("--version", action="version", version=f"hygge {version('hygge')}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="move the entities of a spec or project",
        description="Move every entity (or the --flow/--entity ones). Outside a project and "
        "without --spec it runs the bundled example. The first run of a machine starts a "
        "local Prefect server that later runs reuse, unless PREFECT_API_URL is set.",
    )
    _selection(run)
    _run_flags(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check",
        help="test every Home and Store for real, moving no data",
        description="Connect to each Home and Store with its credentials, confirm each "
        "entity's table, query or path can be read, write and delete a probe in each Store's "
        "state area, and confirm each concurrency limit exists. One line per check; exit 1 "
        "if any failed.",
    )
    _selection(check)
    check.set_defaults(func=cmd_check)

    hist = sub.add_parser(
        "history",
        help="print the recent run journal, newest first",
        description="Read the run journal kept beside the data in each Store (no Prefect "
        "server needed for inline blocks).",
    )
    _selection(hist)
    hist.add_argument("--limit", type=int, default=20, metavar="N", help="records (default 20)")
    hist.set_defaults(func=cmd_history)

    status = sub.add_parser(
        "status",
        help="print what Fabric says of each table, running nothing",
        description="Read the destination's own verdict on each entity's table (for Open "
        "Mirroring, Fabric's monitor Files/Monitoring/tables.json): status, error and rows "
        "processed. Exit 1 if Fabric reports a table failed.",
    )
    _selection(status)
    status.add_argument(
        "--repair",
        action="store_true",
        help="send the file Fabric rejected again under its own name, for each failed table",
    )
    status.add_argument(
        "--file", metavar="NAME", help="with --repair: the rejected file (name or number)"
    )
    status.set_defaults(func=cmd_status)

    upkeep = sub.add_parser(
        "maintain",
        help="compact and vacuum the Delta tables of a spec or project",
        description="Compact small files (--compact) and delete files only versions older "
        "than the retention name (--vacuum, 7 days unless told), holding each Store's lock.",
    )
    _selection(upkeep)
    from flows.maintain import add_arguments

    add_arguments(upkeep)
    upkeep.set_defaults(func=cmd_maintain)

    init = sub.add_parser(
        "init",
        help="start a project: hygge.yml, one flow and sample data",
        description="Write hygge.yml, flows/<flow>/flow.yml and an entity file, each key "
        "commented, and a small sample source, so `hygge run` works straight away.",
    )
    init.add_argument("dir", nargs="?", default=".", help="project folder (default: here)")
    init.set_defaults(func=cmd_init)

    server = sub.add_parser(
        "server",
        help="the local Prefect server hygge starts for you",
        description="start: start (or find) it and print its API URL once it answers; "
        "status: where it runs (exit 3 if not); url: its API URL, for PREFECT_API_URL in "
        "another terminal; stop: stop it. It never touches a server you run yourself.",
    )
    server.add_argument("action", choices=["start", "status", "stop", "url"])
    server.set_defaults(func=cmd_server)
    return top


def legacy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.run",
        description="Run a hygge flow spec. With no --spec, runs the project found from here "
        "(hygge.yml), else the bundled example (creates a sample SQLite database on first use "
        "and moves it to lake/). The `hygge` command does the same and more.",
    )
    _selection(p)
    _run_flags(p)
    p.add_argument(
        "--history",
        action="store_true",
        help="print the recent run journal (of the --entity entities, if given) and exit",
    )
    p.add_argument(
        "--limit", type=int, default=20, metavar="N", help="journal records --history shows"
    )
    return p


def _dispatch(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if getattr(args, "flows", None):
        args.flows = [f.strip() for raw in args.flows for f in raw.split(",") if f.strip()]
    try:
        code = func(args)
    except (HyggeError, KeyboardInterrupt) as exc:
        code = 2 if isinstance(exc, ConfigError) else 1 if isinstance(exc, HyggeError) else 130
        if _interrupt_code() is None:  # an interrupted run says so in its own line, below
            print(f"hygge: {exc}" if str(exc) else "hygge: interrupted", file=sys.stderr)
    if _interrupt_code() is None:
        return code
    from flows import interrupts

    return interrupts.finish()


def _interrupt_code() -> int | None:
    """128 + the signal that interrupted the run (`flows.interrupts`), or None."""
    module = sys.modules.get("flows.interrupts")
    return None if module is None else module.exit_code()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return _dispatch(args.func, args)


def legacy_main(argv: list[str] | None = None) -> int:
    args = legacy_parser().parse_args(argv)
    return _dispatch(cmd_history if args.history else cmd_run, args)

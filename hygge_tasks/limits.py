"""A Home's limit across flow runs: a Prefect global concurrency limit, one slot per entity.

`max_connections` bounds the entities of one flow run; a global concurrency limit named in
the Home's `concurrency_limit` bounds every run on every worker that reads from it, e.g. at
most 8 entities at once against one SQL Server, however many deployments are running.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from blocks.base import HomeBlock
from hygge_core.errors import ConfigError


@contextmanager
def home_slot(home: HomeBlock, entity: str, logger: Any) -> Iterator[None]:
    """Hold one slot of the Home's global concurrency limit, if it names one."""
    name = home.concurrency_limit
    if not name:
        yield
        return
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    logger.info("%s: taking a slot of concurrency limit %r", entity, name)
    try:
        slot = concurrency(name, occupy=1, strict=True)
        slot.__enter__()
    except ConcurrencySlotAcquisitionError as exc:
        msg = (
            f"the Home's concurrency limit {name!r} does not exist on the Prefect server; "
            f"create it with `prefect gcl create {name} --limit N`, or clear `concurrency_limit`"
        )
        raise ConfigError(msg, entity=entity) from exc
    try:
        yield
    except BaseException as exc:
        slot.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        slot.__exit__(None, None, None)

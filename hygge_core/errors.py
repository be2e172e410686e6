"""The errors hygge raises, and the one rule that says which of them are worth a retry.

Every message names the entity (when there is one), says what happened and what to do next.
Causes stay chained (`raise ... from exc`); secrets never appear (see `redact`).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ConfigError",
    "FlowError",
    "HomeError",
    "HyggeError",
    "InterruptError",
    "LedgerError",
    "RedactedError",
    "ServerError",
    "StoreError",
    "TransientHomeError",
    "TransientStoreError",
    "first_line",
    "is_transient",
    "redact",
    "scrub",
    "scrubbed",
]


class HyggeError(Exception):
    """Base class of every error hygge raises on purpose."""

    def __init__(self, msg: str, *, entity: str | None = None) -> None:
        self.entity = entity
        self.msg = msg
        super().__init__(f"entity {entity!r}: {msg}" if entity else msg)

    def __reduce__(self) -> tuple[Any, ...]:
        # keep `entity` when Prefect or multiprocessing pickles the error
        return (_rebuild, (type(self), self.msg, self.entity), self.__dict__)


def _rebuild(cls: type[HyggeError], msg: str, entity: str | None) -> HyggeError:
    return cls(msg, entity=entity)


class ConfigError(HyggeError):
    """The flow spec, a block or an option is wrong; fix the configuration and run again."""


class HomeError(HyggeError):
    """Reading from a Home failed: missing source, unreadable data, refused credentials."""


class StoreError(HyggeError):
    """Staging or publishing to a Store failed: permissions, disk space, schema mismatch."""


class LedgerError(HyggeError):
    """The watermark ledger could not be read or saved."""


class ServerError(HyggeError):
    """hygge's local Prefect server could not be started or reached."""


class FlowError(HyggeError):
    """The flow run as a whole failed: one or more entities did not commit."""

    summary: list[dict[str, Any]] | None = None


class InterruptError(HyggeError):
    """The run was stopped by Ctrl-C or SIGTERM; what it had not published is left out."""


class RedactedError(Exception):
    """Stands in for a driver's error whose text held a secret: its type and its scrubbed text."""


class _Transient:
    """Marks an error that may succeed when tried again (dropped connection, timeout)."""


class TransientHomeError(_Transient, HomeError):
    """A Home failed in a way that a retry may fix."""


class TransientStoreError(_Transient, StoreError):
    """A Store failed in a way that a retry may fix."""


# OS-level failures that come and go; ENOSPC and EACCES are deliberately absent
_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EAGAIN,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


def is_transient(exc: BaseException | None) -> bool:
    """Whether retrying the work that raised `exc` might succeed.

    Bad data and bad configuration are never transient: retrying them only repeats the
    failure and delays the report.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _Transient):
            return True
        if isinstance(exc, HyggeError):
            # a deliberate, classified error that is not marked transient
            return False
        if isinstance(exc, TimeoutError | ConnectionError):
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__
    return False


_SECRET_PATTERNS = [
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)"), r"\1***\2"),
    (
        re.compile(r"((?:PWD|Password|AccountKey|SharedAccessSignature)\s*=\s*)[^;\s]+", re.I),
        r"\1***",
    ),
    (re.compile(r"((?:[?&])sig=)[^&\s]+", re.I), r"\1***"),
]


def redact(text: str) -> str:
    """Strip passwords, account keys and SAS signatures from driver or SDK text."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`redact`, and every one of `secrets` replaced, whatever the text around it."""
    text = redact(text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def scrubbed(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """`exc` to chain as the cause of hygge's error, or a `RedactedError` in its place.

    A traceback prints the cause's text, in the console and in the Prefect run logs; a driver
    that echoes a connection string would show its password there. The stand-in keeps the
    driver's type, its scrubbed text and its traceback; what it chained is left out.
    """
    secrets = list(secrets)
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if all(scrub(str(e), secrets) == str(e) for e in chain):
        return exc
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return RedactedError(f"{kind}: {scrub(str(exc), secrets)}").with_traceback(exc.__traceback__)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text: drivers often append pages of context."""
    text = redact(str(exc).strip())
    return text.splitlines()[0] if text else type(exc).__name__

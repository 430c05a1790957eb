"""The CLI's one exception type and how any failure becomes a one-line message.

    CliError         a refusal the operator can act on; printed as `ofp: <message>`, exit 2

Anything else that escapes a command (a database or network failure, a bad
configuration) is also reduced to one line: never a traceback, never a DSN
with its password.
"""

from __future__ import annotations

import asyncpg

from ofp.config import ConfigError, mask_dsn
from ofp.policy import PolicyError
from ofp.store.writes import PolicyConflictError

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and the answer is "no" (mismatch, RPC error)
EXIT_ERROR = 2  # the command could not run
EXIT_UNCHECKABLE = 3  # verify --replay: the claim cannot be checked from this bus


class CliError(Exception):
    """A refusal with a message fit for the operator (no secrets)."""


def describe(exc: BaseException, *, secrets: tuple[str | None, ...] = ()) -> str:
    """One line for `exc`, with every known secret (DSNs) masked."""
    if isinstance(exc, CliError | ConfigError | PolicyError | PolicyConflictError):
        text = str(exc)
    elif isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or "?"
        text = f"database error (SQLSTATE {state}): {exc}"
    elif isinstance(exc, OSError | asyncpg.InterfaceError | TimeoutError):
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        text = f"unexpected {type(exc).__name__}: {exc}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, mask_dsn(secret))
    return " ".join(text.split())

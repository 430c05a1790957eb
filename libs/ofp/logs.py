"""structlog JSON to stdout: one line per unit of work, stdlib loggers rendered alike.

Context (request id, stream, partition) is bound with contextvars so every line
of a unit of work carries it. Payloads and secrets are never logged.

OFP's own lines go through structlog's native pipeline straight to stdout (a
line per RPC is on the hot path: the stdlib `logging` detour cost about as
much as building the response). Lines from stdlib loggers (grpc, asyncpg,
botocore) are rendered by the same processors through `ProcessorFormatter`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_configured = False


def configure(level: str = "INFO", *, json: bool = True) -> None:
    global _configured
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _logger_field,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "botocore", "aiobotocore", "grpc", "asyncpg"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = True


def get_logger(name: str) -> Any:
    """A bound logger whose lines carry `logger: <name>` like the stdlib ones."""
    # Lazy: module-level loggers are created before `configure()` runs. The
    # name travels as `logger_name` (`logger` is taken by structlog's API).
    return structlog.get_logger(logger_name=name)


def _logger_field(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    name = event.pop("logger_name", None)
    if name is not None:
        event["logger"] = name
    return event

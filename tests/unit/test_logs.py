"""structlog JSON: stdlib loggers (grpc, asyncpg, botocore) render exactly like OFP's own
lines, and context bound with contextvars (the request id) reaches every line.

Runs in a subprocess: `configure()` owns the process's root logger."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging
    import structlog
    from ofp.logs import configure, get_logger

    log = get_logger("ofp.server")  # created at import time, before configure(), as in services
    configure()
    with structlog.contextvars.bound_contextvars(request_id="req-42", method="GetFeatures"):
        log.info("rpc_finished", code="OK", duration_ms=1.5)
        logging.getLogger("grpc._cython.cygrpc").warning("grpc says %s", "hi")
        logging.getLogger("asyncpg.pool").error("asyncpg says")
        logging.getLogger("botocore.retryhandler").warning("botocore says")
        logging.getLogger("botocore.credentials").info("below WARNING: dropped")
    log.info("outside")
    """
)


def test_stdlib_and_structlog_lines_are_one_json_shape_with_the_bound_request_id() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    events = [line["event"] for line in lines]
    assert events == ["rpc_finished", "grpc says hi", "asyncpg says", "botocore says", "outside"]
    for line in lines:
        assert {"event", "level", "logger", "timestamp"} <= set(line), line
        assert line["timestamp"].endswith("Z")
    for line in lines[:4]:
        assert line["request_id"] == "req-42" and line["method"] == "GetFeatures", line
    assert "request_id" not in lines[4]
    assert [line["logger"] for line in lines[1:4]] == [
        "grpc._cython.cygrpc", "asyncpg.pool", "botocore.retryhandler"
    ]
    assert lines[0]["duration_ms"] == 1.5 and lines[2]["level"] == "error"
    assert done.stderr == ""

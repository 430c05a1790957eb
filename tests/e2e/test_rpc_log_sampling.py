"""Per-call log lines are off the hot path: at the default level an OK call is
logged once in LOG_SAMPLE_EVERY (with `sampled`), every refusal always; at
OFP_LOG_LEVEL=DEBUG every call."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp_server.servicer import LOG_SAMPLE_EVERY
from tests.support.cli import cli_env, free_port, process_env
from tests.support.harness import project_once, request_proto
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request


async def _calls_logged(
    dsn: str, bus_root: Path, cwd: Path, level: str, ok: int
) -> list[dict[str, Any]]:
    port = free_port()
    env = process_env(cli_env(dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{port}",
                              OFP_LOG_LEVEL=level))
    server = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ofp-server"), env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        doc = keys_request("A", ["1"], BASE_US + 9 * 24 * HOUR_US)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FeatureServiceStub(channel)
            for _ in range(ok):
                await stub.GetFeatures(request_proto(doc), timeout=10, wait_for_ready=True)
            bad = {**doc, "feature_groups": [{"name": "nope", "version": "v1"}]}
            try:
                await stub.GetFeatures(request_proto(bad), timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        server.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(server.communicate(), timeout=30)
        assert server.returncode == 0, err.decode()[-2000:]
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith(b"{")]
    return [x for x in lines if x.get("event") == "rpc_finished"]


async def test_ok_calls_are_sampled_at_info_and_all_logged_at_debug(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(95, n_events=20, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    ok = LOG_SAMPLE_EVERY + 20
    info = await _calls_logged(fresh_dsn, bus_root, tmp_path, "INFO", ok)
    assert [(x["code"], x["sampled"], x["level"]) for x in info] == [
        ("OK", LOG_SAMPLE_EVERY, "info"), ("INVALID_REQUEST", None, "info")]
    debug = await _calls_logged(fresh_dsn, bus_root, tmp_path, "DEBUG", ok)
    assert [x["code"] for x in debug].count("OK") == ok
    assert sum(x["level"] == "debug" for x in debug) == ok - 1

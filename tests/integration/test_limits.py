"""Request limits of the server (SPEC 4.1): the server-side deadline and the message size.
(Key and group counts: test_errors_grpc.py and test_request_validation.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.contracts.errors import ErrorCode
from ofp_server.server import create_server
from tests.support.harness import project_once, request_proto, running_server, settings
from tests.support.rich_errors import rich_error
from tests.support.streams import generate, one_key_request

pytestmark = pytest.mark.integration


def request(**changes: Any) -> dict[str, Any]:
    return one_key_request("lim-1", **changes)


async def test_server_deadline_answers_unavailable_retryable_when_the_read_blocks(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(81, n_events=40, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root, deadline_ms=300) as (_server, stub):
        await stub.GetFeatures(request_proto(request()), timeout=10)  # warm: policy cached
        async with pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetFeatures(request_proto(request()), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        error = rich_error(err.value).error
        assert pb.ErrorCode.Name(error.code) == ErrorCode.UNAVAILABLE.value and error.retryable
        assert "deadline" in error.detail and error.request_id == "lim-1"
        # Unblocked, the same request answers again.
        await stub.GetFeatures(request_proto(request()), timeout=10)


async def test_request_larger_than_max_message_bytes_is_refused_before_the_servicer(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    async with running_server(pool, bus_root, max_message_bytes=4096) as (_server, stub):
        big = request(request_id="x" * 128, feature_keys=[
            {"key_type": "flow_id", "key_id": f"{i:0>200}"} for i in range(40)
        ])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetFeatures(request_proto(big), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_servers_share_one_port_only_when_grpc_reuseport_is_set(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(82, n_events=40, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    first = create_server(settings(bus_root, grpc_reuseport=True), pool, "127.0.0.1:0")
    address = f"127.0.0.1:{first.port}"
    # Without the setting a second server on a taken port fails loudly.
    with pytest.raises(OSError, match="cannot bind"):
        create_server(settings(bus_root), pool, address)
    second = create_server(settings(bus_root, grpc_reuseport=True), pool, address)
    await first.start()
    await second.start()
    try:
        answers: list[str] = []
        # The kernel spreads connections over the sockets by their source port:
        # forty fresh connections all landing on one server has odds 2**-39.
        for i in range(40):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.FeatureServiceStub(channel)
                resp = await stub.GetFeatures(request_proto(request(request_id=f"r-{i}")),
                                              timeout=10)
                answers.append(resp.snapshot.snapshot_hash)
        assert len(set(answers)) == 1  # the same snapshot, whichever process answered
        served = [
            srv.metrics.registry.get_sample_value(
                "ofp_grpc_requests_total",
                {"method": "GetFeatures", "code": "OK", "grpc_code": "OK"},
            ) or 0
            for srv in (first, second)
        ]
        assert sum(served) == 40 and min(served) > 0
    finally:
        await first.stop(0)
        await second.stop(0)

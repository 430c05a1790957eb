"""The two console scripts as Kubernetes runs them: real processes, real signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.cli import cli_env, free_port, process_env
from tests.support.streams import generate


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)



async def test_projector_once_drains_and_exits_zero_then_server_stops_on_sigterm(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(61, n_events=80, n_partitions=2)
    stream.write(bus_root)
    port = free_port()
    env = process_env(cli_env(fresh_dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{port}"))

    projector = await asyncio.create_subprocess_exec(
        _script("ofp-projector"), "--once", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(projector.communicate(), timeout=120)
    assert projector.returncode == 0, err.decode()[-2000:]
    assert b'"event": "projector_finished"' in out

    server = await asyncio.create_subprocess_exec(
        _script("ofp-server"), env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            status = None
            for _ in range(200):
                try:
                    resp = await stub.Check(
                        health_pb2.HealthCheckRequest(service="ofp.v1.FeatureService"), timeout=1
                    )
                    status = resp.status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.SERVING
        server.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(server.communicate(), timeout=30)
        assert server.returncode == 0, err.decode()[-2000:]
        assert b'"event": "server_stopped"' in out
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_bad_policy_stops_the_projector_with_a_clear_message(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("policy_id: p\nsource_topic: t\nfeature_groups: []\n")
    env = process_env({**cli_env(fresh_dsn, bus_root), "OFP_FEATURES_PATH": str(policy)})
    proc = await asyncio.create_subprocess_exec(
        _script("ofp-projector"), "--once", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2
    assert "revision is missing" in err.decode()

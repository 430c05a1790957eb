"""`ofp-server --workers 2` as Kubernetes would run it: two processes on one port,
one metrics endpoint for both, a worker killed with SIGKILL restarted and
counted, every worker stopped by one SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import psutil  # type: ignore[import-untyped]
import pytest

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from tests.support.cli import cli_env, free_port, process_env
from tests.support.harness import project_once, request_proto
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def _wait_ready(metrics: str) -> None:
    for _ in range(300):
        try:
            if (await _get(f"{metrics}/readyz"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the workers never became ready")


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def _ask(port: int, doc: dict[str, object], n: int) -> None:
    """`n` calls, each on a new connection (so the kernel spreads them over workers)."""
    for _ in range(n):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            resp = await pb_grpc.FeatureServiceStub(channel).GetFeatures(
                request_proto(doc), timeout=10, wait_for_ready=True)
            assert resp.status == "OK"


async def test_two_workers_share_the_port_and_one_endpoint_and_survive_a_kill(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(94, n_events=60, n_keys=3, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    port, metrics_port = free_port(), free_port()
    env = process_env(cli_env(fresh_dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{port}",
                       OFP_METRICS_PORT=str(metrics_port)))
    metrics = f"http://127.0.0.1:{metrics_port}"
    server = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ofp-server"), "--workers", "2", env=env,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await _wait_ready(metrics)
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 2
        doc = keys_request("A", ["1", "2"], BASE_US + 9 * 24 * HOUR_US)
        await _ask(port, doc, 30)
        _, text = await _get(f"{metrics}/metrics")
        assert _sample(text, "ofp_grpc_requests_total", method="GetFeatures", code="OK") == 30
        assert _sample(text, "ofp_server_workers") == 2
        assert _sample(text, "ofp_server_serving") == 2
        # Pool gauges are livesums over the workers; each worker's process by index.
        assert _sample(text, "ofp_db_pool_connections_max") == 2 * 8
        for index in ("0", "1"):
            assert _sample(text, "ofp_server_worker_process_resident_memory_bytes",
                           worker=index) > 0
        assert _sample(text, "process_cpu_seconds_total") > 0  # the supervisor's own
        # Both processes answered: each wrote its own samples.
        assert len({p.pid for p in workers}) == 2

        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        for _ in range(100):  # the supervisor restarts it (after a 1 s pause)
            alive = [p for p in psutil.Process(server.pid).children() if p.is_running()]
            if len(alive) == 2 and victim.pid not in {p.pid for p in alive}:
                break
            await asyncio.sleep(0.1)
        await _wait_ready(metrics)
        await _ask(port, doc, 10)
        _, text = await _get(f"{metrics}/metrics")
        assert _sample(text, "ofp_server_worker_restarts_total") == 1
        assert _sample(text, "ofp_grpc_requests_total", method="GetFeatures", code="OK") >= 40

        server.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(server.communicate(), timeout=40)
        assert server.returncode == 0, err.decode()[-2000:]
        assert out.count(b'"event": "server_stopped"') == 2  # each worker drained
        assert not [p for p in psutil.pids() if p in {w.pid for w in alive}
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        if server.returncode is None:
            for child in psutil.Process(server.pid).children():
                child.kill()
            server.kill()
            await server.wait()


@pytest.mark.usefixtures("pool")  # migrated: a bare database is refused (exit 3)
async def test_a_worker_that_cannot_start_stops_the_supervisor(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    # A port held without SO_REUSEPORT: no worker can bind it.
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = process_env(cli_env(fresh_dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{port}"))
        server = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "ofp-server"), "--workers", "2", env=env,
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(server.communicate(), timeout=60)
    assert server.returncode == 2, err.decode()[-2000:]

"""The small HTTP endpoint both workloads serve on `metrics_port` (docs/contract.md 5).

    GET /metrics   Prometheus text exposition of one CollectorRegistry
    GET /healthz   200 while the process and its event loop answer
    GET /readyz    200 while `ready()` says so, else 503 (200 when no `ready` is given)

aiohttp on the workload's own event loop: a scrape can never see a thread's view of
state that the loop is halfway through changing, and a wedged loop fails /healthz.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class MetricsEndpoint:
    """A running endpoint; `port` is the bound port (useful with port 0)."""

    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_metrics(
    port: int,
    registry: CollectorRegistry,
    *,
    host: str = "0.0.0.0",
    ready: Callable[[], bool] | None = None,
) -> MetricsEndpoint:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if ready is None or ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # No access log: a scrape every few seconds is not a unit of work worth a line.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return MetricsEndpoint(runner, bound)

"""The serving-ceiling reference: a trivial grpc.aio server with ofp-server's process model.

One process (or several sharing the port, like ofp-server), uvloop, one
generic unary handler at the same method path
(`/ofp.v1.FeatureService/GetFeatures`) that ignores the request bytes and
returns a fixed small response, so the same h2load command drives both.
`python -m bench.echo_server --port N`; stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.store.db import create_pool

METHOD = "GetFeatures"
SERVICE = "ofp.v1.FeatureService"


def _fixed_response() -> bytes:
    message = pb.GetFeaturesResponse()
    message.status = "OK"
    message.served_at_utc = "2026-02-13T00:00:00.000000Z"
    data: bytes = message.SerializeToString()
    return data


async def serve(port: int, *, reuseport: bool = False, database_url: str | None = None) -> None:
    response = _fixed_response()
    pool = None if database_url is None else await create_pool(
        database_url, max_size=8, generic_plans=True
    )

    async def echo(request: bytes, context: Any) -> bytes:
        return response

    async def echo_after_select_1(request: bytes, context: Any) -> bytes:
        # The floor of any handler that reads the database once: one pooled
        # asyncpg round trip of a trivial prepared statement.
        assert pool is not None
        await pool.fetchval("SELECT 1")
        return response

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {METHOD: grpc.unary_unary_rpc_method_handler(
            echo if pool is None else echo_after_select_1
        )},
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuseport else 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    if pool is not None:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuseport", action="store_true",
                        help="share the port with other processes, like OFP_GRPC_REUSEPORT")
    parser.add_argument("--select-1", metavar="DATABASE_URL",
                        help="answer only after one pooled `SELECT 1` on this database")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, reuseport=args.reuseport, database_url=args.select_1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure the records/s one shard reader sustains against a Kinesis emulator.

    .venv/bin/python tools/measure_kinesis_reader.py [--records 20000] [--limit 1000]
        [--endpoint URL]

Without --endpoint it starts moto's server in a thread on a free port. It puts
`--records` envelopes of the size the generator in tests/ makes (~500 bytes)
into a one-shard stream, then reads the shard from TRIM_HORIZON to the end
with the projector's own `ShardReader` (GetRecords with `--limit`), and prints
records/s. Only the reader is measured (no database); see docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid

from ofp_projector.kinesis_bus import KinesisBus

ENVELOPE = {
    "event_type": "txn",
    "ts_utc": "2026-02-06T00:00:01.000000Z",
    "platform_run_id": "platform_20260201T000000Z",
    "scenario_run_id": "1" * 32,
    "scenario_id": "scenario_A",
    "manifest_fingerprint": "f" * 64,
    "parameter_hash": "e" * 64,
    "seed": 0,
    "schema_version": "1.0",
}


async def measure(endpoint: str, records: int, limit: int) -> float:
    name = f"measure-{uuid.uuid4().hex[:8]}"
    bus = KinesisBus(stream_name=name, region="us-east-1", endpoint_url=endpoint,
                     get_records_limit=limit)
    await bus.start()
    try:
        await bus.client.create_stream(StreamName=name, ShardCount=1)
        for i in range(0, records, 500):
            batch = [
                {"Data": json.dumps({**ENVELOPE, "event_id": f"{j:032x}",
                                     "payload": {"flow_id": j % 97, "amount": "12.50"}}).encode(),
                 "PartitionKey": str(j % 97)}
                for j in range(i, min(records, i + 500))
            ]
            await bus.client.put_records(StreamName=name, Records=batch)
        await bus.discover()
        reader = bus.open(0, 0)
        got = 0
        t0 = time.perf_counter()
        while got < records:
            batch_ = await reader.read(limit)
            got += len(batch_.records)
        return got / (time.perf_counter() - t0)
    finally:
        await bus.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ.setdefault(k, v)
    server = None
    endpoint = args.endpoint
    if endpoint is None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    try:
        rate = asyncio.run(measure(endpoint, args.records, args.limit))
    finally:
        if server is not None:
            server.stop()
    print(f"{args.records} records, GetRecords Limit={args.limit}: {rate:,.0f} records/s per shard")
    return 0


if __name__ == "__main__":
    sys.exit(main())

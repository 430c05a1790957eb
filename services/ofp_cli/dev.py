"""`ofp dev`: the quickstart in one command.

Embedded PostgreSQL (unless OFP_DATABASE_URL), the sample stream on the
file-bus (only when the topic has no partition files yet), the projector in
follow mode and the feature server in this process; once the initial stream is
applied it prints a sample answer (JSON on stdout) and copy-paste lines for
grpcurl and `buf curl` (stderr), then serves until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg

from ofp.config import Settings
from ofp.contracts.request import PIN_NAMES
from ofp.contracts.timefmt import format_micros, parse_micros
from ofp.policy import FeatureGroup, Policy, load_policy
from ofp.store.db import close_pool, create_pool
from ofp.store.reads import WATERMARK_EXPR
from ofp_projector import file_bus
from ofp_projector.projector import Projector
from ofp_server.server import create_server

from .client import RpcFailedError, get_features
from .database import resolve_dsn
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .sample_stream import SAMPLE_PINS, write_sample_bus

SCAN_LINES_PER_PARTITION = 20_000
CATCH_UP_POLL_S = 0.1


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def complete_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def bus_lengths(root: str, topic: str) -> dict[int, int]:
    return {p: complete_lines(file_bus.partition_path(root, topic, p))
            for p in file_bus.list_partitions(root, topic)}


async def wait_until_applied(
    pool: asyncpg.Pool, stream: str, target: dict[int, int], projector_task: asyncio.Task[Any],
    stop: asyncio.Event | None = None,
) -> bool:
    """True once every partition's checkpoint reached `target`, False as soon as `stop`
    is set; fail if the projector does."""
    while True:
        if stop is not None and stop.is_set():
            return False
        if projector_task.done():
            projector_task.result()  # re-raise its failure
            raise CliError("the projector stopped before the initial stream was applied")
        rows = await pool.fetch(
            "SELECT partition, next_offset FROM checkpoints WHERE stream = $1", stream
        )
        done = {int(r["partition"]): int(r["next_offset"]) for r in rows}
        if all(done.get(p, 0) >= n for p, n in target.items()):
            return True
        await asyncio.sleep(CATCH_UP_POLL_S)


def _scan_events(root: str, topic: str, group: FeatureGroup) -> list[tuple[int, dict[str, Any],
                                                                            str]]:
    """(ts_us, pins, key_id) of well-formed events near the start of each partition."""
    found = []
    for p in file_bus.list_partitions(root, topic):
        reader = file_bus.PartitionReader(file_bus.partition_path(root, topic, p), 0)
        for _, raw in reader.read(SCAN_LINES_PER_PARTITION):
            try:
                doc = json.loads(raw)
                env = doc.get("envelope", doc)
                key = env["payload"][group.key_type]
                pins = {name: env[name] for name in PIN_NAMES}
                ts = parse_micros(env["ts_utc"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if isinstance(key, bool) or not isinstance(key, int | str):
                continue
            if group.consumes(str(env.get("event_type", ""))):
                found.append((ts, pins, str(key)))
    return found


async def sample_request(pool: asyncpg.Pool, settings: Settings, policy: Policy) -> dict[str, Any]:
    """A request that finds data: a real key, its pins, as-of = the basis watermark."""
    group = policy.groups[0]
    watermark = await pool.fetchval(
        f"SELECT {WATERMARK_EXPR} FROM checkpoints WHERE stream = $1",
        settings.bus_stream(policy.source_topic),
    )
    events = await asyncio.to_thread(
        _scan_events, settings.file_bus_root, policy.source_topic, group
    )
    if watermark is not None:
        events = [e for e in events if e[0] <= watermark]
    if events:
        ts, pins, key = max(events, key=lambda e: e[0])
        as_of = int(watermark) if watermark is not None else ts
    else:
        pins, key, as_of = dict(SAMPLE_PINS), "1", int(watermark or 0)
    return {
        "pins": pins,
        "as_of_time_utc": format_micros(as_of),
        "feature_keys": [{"key_type": group.key_type, "key_id": key}],
        "feature_groups": [{"name": group.name, "version": group.version}],
    }


def tool_path(name: str) -> str:
    """The tool next to this interpreter (the venv), as a path the operator can paste."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        return name
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(candidate)
        if not relative.startswith(".."):
            return relative
    return str(candidate)


def copy_paste_lines(address: str, request: dict[str, Any]) -> list[str]:
    body = shlex.quote(json.dumps(request, separators=(",", ":")))
    method = "ofp.v1.FeatureService/GetFeatures"
    return [
        f"{tool_path('grpcurl')} -plaintext -d {body} {address} {method}",
        f"{tool_path('buf')} curl --protocol grpc --http2-prior-knowledge -d {body} "
        f"http://{address}/{method}",
    ]


async def run(args: argparse.Namespace, settings: Settings) -> int:
    # Ctrl-C / SIGTERM set `stop` from the first instruction on, and every phase
    # (catch-up, sample answer, follow) ends when it is set: a stop never rests on
    # one cancellation of the main task that start-up code could absorb, and is
    # never lost (docs/decisions.md, "Signals from the first instruction").
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    policy = load_policy(settings.features_path)
    if settings.bus_kind != "file":
        raise CliError("ofp dev runs on the file-bus; unset OFP_BUS_KIND or set it to 'file'")
    dsn = resolve_dsn(settings, announce=True)
    root, topic = settings.file_bus_root, policy.source_topic
    if not file_bus.list_partitions(root, topic):
        write_sample_bus(root, topic, partitions=args.partitions, n=args.events)
        say(f"ofp dev: wrote {args.events} sample events to {root}/{topic} "
            f"({args.partitions} partitions)")
    else:
        say(f"ofp dev: using the existing stream in {root}/{topic}")
    target = bus_lengths(root, topic)

    pool = await create_pool(dsn, max_size=settings.db_pool_max)
    try:
        projector = Projector(settings, pool, policy)
        await projector.prepare()  # migrations + active policy before anything reads them
        projector_task = asyncio.create_task(projector.run(once=False), name="projector")
        server = create_server(settings, pool)
        try:
            await server.start()
            say(f"ofp dev: feature server on {settings.grpc_address}; applying "
                f"{sum(target.values())} records...")
            if not await wait_until_applied(pool, topic, target, projector_task, stop):
                say("ofp dev: shutting down")
                return EXIT_OK
            say(f"ofp dev: initial stream applied ({projector.totals.records} records)")
            return await _present(args, settings, policy, pool, projector_task, stop)
        finally:
            projector.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(projector_task, return_exceptions=True)
            await server.stop(5.0)
    finally:
        await close_pool(pool)


async def _present(args: argparse.Namespace, settings: Settings, policy: Policy,
                   pool: asyncpg.Pool, projector_task: asyncio.Task[Any],
                   stop: asyncio.Event) -> int:
    request = await sample_request(pool, settings, policy)
    host_port = settings.grpc_address
    try:
        answer = await get_features(host_port, request, timeout_s=10.0)
    except RpcFailedError as exc:
        print(json.dumps(exc.error, indent=2, sort_keys=True), flush=True)
        return EXIT_FAILED
    print(json.dumps(answer, indent=2), flush=True)
    say("")
    say("Ask it yourself:")
    for line in copy_paste_lines(host_port, request):
        say(f"  {line}")
    say("Operator view:  ofp status   |   check an answer:  ofp verify FILE")
    if args.no_follow:
        return EXIT_OK
    say("ofp dev: following the bus; Ctrl-C to stop")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, projector_task}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if projector_task.done() and not stop.is_set():
        projector_task.result()
    say("ofp dev: shutting down")
    return EXIT_OK

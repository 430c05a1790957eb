"""`ofp replay [--target-dsn DSN]`: rebuild the feature state from the bus into a fresh database.

Without `--target-dsn` a new database `ofp_replay_<UTC timestamp>` is created
on the configured server and kept, so it can be inspected (`ofp status` with
`OFP_DATABASE_URL` pointing at it) and compared.
"""

from __future__ import annotations

import argparse
import sys
import time

from ofp.config import Settings, mask_dsn
from ofp.policy import load_policy

from .database import connect, create_database, resolve_dsn
from .errors import EXIT_OK, CliError
from .rebuild import rebuild, stderr_progress


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus_kind != "file":
        raise CliError("replay reads the file-bus; bus_kind is " + repr(settings.bus_kind))
    policy = load_policy(settings.features_path)
    if args.target_dsn:
        target = args.target_dsn
    else:
        name = "ofp_replay_" + time.strftime("%Y%m%dt%H%M%S", time.gmtime())
        target = await create_database(resolve_dsn(settings, announce=True), name)
        print(f"ofp replay: created database {name}", file=sys.stderr)
    print(f"ofp replay: {settings.file_bus_root}/{policy.source_topic} -> {mask_dsn(target)}",
          file=sys.stderr)
    t0 = time.monotonic()
    totals = await rebuild(settings, policy, target, settings.file_bus_root,
                           progress=stderr_progress("ofp replay"))
    elapsed = time.monotonic() - t0
    if sys.stderr.isatty():
        print(file=sys.stderr)
    conn = await connect(target)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM checkpoints WHERE stream = $1 ORDER BY partition",
            policy.source_topic,
        )
    finally:
        await conn.close()
    checkpoints = {int(r["partition"]): int(r["next_offset"]) for r in rows}
    rate = totals.records / elapsed if elapsed > 0 else 0.0
    outcomes = ", ".join(f"{k.lower()}={v}" for k, v in sorted(totals.by_outcome.items()))
    print(f"replayed {totals.records} records in {totals.batches} batches, "
          f"{elapsed:.2f} s ({rate:,.0f} records/s)")
    print(f"outcomes: {outcomes or 'none'}")
    print("checkpoints: " + (", ".join(f"partition {p}={o}" for p, o in sorted(
        checkpoints.items())) or "none"))
    print(f"target: {mask_dsn(target)}")
    return EXIT_OK

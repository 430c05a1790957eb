"""`ofp replay [--target-dsn DSN] [--keep]`: rebuild the feature state from the bus into a
fresh database.

It reads the configured bus from its start: the file-bus's partition files, or a
Kinesis stream from TRIM_HORIZON. Kinesis keeps only the stream's retention (24
hours by default, up to 365 days): a rebuild from it lacks every event trimmed
before, and says so (the shortfall: the earliest event it found per partition).

Without `--target-dsn` a new database `ofp_replay_<UTC timestamp>` is created on
the configured server, reported on, and dropped; `--keep` keeps it, so it can be
inspected (`ofp status` with `OFP_DATABASE_URL` pointing at it), compared, or
switched to. A `--target-dsn` database is the operator's: it must be empty, and it
is never dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ofp.config import Settings, mask_dsn
from ofp.contracts.timefmt import format_micros
from ofp.policy import load_policy

from .database import connect, create_database, drop_database, resolve_dsn
from .errors import EXIT_OK
from .progress import Progress
from .rebuild import file_bus_records, rebuild


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-dsn", metavar="DSN",
                   help="an empty database to rebuild into, kept (default: a new"
                        " ofp_replay_<time> on the configured server, dropped afterwards)")
    p.add_argument("--keep", action="store_true",
                   help="keep the ofp_replay_<time> database (to inspect or switch to)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    policy = load_policy(settings.features_path)
    stream = settings.bus_stream(policy.source_topic)
    kinesis = settings.bus_kind == "kinesis"
    created: tuple[str, str] | None = None
    if args.target_dsn:
        target = args.target_dsn
    else:
        name = "ofp_replay_" + time.strftime("%Y%m%dt%H%M%S", time.gmtime())
        server = resolve_dsn(settings, announce=True)
        target = await create_database(server, name)
        created = (server, name)
        print(f"ofp replay: created database {name}", file=sys.stderr)
    source = (f"kinesis stream {stream} from TRIM_HORIZON" if kinesis
              else f"{settings.file_bus_root}/{policy.source_topic}")
    print(f"ofp replay: {source} -> {mask_dsn(target)}", file=sys.stderr)
    try:
        total = None if kinesis else file_bus_records(settings.file_bus_root,
                                                      policy.source_topic)
        progress = Progress("replay", total=total)
        t0 = time.monotonic()
        try:
            totals = await rebuild(settings, policy, target,
                                   None if kinesis else settings.file_bus_root,
                                   progress=lambda n, _elapsed: progress.set(n))
        finally:
            progress.close()
        elapsed = time.monotonic() - t0
        doc = await _summary(target, stream)
    finally:
        kept = created is None or args.keep
        if not kept and created is not None:
            await drop_database(*created)
    rate = totals.records / elapsed if elapsed > 0 else 0.0
    doc.update(
        source="kinesis" if kinesis else "file", stream=stream, records=totals.records,
        batches=totals.batches, seconds=round(elapsed, 3), records_per_s=round(rate, 1),
        outcomes={k.lower(): v for k, v in sorted(totals.by_outcome.items())},
        target=mask_dsn(target), kept=kept)
    if kinesis:
        doc["shortfall"] = (
            "Kinesis keeps only the stream's retention: events trimmed before"
            " `earliest_event_utc` of each partition are not in this rebuild, and windows"
            " reaching before it are short")
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    outcomes = ", ".join(f"{k}={v}" for k, v in doc["outcomes"].items())
    print(f"replayed {totals.records} records in {totals.batches} batches, "
          f"{elapsed:.2f} s ({rate:,.0f} records/s)")
    print(f"outcomes: {outcomes or 'none'}")
    print("checkpoints: " + (", ".join(
        f"partition {p['partition']}={p['next_offset']}" for p in doc["partitions"]) or "none"))
    if kinesis:
        print("earliest events: " + (", ".join(
            f"partition {p['partition']} {p['earliest_event_utc'] or '-'}"
            for p in doc["partitions"]) or "none"))
        print(f"shortfall: {doc['shortfall']}")
    print(f"target: {mask_dsn(target)}" + ("" if kept else " (dropped; --keep keeps it)"))
    return EXIT_OK


async def _summary(target: str, stream: str) -> dict[str, Any]:
    """Per partition of the rebuilt database: its checkpoint and the earliest event applied."""
    conn = await connect(target)
    try:
        rows = await conn.fetch(
            "SELECT c.partition, c.next_offset, (SELECT min(d.ts_us) FROM event_dedupe d"
            "  WHERE d.bus_partition = c.partition) AS earliest_us"
            " FROM checkpoints c WHERE c.stream = $1 ORDER BY c.partition", stream)
    finally:
        await conn.close()
    return {"partitions": [
        {"partition": int(r["partition"]), "next_offset": str(r["next_offset"]),
         "earliest_event_utc": None if r["earliest_us"] is None
         else format_micros(int(r["earliest_us"]))}
        for r in rows]}

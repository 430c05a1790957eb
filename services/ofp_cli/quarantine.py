"""`ofp quarantine list|show|replay`: quarantined records, and replaying them after a fix.

    ofp quarantine list [--reason R] [--all] [--limit N]   counts by reason, open records
    ofp quarantine show ID                                 one record, its raw bytes
    ofp quarantine replay [--reason R] [--id ID]           classify again, apply what passes

`replay` takes the open records (never replayed, or still quarantined by the
last replay) in quarantine order, classifies each with the code and the policy
in force now, and applies the ones that pass to the state as the projector
would have at their offset (ofp.store.quarantine). Each row records that it was
replayed, when, and the outcome; its original partition, offset, reason and
detail stay. Checkpoints do not move. A second replay finds nothing open that
passes, so it changes nothing. It may run while the projector runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ofp.config import Settings
from ofp.contracts.timefmt import format_micros
from ofp.policy import PolicyError, load_policy
from ofp.store import quarantine as store
from ofp.store.db import Conn
from ofp.store.rollout import read_projection
from ofp.store.status import ACTIVE_TOPIC_SQL
from ofp.store.writes import ProjectionChangedError

from .database import connect, existing_dsn
from .errors import EXIT_OK, CliError
from .progress import Progress

REPLAY_MIGRATION = 11
PROJECTION_RETRIES = 5


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("quarantine", parents=[common],
                       help="quarantined records by reason; replay them after a fix")
    p.description = __doc__.split("\n\n", 1)[1] if __doc__ else None
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("list", parents=[common],
                         help="counts by reason, then the open records (oldest first)")
    v.add_argument("--reason", action="append", metavar="REASON",
                   help="only this reason (repeatable), e.g. ts_in_future")
    v.add_argument("--all", action="store_true",
                   help="also the records a replay resolved (applied, duplicate, ignored)")
    v.add_argument("--limit", type=int, default=50, metavar="N",
                   help="records to list (default 50)")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v.set_defaults(run=list_records)
    v = verbs.add_parser("show", parents=[common],
                         help="one quarantined record: where it was, why, its raw bytes")
    v.add_argument("quarantine_id", type=int, metavar="ID")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.set_defaults(run=show)
    v = verbs.add_parser(
        "replay", parents=[common],
        help="classify open records again with the current code and policy; apply those"
             " that pass")
    v.add_argument("--reason", action="append", metavar="REASON",
                   help="only records quarantined for this reason (repeatable)")
    v.add_argument("--id", action="append", type=int, metavar="ID",
                   help="only this record (repeatable)")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.set_defaults(run=replay)


async def _open(settings: Settings) -> Conn:
    conn = await connect(existing_dsn(settings))
    applied = await conn.fetchval(
        "SELECT to_regclass('schema_migrations') IS NOT NULL AND EXISTS ("
        " SELECT 1 FROM schema_migrations WHERE version >= $1)", REPLAY_MIGRATION)
    if not applied:
        await conn.close()
        raise CliError("the database schema predates quarantine replay; run `ofp migrate`")
    return conn


async def _stream(conn: Conn, settings: Settings) -> str:
    topic = await conn.fetchval(ACTIVE_TOPIC_SQL)
    if topic is None:
        try:
            topic = load_policy(settings.features_path).source_topic
        except PolicyError as exc:
            raise CliError(f"no active policy in the database, and {exc}") from None
    return settings.bus_stream(str(topic))


async def list_records(args: argparse.Namespace, settings: Settings) -> int:
    conn = await _open(settings)
    try:
        stream = await _stream(conn, settings)
        counts = await store.count_by_reason(conn, stream)
        rows = await store.list_records(conn, stream, reasons=args.reason,
                                        include_resolved=args.all, limit=args.limit)
    finally:
        await conn.close()
    if args.json:
        print(json.dumps({"stream": stream, "by_reason": counts,
                          "records": [r.to_json() for r in rows]}, indent=2))
        return EXIT_OK
    opened = sum(c["open"] for c in counts)
    resolved = sum(c["resolved"] for c in counts)
    print(f"quarantine of {stream}: {opened} open, {resolved} resolved by a replay")
    if counts:
        print()
        print(_table([("reason", "open", "resolved", "total")] + [
            (c["reason"], str(c["open"]), str(c["resolved"]), str(c["total"]))
            for c in counts], left=1))
    if rows:
        print()
        print(_table([("id", "partition", "offset", "reason", "quarantined_at", "replays",
                       "last_replay", "detail")] + [
            (str(r.quarantine_id), str(r.partition), r.offset, r.reason,
             format_micros(r.quarantined_us), str(r.replays),
             "-" if r.replay_outcome is None
             else f"{r.replay_outcome} {r.replay_reason or ''}".strip(),
             r.detail[:60]) for r in rows], left=0, text_from=3))
    return EXIT_OK


async def show(args: argparse.Namespace, settings: Settings) -> int:
    conn = await _open(settings)
    try:
        record = await store.get_record(conn, args.quarantine_id)
    finally:
        await conn.close()
    if record is None:
        raise CliError(f"no quarantined record {args.quarantine_id}")
    doc = record.to_json()
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    for key, value in doc.items():
        if key in ("raw", "raw_hex"):
            continue
        print(f"{key:<19} {'-' if value is None else value}")
    print("raw" if "raw" in doc else "raw (hex, not UTF-8)")
    print(doc.get("raw", doc.get("raw_hex", "")).rstrip("\n"))
    return EXIT_OK


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    conn = await _open(settings)
    try:
        projection = await read_projection(conn)
        if projection is None:
            raise CliError("no active policy in the database: nothing can be applied yet")
        stream = settings.bus_stream(projection.policy.source_topic)
        ids = await store.open_ids(conn, stream, reasons=args.reason, ids=args.id)
        if args.id:
            missing = sorted(set(args.id) - set(ids))
            if missing:
                raise CliError(f"not open quarantined records of {stream}: "
                               + ", ".join(map(str, missing)))
        progress = Progress("quarantine replay", total=len(ids))
        results: list[store.ReplayOutcome] = []
        scopes: dict[Any, int] = {}
        try:
            for quarantine_id in ids:
                for _ in range(PROJECTION_RETRIES):
                    try:
                        result = await store.replay_one(
                            conn, quarantine_id, projection=projection,
                            run_id=settings.required_platform_run_id, scope_cache=scopes,
                            max_future_us=settings.max_future_skew_s * 1_000_000)
                        break
                    except ProjectionChangedError:
                        # A rollout moved while replaying: classify with the new groups.
                        projection = await read_projection(conn)
                        assert projection is not None
                else:
                    raise CliError("the rollout keeps changing; replay again later")
                if result is not None:  # None: resolved meanwhile by another replay
                    results.append(result)
                progress.add()
        finally:
            progress.close()
    finally:
        await conn.close()
    by_outcome = Counter(r.outcome for r in results)
    if args.json:
        print(json.dumps({"stream": stream, "replayed": len(results),
                          "by_outcome": dict(sorted(by_outcome.items())),
                          "records": [r.to_json() for r in results]}, indent=2))
        return EXIT_OK
    summary = ", ".join(f"{k.lower()}={v}" for k, v in sorted(by_outcome.items()))
    print(f"replayed {len(results)} record(s) of {stream}: {summary or 'nothing open'}")
    for r in results:
        why = f" {r.reason}" if r.reason else ""
        detail = f": {r.detail[:80]}" if r.detail else ""
        print(f"  #{r.quarantine_id} partition {r.partition} offset {r.offset}:"
              f" {r.outcome}{why}{detail}")
    if by_outcome.get("QUARANTINED"):
        print("records still quarantined stay open; `ofp quarantine show ID` says why",
              file=sys.stderr)
    return EXIT_OK


def _table(rows: Sequence[tuple[str, ...]], *, left: int, text_from: int | None = None
           ) -> str:
    """Columns padded to width: the first `left` and those from `text_from` on are
    text (left-aligned), the others numbers (right-aligned)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [c.ljust(w) if j < left or (text_from is not None and j >= text_from)
                 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""`ofp status [--json]`: what the projector has done, read straight from the database.

Per partition of the active policy's source topic: the exclusive-next
checkpoint, the event-time high mark, how long ago the checkpoint moved, and
the outcome counters; plus the active policy. Ages use the database clock.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import asyncpg

from ofp.config import Settings
from ofp.contracts.timefmt import format_micros
from ofp.policy import PolicyError, load_policy
from ofp.store.db import schema_version

from .database import connect, resolve_dsn
from .errors import EXIT_OK, CliError

OUTCOMES = ("APPLIED", "DUPLICATE", "IGNORED", "QUARANTINED")

_POLICY_SQL = """
SELECT a.policy_id, a.revision, p.content_digest, p.run_config_digest,
       p.content->>'source_topic' AS source_topic,
       (extract(epoch FROM a.activated_at) * 1000000)::bigint AS activated_us
FROM active_policy a JOIN policies p USING (policy_id, revision)
"""
_CHECKPOINTS_SQL = """
SELECT partition, offset_kind, next_offset::text AS next_offset, max_event_us,
       (extract(epoch FROM updated_at) * 1000000)::bigint AS updated_us,
       extract(epoch FROM (now() - updated_at))::float8 AS age_s
FROM checkpoints WHERE stream = $1 ORDER BY partition
"""
_COUNTERS_SQL = """
SELECT partition, outcome, reason, n FROM outcome_counters WHERE stream = $1
ORDER BY partition, outcome, reason
"""


async def collect(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
    """The status document (also the --json output)."""
    if await schema_version(conn) is None:
        raise CliError("the database has no OFP schema yet; run `ofp migrate`")
    row = await conn.fetchrow(_POLICY_SQL)
    policy: dict[str, Any] | None = None
    if row is not None:
        stream = str(row["source_topic"])
        policy = {
            "policy_id": row["policy_id"],
            "revision": row["revision"],
            "content_digest": row["content_digest"],
            "run_config_digest": row["run_config_digest"],
            "activated_at_utc": format_micros(int(row["activated_us"])),
        }
    else:
        # Nothing projected yet: report the topic the configured policy would read.
        try:
            stream = load_policy(settings.features_path).source_topic
        except PolicyError as exc:
            raise CliError(f"no active policy in the database, and {exc}") from None
    counters: dict[int, dict[str, Any]] = {}
    for c in await conn.fetch(_COUNTERS_SQL, stream):
        slot = counters.setdefault(int(c["partition"]), _empty_counts())
        _add(slot, c["outcome"], c["reason"], int(c["n"]))
    partitions = []
    for cp in await conn.fetch(_CHECKPOINTS_SQL, stream):
        p = int(cp["partition"])
        high = cp["max_event_us"]
        partitions.append(
            {
                "partition": p,
                "offset_kind": cp["offset_kind"],
                "next_offset": cp["next_offset"],
                "event_time_high_utc": None if high is None else format_micros(int(high)),
                "updated_at_utc": format_micros(int(cp["updated_us"])),
                "updated_age_s": round(float(cp["age_s"]), 3),
                "outcomes": counters.pop(p, _empty_counts()),
            }
        )
    totals = _empty_counts()
    for part in partitions:
        _merge(totals, part["outcomes"])
    for leftover in counters.values():  # counters of a partition without a checkpoint row
        _merge(totals, leftover)
    highs = [p["event_time_high_utc"] for p in partitions if p["event_time_high_utc"]]
    return {
        "stream": stream,
        "policy": policy,
        "watermark_utc": min(highs) if highs else None,
        "partitions": partitions,
        "totals": totals,
    }


def _empty_counts() -> dict[str, Any]:
    return {**{o.lower(): 0 for o in OUTCOMES}, "by_reason": {}}


def _add(slot: dict[str, Any], outcome: str, reason: str, n: int) -> None:
    key = outcome.lower()
    slot[key] = slot.get(key, 0) + n
    if reason:
        reasons = slot["by_reason"].setdefault(key, {})
        reasons[reason] = reasons.get(reason, 0) + n


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for outcome in OUTCOMES:
        into[outcome.lower()] += other[outcome.lower()]
    for outcome, reasons in other["by_reason"].items():
        mine = into["by_reason"].setdefault(outcome, {})
        for reason, n in reasons.items():
            mine[reason] = mine.get(reason, 0) + n


def render_table(doc: dict[str, Any]) -> str:
    lines = [f"stream     {doc['stream']}"]
    pol = doc["policy"]
    if pol is None:
        lines.append("policy     (none active yet)")
    else:
        lines.append(f"policy     {pol['policy_id']} {pol['revision']}"
                     f"  digest {pol['content_digest'][:16]}…")
    lines.append(f"watermark  {doc['watermark_utc'] or '-'}")
    lines.append("")
    header = ("partition", "next_offset", "event_time_high_utc", "updated_ago",
              "applied", "duplicate", "ignored", "quarantined")
    rows = [header]
    for p in doc["partitions"]:
        o = p["outcomes"]
        rows.append((str(p["partition"]), p["next_offset"], p["event_time_high_utc"] or "-",
                     f"{p['updated_age_s']:.1f}s", str(o["applied"]), str(o["duplicate"]),
                     str(o["ignored"]), str(o["quarantined"])))
    t = doc["totals"]
    rows.append(("total", "", "", "", str(t["applied"]), str(t["duplicate"]),
                 str(t["ignored"]), str(t["quarantined"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        cells = [
            c.ljust(w) if j < 4 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or (i == len(rows) - 2 and i > 0):
            lines.append("  ".join("-" * w for w in widths))
    for outcome, reasons in sorted(t["by_reason"].items()):
        lines.append("")
        lines.append(f"{outcome} by reason")
        width = max(len(r) for r in reasons)
        for reason, n in sorted(reasons.items()):
            lines.append(f"  {reason.ljust(width)}  {n}")
    return "\n".join(lines)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(resolve_dsn(settings))
    try:
        doc = await collect(conn, settings)
    finally:
        await conn.close()
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_table(doc))
    return EXIT_OK

"""`ofp status`: projection status and the health ladder, as a table or JSON.

By default it reads the database directly (one consistent snapshot, ages against the
database clock); with `--address` it asks a feature server's GetStatus instead, which
returns the same document. Per partition: the exclusive-next checkpoint, the
event-time high mark, lag where the bus reports it, how long ago the partition was
last known current, and the outcome counters; plus the active policy, open
quarantine and the health state GREEN / AMBER / RED with its reasons.

Exit status: 0, or with `--fail-on amber|red` 1 when the state is at least that bad
(for scripts and cron checks); 2 when the status cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from ofp.config import Settings
from ofp.health import Thresholds, status_report
from ofp.policy import PolicyError, load_policy
from ofp.store.db import schema_version
from ofp.store.replicas import ReadRouter
from ofp.store.status import read_status

from .client import ClientTLS, RpcFailedError, get_status
from .database import connect, existing_dsn
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .sample_stream import SAMPLE_START

_SEVERITY = {"GREEN": 0, "AMBER": 1, "RED": 2}
# A watermark older than this while the checkpoints are current: historical data.
HISTORICAL_AFTER_MS = 24 * 3600 * 1000


async def collect(settings: Settings, *, stream: str | None = None) -> dict[str, Any]:
    """The status document from the database (the same document GetStatus returns)."""
    conn = await connect(existing_dsn(settings))
    try:
        if await schema_version(conn) is None:
            raise CliError("the database has no OFP schema yet; run `ofp migrate`")
        facts = await read_status(conn, stream=stream, bus_stream=settings.bus_stream)
        if facts.stream is None:
            # Nothing projected yet: report the stream the configured policy would read.
            try:
                topic = load_policy(settings.features_path).source_topic
            except PolicyError as exc:
                raise CliError(f"no active policy in the database, and {exc}") from None
            facts = await read_status(conn, stream=settings.bus_stream(topic))
        replicas = await measure_replicas(conn, settings)
    finally:
        await conn.close()
    doc = status_report(
        facts,
        Thresholds.from_settings(settings),
    )
    if replicas is not None:
        doc["read_replicas"] = replicas
    return doc


async def measure_replicas(primary: Any, settings: Settings) -> list[dict[str, Any]] | None:
    """The configured read replicas, measured once against the primary (as the
    server measures them); None when none is configured."""
    if not settings.database_read_urls:
        return None
    router = await ReadRouter.open(
        primary, settings.database_read_urls, max_lag_s=settings.replica_max_lag_s,
        fallback=settings.replica_fallback, check_interval_s=1.0, pool_max=1)
    try:
        # Twice, a moment apart: the primary writes WAL of its own (checkpoints,
        # autovacuum) between commits, so one look cannot tell a caught-up
        # replica of an idle primary from a lagging one; the second look bounds
        # the lag by the time since the first measurement it has replayed.
        await router.check()
        await asyncio.sleep(0.25)
        await router.check()
        return router.status()
    finally:
        await router.close()


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _lag(p: dict[str, Any]) -> str:
    parts = []
    if p.get("lag_records") is not None:
        parts.append(f"{p['lag_records']} rec")
    if p.get("lag_ms") is not None:
        parts.append(_age(p["lag_ms"]))
    return " / ".join(parts) or "-"


def historical_note(doc: dict[str, Any]) -> str | None:
    """Why a current projection of an old stream is RED: the watermark rule judges
    event time against the wall clock, and the sample stream of `ofp dev` (or a
    replayed history) is dated in the past. Said only when nothing else is wrong."""
    codes = {r["code"] for r in doc["health"]["reasons"]}
    age_ms = doc.get("watermark_age_ms")
    if "WATERMARK_STALE" not in codes or age_ms is None or age_ms < HISTORICAL_AFTER_MS:
        return None
    if codes - {"WATERMARK_STALE", "QUARANTINE_OPEN"}:
        return None
    return (f"the projection is current but the newest event is {_age(age_ms)} old: the"
            f" stream holds historical data (the `ofp dev` sample is dated {SAMPLE_START[:10]})."
            " A live stream whose newest event is this old has stopped; a historical one"
            " reads RED by design")


def render_table(doc: dict[str, Any]) -> str:
    health = doc["health"]
    lines = [f"health     {health['state']}"]
    for reason in health["reasons"]:
        lines.append(f"  {reason['state']:<5}  {reason['code']:<17} {reason['detail']}")
    note = historical_note(doc)
    if note:
        lines.append(f"  note   {note}")
    lines.append(f"stream     {doc.get('stream') or '-'}")
    pol = doc.get("policy")
    if pol is None:
        lines.append("policy     (none active yet)")
    else:
        lines.append(f"policy     {pol['policy_id']} {pol['revision']}"
                     f"  digest {pol['content_digest'][:16]}…"
                     f"  active since {doc.get('policy_activated_at_utc', '-')}")
    watermark = doc.get("watermark_utc")
    lines.append(f"watermark  {watermark or '-'}"
                 + (f"  ({_age(doc.get('watermark_age_ms'))} old)" if watermark else ""))
    lines.append(f"observed   {doc['observed_at_utc']} (database clock)")
    lines.append(f"quarantine {doc['quarantine_open']} open")
    lines.append("")
    header = ("partition", "next_offset", "event_time_high_utc", "lag", "current_ago",
              "applied", "duplicate", "ignored", "quarantined")
    left = 5  # left-aligned text columns; the counters are right-aligned
    rows = [header]
    for p in doc["partitions"]:
        o = p["outcomes"]
        name = str(p["partition"]) + (" (closed)" if p.get("closed") else "")
        rows.append((name, p["next_offset"], p.get("event_time_high_utc") or "-", _lag(p),
                     _age(p.get("checkpoint_age_ms")), str(o["applied"]), str(o["duplicate"]),
                     str(o["ignored"]), str(o["quarantined"])))
    t = doc["totals"]
    rows.append(("total", "", "", "", "", str(t["applied"]), str(t["duplicate"]),
                 str(t["ignored"]), str(t["quarantined"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        cells = [
            c.ljust(w) if j < left else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or (i == len(rows) - 2 and i > 0):
            lines.append("  ".join("-" * w for w in widths))
    replicas = doc.get("read_replicas")
    if replicas:
        lines.append("")
        lines.append("read replicas")
        for r in replicas:
            lag = [f"{r['lag_bytes']} B" if r.get("lag_bytes") is not None else "",
                   _age(r["lag_ms"]) if r.get("lag_ms") is not None else ""]
            lines.append(f"  {r['name']}  {r['state']}"
                         + (f"  lag {' / '.join(x for x in lag if x)}" if any(lag) else "")
                         + (f"  ({r['error']})" if r.get("error") else ""))
    by_outcome: dict[str, list[tuple[str, int]]] = {}
    for entry in t["by_reason"]:
        by_outcome.setdefault(entry["outcome"].lower(), []).append(
            (entry["reason"], entry["count"])
        )
    for outcome, reasons in sorted(by_outcome.items()):
        lines.append("")
        lines.append(f"{outcome} by reason")
        width = max(len(r) for r, _ in reasons)
        for reason, n in reasons:
            lines.append(f"  {reason.ljust(width)}  {n}")
    return "\n".join(lines)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.address:
        tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key)
        try:
            doc = await get_status(args.address, stream=args.stream, timeout_s=args.timeout,
                                   tls=tls)
        except RpcFailedError as exc:
            print(json.dumps(exc.error, indent=2, sort_keys=True))
            return EXIT_FAILED
    else:
        doc = await collect(settings, stream=args.stream)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_table(doc))
    if args.fail_on and _SEVERITY[doc["health"]["state"]] >= _SEVERITY[args.fail_on.upper()]:
        return EXIT_FAILED
    return EXIT_OK

"""`ofp audit --since TIME [--every DURATION] [--json]`: the late-data audit (docs/audit.md).

Every snapshot the snapshot log recorded since TIME is re-derived at its as-of
from the current state (GetFeatures of an in-process server on the same
database, with the recorded keys, groups, pins and revision). Each answer
whose values would now differ is reported with the diff per feature and the
late events responsible: events now in state whose event time is at or
before the snapshot's as-of but whose bus offset is at or after the
snapshot's basis for their partition. A table on a terminal, JSON Lines with
`--json` (one `answer_changed` or `not_rederivable` line per finding, then a
`summary` line). `--every 5m` audits again every 5 minutes what was recorded
since the previous run (Ctrl-C stops it).

Exit codes: 0 no answer would differ; 1 some would (or could not be re-derived);
2 the audit could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.audit import basis_offsets, feature_diffs, snapshot_cells
from ofp.config import Settings
from ofp.contracts.hashing import normalize_json_snapshot
from ofp.contracts.timefmt import format_micros, parse_as_of
from ofp.store.db import create_pool
from ofp.store.rollout import read_rollout
from ofp.store.snapshot_log import SnapshotEntry, entries_since, late_events
from ofp.store.snapshot_s3 import S3SnapshotStore
from ofp_server.server import create_server

from .client import contract_error, to_json
from .database import resolve_dsn
from .errors import EXIT_FAILED, EXIT_OK, CliError

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REDERIVE_TIMEOUT_S = 30.0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("audit", parents=[common],
                       help="re-derive logged snapshots; report answers late events changed")
    p.add_argument("--since", required=True, metavar="TIME|DURATION",
                   help="audit snapshots recorded since this RFC 3339 time, or this long"
                        " ago (30m, 2h, 1d)")
    p.add_argument("--every", metavar="DURATION",
                   help="run again every DURATION (e.g. 5m) over what was recorded since")
    p.add_argument("--runs", type=int, metavar="N",
                   help="with --every: stop after N runs (default: until interrupted)")
    p.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    p.set_defaults(run=run)


def duration_s(text: str) -> int:
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) <= 0:
        raise CliError(f"{text!r} is not a duration like 30s, 5m, 2h or 1d")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def since_us(text: str, now_us: int) -> int:
    if _DURATION.match(text.strip()):
        return now_us - duration_s(text) * 1_000_000
    try:
        return parse_as_of(text)
    except ValueError:
        raise CliError(f"--since {text!r} is neither an RFC 3339 time nor a duration") from None


@asynccontextmanager
async def rederiver(settings: Settings, pool: asyncpg.Pool
                    ) -> AsyncIterator[pb_grpc.FeatureServiceStub]:
    """A server of our own on the same database, answering from its current state
    (recording nothing: re-derived answers are not served ones)."""
    quiet = dataclasses.replace(settings, snapshot_log="off", metrics_port=None,
                                health_port=None, tls_cert_path=None, tls_key_path=None,
                                tls_client_ca_path=None, grpc_reuseport=False)
    server = create_server(quiet, pool, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await server.stop(0)


async def audit_entry(stub: Any, pool: asyncpg.Pool, entry: SnapshotEntry,
                      windows: dict[tuple[str, str, str], int]) -> dict[str, Any] | None:
    """The finding for one recorded snapshot; None when its answer stands."""
    served = json.loads(entry.canonical)
    revision = served["feature_def_policy_rev"]["revision"]
    request = {
        "pins": served["pins"],
        "as_of_time_utc": served["as_of_time_utc"],
        **entry.request,
        "policy_revision": revision,
    }
    head: dict[str, Any] = {
        "snapshot_hash": entry.snapshot_hash,
        "recorded_at_utc": format_micros(entry.recorded_at_us),
        "as_of_time_utc": served["as_of_time_utc"],
        "policy_revision": revision,
        "basis": served["eb_offset_basis"]["offsets"],
    }
    try:
        response = await stub.GetFeatures(
            json_format.ParseDict(request, pb.GetFeaturesRequest()), timeout=REDERIVE_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        err = contract_error(exc)
        return {"type": "not_rederivable", **head, "code": err.get("code"),
                "detail": err.get("detail")}
    now = normalize_json_snapshot(to_json(response)["snapshot"])
    diffs = feature_diffs(served["features"], now["features"])
    if not diffs:
        return None
    groups = [(g["name"], g["version"]) for g in entry.request["feature_groups"]]
    reach = max((windows.get((revision, n, v), 0) for n, v in groups), default=0)
    late = await late_events(
        pool, pins=served["pins"], as_of_us=parse_as_of(served["as_of_time_utc"]),
        since_us=parse_as_of(served["as_of_time_utc"]) - reach if reach else None,
        basis=basis_offsets(served), cells=snapshot_cells(entry.request))
    return {
        "type": "answer_changed", **head,
        "rederived_snapshot_hash": now.get("snapshot_hash"),
        "rederived_basis": now["eb_offset_basis"]["offsets"],
        "diffs": diffs,
        "late_events": [{"event_id": e.event_id, "partition": e.partition,
                         "offset": str(e.offset), "ts_utc": format_micros(e.ts_us)}
                        for e in late],
        "counts": {"features_changed": len(diffs), "late_events": len(late)},
    }


async def _windows(pool: asyncpg.Pool) -> dict[tuple[str, str, str], int]:
    """(revision, group, version) -> the group's longest window, for the revisions
    the server can still answer with."""
    async with pool.acquire() as conn:
        rollout = await read_rollout(conn)
    out: dict[tuple[str, str, str], int] = {}
    if rollout is not None:
        for policy in (rollout.active, rollout.previous, rollout.staged):
            if policy is not None:
                for g in policy.groups:
                    out[(policy.revision, g.name, g.version)] = g.max_window_us
    return out


async def _entries(settings: Settings, pool: asyncpg.Pool, since: int,
                   until: int) -> list[SnapshotEntry]:
    if settings.snapshot_log == "s3":
        assert settings.snapshot_log_s3_bucket is not None
        async with S3SnapshotStore(settings.snapshot_log_s3_bucket,
                                   settings.snapshot_log_s3_prefix,
                                   endpoint_url=settings.snapshot_log_s3_endpoint_url,
                                   region=settings.aws_region) as store:
            found = [e async for e in store.entries_since(since, until)]
        found.sort(key=lambda e: (e.recorded_at_us, e.snapshot_hash))
        return found
    return await entries_since(pool, since, until)


async def audit_window(settings: Settings, pool: asyncpg.Pool, since: int,
                       until: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The findings for snapshots recorded in [since, until) and the run's summary."""
    entries = await _entries(settings, pool, since, until)
    findings: list[dict[str, Any]] = []
    if entries:
        windows = await _windows(pool)
        async with rederiver(settings, pool) as stub:
            for entry in entries:
                finding = await audit_entry(stub, pool, entry, windows)
                if finding is not None:
                    findings.append(finding)
    changed = [f for f in findings if f["type"] == "answer_changed"]
    summary = {
        "type": "summary",
        "since_utc": format_micros(since),
        "until_utc": format_micros(until),
        "snapshots_audited": len(entries),
        "answers_changed": len(changed),
        "not_rederivable": len(findings) - len(changed),
        "features_changed": sum(f["counts"]["features_changed"] for f in changed),
        "late_events": sum(f["counts"]["late_events"] for f in changed),
    }
    return findings, summary


def _cell(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, list) else str(
        value)


def render_table(findings: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for f in findings:
        lines.append(f"snapshot {f['snapshot_hash']}")
        lines.append(f"  as of {f['as_of_time_utc']}, recorded {f['recorded_at_utc']},"
                     f" revision {f['policy_revision']}")
        if f["type"] == "not_rederivable":
            lines.append(f"  cannot re-derive: {f['code']}: {f['detail']}")
            lines.append("")
            continue
        rows = [("KEY", "GROUP", "FEATURE", "SERVED", "NOW")] + [
            (d["key"], d["group"], d["feature"], _cell(d["served"]), _cell(d["now"]))
            for d in f["diffs"]]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        late = f["late_events"]
        lines.append(f"  late events ({len(late)}):")
        rows = [("PARTITION", "OFFSET", "EVENT_ID", "EVENT_TIME")] + [
            (str(e["partition"]), e["offset"], e["event_id"], e["ts_utc"]) for e in late]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        lines.append("")
    lines.append(
        f"audited {summary['snapshots_audited']} snapshots recorded {summary['since_utc']} .."
        f" {summary['until_utc']}: {summary['answers_changed']} answers would now differ"
        f" ({summary['features_changed']} features, {summary['late_events']} late events),"
        f" {summary['not_rederivable']} not re-derivable")
    return "\n".join(lines)


def _emit(findings: list[dict[str, Any]], summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        for doc in (*findings, summary):
            sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_table(findings, summary) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.snapshot_log == "off":
        raise CliError("the snapshot log is off (OFP_SNAPSHOT_LOG=off): nothing to audit")
    every_s = duration_s(args.every) if args.every else None
    if args.runs is not None and (every_s is None or args.runs < 1):
        raise CliError("--runs needs --every and a count >= 1")
    start = since_us(args.since, time.time_ns() // 1000)
    pool = await create_pool(resolve_dsn(settings), min_size=1, max_size=4)
    worst = EXIT_OK
    try:
        runs = 0
        while True:
            until = time.time_ns() // 1000
            findings, summary = await audit_window(settings, pool, start, until)
            _emit(findings, summary, args.json)
            if findings:
                worst = EXIT_FAILED
            runs += 1
            if every_s is None or (args.runs is not None and runs >= args.runs):
                return worst
            start = until
            await asyncio.sleep(every_s)
    finally:
        await pool.close()

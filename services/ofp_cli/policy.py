"""`ofp policy`: roll out a feature-definition revision (docs/features.md, "Rolling out").

    ofp policy stage FILE [--no-backfill] [--timeout S]   record it, backfill its new groups
    ofp policy backfill [--timeout S]                      resume the staged revision's backfill
    ofp policy activate REVISION                           serve it (once caught up)
    ofp policy rollback                                    serve the previous revision again
    ofp policy discard                                     drop the staged revision
    ofp policy status [--json]                             active, previous, staged, progress

The backfill shows a progress bar (rate, ETA where the bus counts records) on a
terminal and structured log lines otherwise; it needs a live projector running,
which starts the new groups on every partition while the backfill replays the
history before that point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import asyncpg
from tqdm import tqdm

from ofp.config import Settings
from ofp.contracts.timefmt import format_micros
from ofp.logs import get_logger
from ofp.policy import load_policy
from ofp.store import rollout
from ofp.store.db import create_pool, migrate
from ofp_projector.backfill import Backfill, BackfillProgress

from .database import resolve_dsn
from .errors import EXIT_OK

_log = get_logger("ofp.cli.policy")
LOG_INTERVAL_S = 2.0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("policy", parents=[common],
                       help="stage, backfill, activate or roll back a policy revision")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("stage", parents=[common],
                         help="record a revision and backfill its new groups from the bus")
    v.add_argument("file", metavar="FILE", help="the policy YAML of the new revision")
    v.add_argument("--no-backfill", action="store_true",
                   help="only record it; run `ofp policy backfill` later")
    v.add_argument("--timeout", type=float, metavar="S",
                   help="give up waiting for the live projector after S seconds")
    v.set_defaults(run=stage)
    v = verbs.add_parser("backfill", parents=[common],
                         help="resume the staged revision's backfill")
    v.add_argument("--timeout", type=float, metavar="S",
                   help="give up waiting for the live projector after S seconds")
    v.set_defaults(run=backfill)
    v = verbs.add_parser("activate", parents=[common],
                         help="serve a revision: the staged one once caught up, or the previous")
    v.add_argument("revision", metavar="REVISION")
    v.set_defaults(run=activate)
    v = verbs.add_parser("rollback", parents=[common], help="serve the previous revision again")
    v.set_defaults(run=rollback)
    v = verbs.add_parser("discard", parents=[common], help="drop the staged revision")
    v.set_defaults(run=discard)
    v = verbs.add_parser("status", parents=[common],
                         help="active, previous and staged revisions, backfill progress")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.set_defaults(run=status)


async def _pool(settings: Settings) -> asyncpg.Pool:
    pool = await create_pool(resolve_dsn(settings), max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


async def stage(args: argparse.Namespace, settings: Settings) -> int:
    policy = load_policy(args.file)
    settings.check_retention(policy)
    pool = await _pool(settings)
    try:
        async with pool.acquire() as conn:
            staged = await rollout.stage_policy(conn, policy, settings.required_platform_run_id)
        what = "resumed" if staged.already else "staged"
        groups = ", ".join(staged.new_groups) or "none (every group is maintained already)"
        print(f"{what} revision {staged.revision}; groups to backfill: {groups}")
        if args.no_backfill:
            return EXIT_OK
        return await _backfill(settings, pool, args.timeout)
    finally:
        await pool.close()


async def backfill(args: argparse.Namespace, settings: Settings) -> int:
    pool = await _pool(settings)
    try:
        return await _backfill(settings, pool, args.timeout)
    finally:
        await pool.close()


async def _backfill(settings: Settings, pool: asyncpg.Pool, timeout_s: float | None) -> int:
    show = _Display()
    try:
        prog = await Backfill(settings, pool, report=show).run(timeout_s=timeout_s)
    finally:
        show.close()
    print(f"revision {prog.revision} has caught up: {prog.events_applied} events applied"
          f" to {len(prog.groups)} group(s); activate it with"
          f" `ofp policy activate {prog.revision}`")
    return EXIT_OK


class _Display:
    """A tqdm bar on a terminal (stderr); otherwise a structured log line every few seconds."""

    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None
        self.tty = sys.stderr.isatty()
        self._next_log = 0.0

    def __call__(self, prog: BackfillProgress) -> None:
        if not self.tty:
            now = time.monotonic()
            if now >= self._next_log or prog.caught_up:
                self._next_log = now + LOG_INTERVAL_S
                _log.warning("backfill_progress", revision=prog.revision,
                             records_read=prog.records_read, events_applied=prog.events_applied,
                             remaining=prog.remaining, partitions_done=prog.partitions_done,
                             partitions=prog.partitions, waiting_for=prog.waiting_for,
                             caught_up=prog.caught_up)
            return
        if self.bar is None:
            self.bar = tqdm(total=None, unit="rec", desc=f"backfill {prog.revision}",
                            file=sys.stderr, dynamic_ncols=True)
        total = None if prog.remaining is None else prog.records_read + prog.remaining
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.n = prog.records_read
        waiting = f" waiting for partitions {prog.waiting_for}" if prog.waiting_for else ""
        self.bar.set_postfix_str(
            f"applied {prog.events_applied}, partitions {prog.partitions_done}/"
            f"{prog.partitions}{waiting}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def activate(args: argparse.Namespace, settings: Settings) -> int:
    pool = await _pool(settings)
    try:
        async with pool.acquire() as conn:
            replaced = await rollout.activate(conn, args.revision)
    finally:
        await pool.close()
    print(f"revision {args.revision} is active (was {replaced});"
          " `ofp policy rollback` returns to it")
    return EXIT_OK


async def rollback(args: argparse.Namespace, settings: Settings) -> int:
    pool = await _pool(settings)
    try:
        async with pool.acquire() as conn:
            frm, to = await rollout.rollback(conn)
    finally:
        await pool.close()
    print(f"revision {to} is active again (was {frm})")
    return EXIT_OK


async def discard(args: argparse.Namespace, settings: Settings) -> int:
    pool = await _pool(settings)
    try:
        async with pool.acquire() as conn:
            dropped = await rollout.discard(conn)
    finally:
        await pool.close()
    print("nothing is staged" if dropped is None else f"revision {dropped} discarded")
    return EXIT_OK


async def status(args: argparse.Namespace, settings: Settings) -> int:
    pool = await _pool(settings)
    try:
        async with pool.acquire() as conn:
            r = await rollout.read_rollout(conn)
            stream = None if r is None else settings.bus_stream(r.active.source_topic)
            plan = [] if stream is None else await rollout.backfill_plan(conn, stream)
    finally:
        await pool.close()
    doc: dict[str, Any] = {"active": None, "previous": None, "staged": None, "epoch": None}
    if r is not None:
        doc.update(
            active=r.active.revision, epoch=r.epoch,
            previous=None if r.previous is None else r.previous.revision)
        if r.staged is not None:
            names = {v: f"{k[0]} {k[1]}" for k, v in r.group_ids.items()}
            doc["staged"] = {
                "revision": r.staged.revision,
                "caught_up": r.staged_caught_up,
                "groups_to_backfill": sorted(names[g] for g in r.pending),
                "partitions": [] if r.staged_caught_up else [
                    {"partition": p.partition,
                     "live_from": None if p.live_from is None else str(p.live_from),
                     "reached": str(p.reached), "done": p.done,
                     "events_applied": p.events_applied,
                     "history_from": None if p.first_event_us is None
                     else format_micros(p.first_event_us)}
                    for p in plan],
            }
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"active:   {doc['active']} (epoch {doc['epoch']})")
    print(f"previous: {doc['previous'] or '-'}")
    staged = doc["staged"]
    if staged is None:
        print("staged:   -")
        return EXIT_OK
    state = "caught up" if staged["caught_up"] else "backfilling"
    print(f"staged:   {staged['revision']} ({state})")
    if staged["groups_to_backfill"]:
        print(f"  groups to backfill: {', '.join(staged['groups_to_backfill'])}")
    for p in staged["partitions"]:
        where = ("waiting for the live projector" if p["live_from"] is None
                 else f"{p['reached']} / {p['live_from']}" + (" done" if p["done"] else ""))
        print(f"  partition {p['partition']}: {where}, {p['events_applied']} events")
    return EXIT_OK

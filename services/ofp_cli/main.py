"""`ofp`: the developer / operator CLI (docs/contract.md 5).

    ofp migrate [--wait S]          apply schema migrations (and the roles' grants)
    ofp migrate --print-grants      SQL creating the migrator / projector / server roles
    ofp dev                         embedded database + sample stream + projector + server
    ofp status [--json] [--address] health ladder, checkpoints, lag, counters, active policy
    ofp get-features ...            ask the feature server; prints the JSON answer
    ofp verify [--replay] FILE|-    recompute a saved answer's snapshot_hash (or replay it)
    ofp replay [--target-dsn DSN] [--keep]
                                    rebuild the state from the bus into a fresh database
    ofp quarantine list|show|replay quarantined records by reason; replay them after a fix
    ofp policy stage|backfill|activate|rollback|discard|status
                                    roll out a policy revision (backfill, then switch)
    ofp snapshot get HASH           a served snapshot from the snapshot log, hash recomputed
    ofp audit --since T [--every D] re-derive logged snapshots; report late-data changes
    ofp export --spine F --out F    features of every (key, as-of) row of a training spine

Exit codes: 0 success / match; 1 a negative answer (mismatch, RPC error, `status
--fail-on` state reached); 2 the command could not run (one line on stderr);
3 `verify --replay` uncheckable.
Logs of the embedded workloads go to stderr as JSON, so stdout holds only answers.
Every command takes `--json` and has examples in its `--help` (usage.py); `ofp
--version` names the installed version.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
import uvloop

from ofp.config import Settings, load_settings
from ofp.logs import configure

from . import (
    audit,
    dev,
    export,
    get_features,
    migrate,
    policy,
    quarantine,
    replay,
    snapshot,
    status,
    usage,
    verify,
)
from .errors import EXIT_ERROR, describe

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="YAML settings file (environment variables override it)")
    common.add_argument("--log-level", default="WARNING",
                        help="level of the JSON logs on stderr (default WARNING)")
    parser = argparse.ArgumentParser(
        prog="ofp", description="Online Feature Plane: developer and operator commands.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", parents=[common], help="apply schema migrations")
    migrate.add_arguments(p)
    p.set_defaults(run=migrate.run)

    p = sub.add_parser("dev", parents=[common],
                       help="embedded database + sample stream + projector + server")
    p.add_argument("--events", type=_positive, default=500,
                   help="sample events to write when the topic is empty (default 500)")
    p.add_argument("--partitions", type=_positive, default=2,
                   help="partitions of the sample stream (default 2)")
    p.add_argument("--no-follow", action="store_true",
                   help="exit after printing the sample answer (for tests and CI)")
    p.set_defaults(run=dev.run)

    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--tls-ca", metavar="PEM",
                     help="CA certificate that signed the server's (enables TLS)")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    tls.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)")

    p = sub.add_parser("status", parents=[common, tls],
                       help="health ladder and projection status (database or GetStatus)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="ask this feature server's GetStatus instead of the database")
    p.add_argument("--stream", metavar="NAME",
                   help="stream to report (default: the active policy's source topic)")
    p.add_argument("--fail-on", choices=("amber", "red"),
                   help="exit 1 when the health state is at least this bad")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="GetStatus deadline in seconds (default 5)")
    p.set_defaults(run=status.run)

    p = sub.add_parser("get-features", parents=[common, tls], help="call GetFeatures")
    p.add_argument("--pins-json", required=True, metavar="JSON|@FILE",
                   help="the six ContextPins as JSON, or @file, or @- for stdin")
    p.add_argument("--as-of", required=True, metavar="TS",
                   help="as-of time, RFC 3339 UTC with 0 to 9 fractional digits"
                        " (e.g. 2026-02-06T12:00:00Z)")
    p.add_argument("--key", action="append", required=True, metavar="TYPE:ID",
                   help="feature key, e.g. flow_id:42 (repeatable)")
    p.add_argument("--group", action="append", required=True, metavar="NAME:VERSION",
                   help="feature group, e.g. core_features:v1 (repeatable)")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="server address (default: settings grpc_address)")
    p.add_argument("--request-id", metavar="ID")
    p.add_argument("--graph-resolution-mode", choices=("none", "resolve_if_needed",
                                                       "require_ieg"))
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="deadline in seconds (default 5)")
    p.set_defaults(run=get_features.run)

    p = sub.add_parser("verify", parents=[common],
                       help="recompute the snapshot_hash of a saved GetFeatures answer")
    p.add_argument("file", metavar="FILE|-", help="the saved JSON response, - for stdin")
    p.add_argument("--replay", action="store_true",
                   help="also rebuild the state up to the basis offsets and ask again")
    p.add_argument("--json", action="store_true",
                   help="print the verdict as JSON (result, claimed, recomputed, why)")
    p.set_defaults(run=verify.run)

    p = sub.add_parser("replay", parents=[common],
                       help="rebuild the state from the bus into a fresh database")
    replay.add_arguments(p)

    policy.add_parser(sub, common)
    quarantine.add_parser(sub, common)
    snapshot.add_parser(sub, common, tls)
    audit.add_parser(sub, common)
    export.add_parser(sub, common)
    usage.finish(parser)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _configure_logging(level: str) -> None:
    configure(level.upper())
    # stdout holds only answers (`ofp export --json`, `ofp status --json`, ...):
    # OFP's own structlog lines (progress of `ofp export` and `ofp policy
    # backfill`) go to stderr with the stdlib ones.
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=sys.stderr))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    secrets: tuple[str | None, ...] = (getattr(args, "target_dsn", None),)
    try:
        _configure_logging(args.log_level)
        settings = load_settings(args.config)
        secrets += (settings.database_url,)
        command: Command = args.run
        if args.json and not getattr(args, "json_aware", False):
            return _as_json(args, command, settings)
        return uvloop.run(command(args, settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback (and never a DSN)
        print(f"ofp {args.command}: {describe(exc, secrets=secrets)}", file=sys.stderr)
        return EXIT_ERROR


def _as_json(args: argparse.Namespace, command: Command, settings: Settings) -> int:
    """A command that prints text, its output captured and printed as one JSON document."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = uvloop.run(command(args, settings))
    name = " ".join(x for x in (args.command, getattr(args, "verb", None)) if x)
    print(json.dumps({"command": name, "exit_code": code,
                      "output": captured.getvalue().splitlines()}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())

"""`ofp get-features`: a friendly GetFeatures client that prints the JSON answer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ofp.config import Settings

from .client import ClientTLS, RpcFailedError, get_features, parse_group, parse_key
from .errors import EXIT_FAILED, EXIT_OK, CliError


def read_json_arg(text: str, *, what: str) -> Any:
    """Inline JSON, `@file`, or `@-` for stdin."""
    source = what
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{what}: cannot read {source} ({exc.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what}: not valid JSON ({exc})") from None


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    pins = read_json_arg(args.pins_json, what="--pins-json")
    if not isinstance(pins, dict):
        raise CliError("--pins-json must be a JSON object with the six ContextPins")
    try:
        keys = [parse_key(k) for k in args.key]
        groups = [parse_group(g) for g in args.group]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    request: dict[str, Any] = {
        "pins": pins,
        "as_of_time_utc": args.as_of,
        "feature_keys": keys,
        "feature_groups": groups,
    }
    if args.graph_resolution_mode:
        request["graph_resolution_mode"] = args.graph_resolution_mode
    if args.request_id:
        request["request_id"] = args.request_id
    return request


async def run(args: argparse.Namespace, settings: Settings) -> int:
    request = build_request(args)
    address = args.address or settings.grpc_address
    try:
        doc = await get_features(address, request, timeout_s=args.timeout,
                                 tls=ClientTLS(args.tls_ca, args.tls_cert, args.tls_key))
    except RpcFailedError as exc:
        print(json.dumps(exc.error, indent=2, sort_keys=True))
        return EXIT_FAILED
    print(json.dumps(doc, indent=2))
    return EXIT_OK

"""`ofp snapshot get HASH`: fetch a served snapshot from the snapshot log and verify it.

Calls GetSnapshot, recomputes the SHA-256 of the returned canonical bytes and
the snapshot_hash of the returned snapshot's fields, and prints the answer as
JSON. Any disagreement with the asked hash is a failure said loudly on stderr
(exit 1): what was stored is not what was served.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.config import Settings
from ofp.contracts.canonical import sha256_hex
from ofp.contracts.hashing import verify_response

from .client import ClientTLS, RpcFailedError, contract_error, open_channel, to_json
from .errors import EXIT_FAILED, EXIT_OK, CliError


def add_parser(sub: Any, common: argparse.ArgumentParser, tls: argparse.ArgumentParser) -> None:
    p = sub.add_parser("snapshot", parents=[common],
                       help="fetch a served snapshot from the snapshot log")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("get", parents=[common, tls],
                         help="GetSnapshot by hash; recomputes the hash on the way")
    v.add_argument("snapshot_hash", metavar="HASH", help="the snapshot_hash (hex64)")
    v.add_argument("--address", metavar="HOST:PORT",
                   help="server address (default: settings grpc_address)")
    v.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="deadline in seconds (default 5)")
    v.set_defaults(run=get)


async def get_snapshot(address: str, snapshot_hash: str, *, timeout_s: float,
                       tls: ClientTLS | None = None) -> pb.GetSnapshotResponse:
    async with open_channel(address, tls) as channel:
        stub: Any = pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            response: pb.GetSnapshotResponse = await stub.GetSnapshot(
                pb.GetSnapshotRequest(snapshot_hash=snapshot_hash), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise RpcFailedError(contract_error(exc)) from None
    return response


def check(asked: str, response: pb.GetSnapshotResponse) -> list[str]:
    """What disagrees with the asked hash (empty: the snapshot is the one served)."""
    problems = []
    from_bytes = sha256_hex(response.canonical_json.encode("ascii"))
    if from_bytes != asked:
        problems.append(f"sha256 of the stored canonical bytes is {from_bytes}")
    if response.snapshot.snapshot_hash != asked:
        problems.append(f"the stored snapshot claims {response.snapshot.snapshot_hash}")
    _, _, from_fields = verify_response({"snapshot": to_json(response)["snapshot"]})
    if from_fields != asked:
        problems.append(f"the stored snapshot's fields hash to {from_fields}")
    return problems


async def get(args: argparse.Namespace, settings: Settings) -> int:
    digest = args.snapshot_hash.strip().lower()
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise CliError(f"{args.snapshot_hash!r} is not a snapshot_hash (64 hex digits)")
    address = args.address or settings.grpc_address
    try:
        response = await get_snapshot(address, digest, timeout_s=args.timeout,
                                      tls=ClientTLS(args.tls_ca, args.tls_cert, args.tls_key))
    except RpcFailedError as exc:
        print(json.dumps(exc.error, indent=2, sort_keys=True))
        return EXIT_FAILED
    problems = check(digest, response)
    print(json.dumps(to_json(response), indent=2))
    if problems:
        print(f"ofp snapshot get: MISMATCH for {digest}: " + "; ".join(problems),
              file=sys.stderr)
        return EXIT_FAILED
    print(f"match {digest}", file=sys.stderr)
    return EXIT_OK

"""`ofp verify FILE|-` and `ofp verify --replay FILE|-`: check a saved GetFeatures answer.

Without `--replay`: recompute `snapshot_hash` from the response itself.

With `--replay`: rebuild the state from the configured file-bus into a
temporary database, replaying exactly the records below the response's basis
offsets (the first N lines of each partition), ask an in-process server the
same question, and compare hashes. The claim is `uncheckable` when this bus
cannot reproduce that basis, or the recorded policy is not the configured one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ofp.config import Settings
from ofp.contracts.hashing import verify_response
from ofp.policy import Policy, load_policy
from ofp.store.db import create_pool
from ofp_projector import file_bus
from ofp_server.server import create_server

from .client import RpcFailedError, get_features, parse_key
from .database import resolve_dsn, temporary_database
from .errors import EXIT_FAILED, EXIT_OK, EXIT_UNCHECKABLE, CliError
from .progress import Progress
from .rebuild import rebuild

REPLAY_TIMEOUT_S = 30.0


class UncheckableError(Exception):
    """The claim cannot be checked against this bus and policy; the message says why."""


def load_response(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source} ({exc.strerror})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CliError(f"{source}: not a GetFeatures JSON response")
    snapshot = doc.get("snapshot", doc)
    if not isinstance(snapshot, dict) or "snapshot_hash" not in snapshot:
        raise CliError(f"{source}: no snapshot with a snapshot_hash (an error response?)")
    return doc


def replay_request(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The request that produced `snapshot`: same pins, as-of, keys and groups."""
    freshness = snapshot.get("freshness") or {}
    keys = sorted(set(snapshot.get("features") or {}) | set(
        freshness.get("missing_feature_keys") or []))
    if not keys:
        raise CliError("the snapshot names no feature keys")
    return {
        "pins": snapshot["pins"],
        "as_of_time_utc": snapshot["as_of_time_utc"],
        "feature_keys": [parse_key(k) for k in keys],
        "feature_groups": [
            {"name": g["name"], "version": g["version"]} for g in snapshot["feature_groups"]
        ],
    }


def check_replayable(snapshot: dict[str, Any], settings: Settings, policy: Policy) -> None:
    """Raise UncheckableError unless the configured bus and policy can reproduce `snapshot`."""
    rev = snapshot.get("feature_def_policy_rev") or {}
    configured = (policy.policy_id, policy.revision, policy.content_digest)
    recorded = (rev.get("policy_id"), rev.get("revision"), rev.get("content_digest"))
    if recorded != configured:
        raise UncheckableError(
            f"the response was produced by policy {recorded[0]} {recorded[1]} "
            f"(digest {recorded[2]}), the configured policy is {configured[0]} "
            f"{configured[1]} (digest {configured[2]})"
        )
    run_digest = policy.run_config_digest(settings.required_platform_run_id)
    if snapshot.get("run_config_digest") != run_digest:
        raise UncheckableError(
            "run_config_digest differs from the configured run (policy or run filter)"
        )
    basis = snapshot.get("eb_offset_basis") or {}
    if settings.bus_kind != "file" or basis.get("offset_kind") != file_bus.OFFSET_KIND:
        raise UncheckableError(
            f"basis offset kind {basis.get('offset_kind')!r} cannot be replayed from the "
            f"configured {settings.bus_kind} bus"
        )
    if basis.get("stream") != settings.bus_stream(policy.source_topic):
        raise UncheckableError(
            f"basis stream {basis.get('stream')!r} is not the configured stream "
            f"{settings.bus_stream(policy.source_topic)!r}"
        )
    if not basis.get("offsets"):
        raise UncheckableError("the basis has no offsets")


def basis_offsets(snapshot: dict[str, Any]) -> dict[int, int]:
    try:
        return {
            int(o["partition"]): int(o["offset"])
            for o in snapshot["eb_offset_basis"]["offsets"]
        }
    except (KeyError, TypeError, ValueError):
        raise UncheckableError("the basis offsets are not file_line offsets") from None


def copy_prefix(settings: Settings, stream: str, offsets: dict[int, int], dest: Path) -> None:
    """Copy the first `offsets[p]` complete lines of every basis partition under `dest`."""
    for partition, n in sorted(offsets.items()):
        src = file_bus.partition_path(settings.file_bus_root, stream, partition)
        out = file_bus.partition_path(dest, stream, partition)
        out.parent.mkdir(parents=True, exist_ok=True)
        copied = 0
        try:
            with src.open("rb") as f, out.open("wb") as w:
                while copied < n:
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break  # end of file, or an incomplete (unwritten) tail
                    w.write(line)
                    copied += 1
        except FileNotFoundError:
            raise UncheckableError(f"partition file {src} does not exist") from None
        if copied < n:
            raise UncheckableError(
                f"partition {partition} has {copied} complete lines, the basis needs {n}"
            )


async def replay_snapshot(
    snapshot: dict[str, Any], settings: Settings, policy: Policy
) -> dict[str, Any]:
    """The response an in-process server gives after replaying exactly the basis."""
    check_replayable(snapshot, settings, policy)
    offsets = basis_offsets(snapshot)
    request = replay_request(snapshot)
    with tempfile.TemporaryDirectory(prefix="ofp-verify-") as tmp:
        copy_prefix(settings, policy.source_topic, offsets, Path(tmp))
        async with temporary_database(resolve_dsn(settings), "ofp_verify") as dsn:
            progress = Progress("verify --replay", total=sum(offsets.values()))
            try:
                await rebuild(settings, policy, dsn, tmp,
                              progress=lambda n, _elapsed: progress.set(n))
            finally:
                progress.close()
            pool = await create_pool(dsn, max_size=2)
            try:
                server = create_server(settings, pool, "127.0.0.1:0")
                await server.start()
                try:
                    return await get_features(
                        f"127.0.0.1:{server.port}", request, timeout_s=REPLAY_TIMEOUT_S
                    )
                finally:
                    await server.stop(0)
            finally:
                await pool.close()


async def run(args: argparse.Namespace, settings: Settings) -> int:
    result = await check(args.file, settings, replay=args.replay)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["result"] == "match":
        print(f"match {result['claimed']}")
    elif result["result"] == "uncheckable":
        print(f"uncheckable {result['reason']}")
    elif "replay_error" in result:
        print(f"mismatch claimed={result['claimed']} replay answered"
              f" {json.dumps(result['replay_error'])}")
    else:
        print(f"mismatch claimed={result['claimed']} recomputed={result['recomputed']}")
        if result.get("first_difference"):
            print(f"  first difference: {result['first_difference']}", file=sys.stderr)
    return {"match": EXIT_OK, "uncheckable": EXIT_UNCHECKABLE}.get(result["result"],
                                                                    EXIT_FAILED)


async def check(source: str, settings: Settings, *, replay: bool) -> dict[str, Any]:
    """The verdict as a document: `result` match / mismatch / uncheckable, the claimed
    and recomputed hashes, and why (`reason`, `replay_error`, `first_difference`)."""
    doc = load_response(source)
    ok, claimed, recomputed = verify_response(doc)
    result: dict[str, Any] = {"result": "match" if ok else "mismatch", "claimed": claimed,
                              "recomputed": recomputed, "replayed": False}
    if not ok or not replay:
        return result
    snapshot = doc.get("snapshot", doc)
    policy = load_policy(settings.features_path)
    result["replayed"] = True
    try:
        replayed = await replay_snapshot(snapshot, settings, policy)
    except UncheckableError as exc:
        return {**result, "result": "uncheckable", "recomputed": None, "reason": str(exc)}
    except RpcFailedError as exc:
        return {**result, "result": "mismatch", "recomputed": None, "replay_error": exc.error}
    replayed_hash = str(replayed["snapshot"]["snapshot_hash"])
    result["recomputed"] = replayed_hash
    if replayed_hash != claimed:
        result["result"] = "mismatch"
        result["first_difference"] = _first_difference(snapshot, replayed["snapshot"])
    return result


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    for name in ("eb_offset_basis", "features", "freshness", "run_config_digest",
                 "feature_def_policy_rev"):
        if a.get(name) != b.get(name):
            return name
    return None

"""`basis_digest` and `snapshot_hash` (contract 4.4), and recomputing them from a JSON response.

Anyone can recompute the hash: take the snapshot as returned, keep exactly the
hashed fields, read 64-bit integers rendered as strings back as numbers, and
hash the canonical JSON.
"""

from __future__ import annotations

import functools
from typing import Any

from ofp.contracts.canonical import canonical_json, digest, sha256_hex

HASHED_FIELDS: tuple[str, ...] = (
    "pins",
    "as_of_time_utc",
    "feature_groups",
    "feature_def_policy_rev",
    "eb_offset_basis",
    "graph_version",
    "run_config_digest",
    "features",
    "freshness",
)


def basis_digest(stream: str, offset_kind: str, offsets: list[dict[str, Any]]) -> str:
    return digest({"stream": stream, "offset_kind": offset_kind, "offsets": offsets})


@functools.lru_cache(maxsize=256)
def basis_digest_of(stream: str, offset_kind: str,
                    offsets: tuple[tuple[int, str], ...]) -> str:
    """`basis_digest` of (partition, offset) pairs. Every answer between two
    projector commits has the same basis: remembered, not hashed again per request."""
    return basis_digest(stream, offset_kind,
                        [{"partition": p, "offset": o} for p, o in offsets])


def snapshot_hash(snapshot: dict[str, Any], *, floats_checked: bool = False) -> str:
    """Hash of the hashed fields of a snapshot in its JSON form (graph_version null when unused).

    `floats_checked`: the caller built the snapshot from integers and strings only.
    """
    return sha256_hex(hashed_bytes(snapshot, floats_checked=floats_checked))


def hashed_bytes(snapshot: dict[str, Any], *, floats_checked: bool = False) -> bytes:
    """The bytes `snapshot_hash` is the SHA-256 of: the canonical JSON of the hashed fields."""
    body = {name: snapshot.get(name) for name in HASHED_FIELDS}
    return canonical_json(body, floats_checked=floats_checked)


def normalize_json_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Undo the proto3 JSON rendering so a client's copy hashes like the server's.

    - `pins.seed` (uint64) is rendered as a string: read it back as a number;
    - `google.protobuf.Struct` numbers may come back as `3.0`: counts are integers;
    - an unset message field may be absent or `null`: both mean null;
    - empty repeated fields may be left out: they are empty lists.
    """
    out = dict(snapshot)
    pins = dict(out.get("pins") or {})
    if isinstance(pins.get("seed"), str) and pins["seed"].isdigit():
        pins["seed"] = int(pins["seed"])
    out["pins"] = pins
    out["features"] = _ints(out.get("features") or {})
    out["graph_version"] = out.get("graph_version") or None
    freshness = dict(out.get("freshness") or {})
    for name in ("flags", "stale_groups", "missing_groups", "missing_feature_keys"):
        freshness.setdefault(name, [])  # proto3 JSON may leave empty lists out
    out["freshness"] = freshness
    basis = out.get("eb_offset_basis")
    if isinstance(basis, dict):
        basis = {k: v for k, v in basis.items() if v is not None and v != ""}
        out["eb_offset_basis"] = basis
    return out


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def verify_response(doc: dict[str, Any]) -> tuple[bool, str, str]:
    """(matches, claimed snapshot_hash, recomputed hash) for a GetFeatures JSON response."""
    snapshot = doc.get("snapshot", doc)
    claimed = str(snapshot.get("snapshot_hash", ""))
    recomputed = snapshot_hash(normalize_json_snapshot(snapshot))
    return claimed == recomputed, claimed, recomputed

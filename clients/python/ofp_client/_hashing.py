"""Recompute a snapshot's snapshot_hash (docs/contract.md 4.4, docs/clients.md).

The server hashes the snapshot in its JSON form: SHA-256 hex of the canonical JSON
(keys sorted, separators `,` `:`, ASCII only with \\uXXXX escapes, no floats,
explicit null) of exactly HASHED_FIELDS. The gRPC answer carries the same values
as protobuf; `snapshot_document` turns them back into that JSON form:
seed is an integer, Struct numbers (doubles on the wire) are integers again, an
unset graph_version is null, unset optional fields are left out, enums are their
names, empty lists stay empty lists.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from ofp_client._gen import feature_service_pb2 as pb

HASHED_FIELDS = (
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


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes; the standard library encoder defines them on the server too."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def snapshot_document(snapshot: pb.FeatureSnapshot) -> dict[str, Any]:
    """The snapshot's hashed fields in the JSON form the server hashed."""
    return {
        "pins": _message(snapshot.pins),
        "as_of_time_utc": snapshot.as_of_time_utc,
        "feature_groups": [_message(g) for g in snapshot.feature_groups],
        "feature_def_policy_rev": _message(snapshot.feature_def_policy_rev),
        "eb_offset_basis": _message(snapshot.eb_offset_basis),
        "graph_version": (
            _message(snapshot.graph_version) if snapshot.HasField("graph_version") else None
        ),
        "run_config_digest": snapshot.run_config_digest,
        "features": _struct(snapshot.features),
        "freshness": _message(snapshot.freshness),
    }


def snapshot_hash(snapshot: pb.FeatureSnapshot) -> str:
    return hashlib.sha256(canonical_json(snapshot_document(snapshot))).hexdigest()


def _message(msg: Message) -> dict[str, Any]:
    """Set fields by name; repeated fields always (possibly empty), as the contract says."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if _is_repeated(field):
            out[field.name] = [_scalar(field, v) for v in value]
        elif msg.HasField(field.name):
            out[field.name] = _scalar(field, value)
    return out


def _is_repeated(field: Any) -> bool:
    # FieldDescriptor.label is deprecated in newest protobuf; is_repeated is not in 3.20.
    repeated = getattr(field, "is_repeated", None)
    if isinstance(repeated, bool):
        return repeated
    return bool(field.label == field.LABEL_REPEATED)


def _scalar(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value  # newer than this client
    if field.type == field.TYPE_MESSAGE:
        return _message(value)
    return value


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {k: _value(v) for k, v in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        # Counts travel as doubles (exact up to 2^53); the server hashed integers.
        return int(number) if number.is_integer() else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None

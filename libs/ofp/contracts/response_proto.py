"""Snapshot (contract JSON form) -> GetFeaturesResponse, field by field.

The generic `json_format.ParseDict` walks descriptors for every field of every
response; the shape here is fixed, so the read path builds the message
directly. `tests/unit/test_response_proto.py` proves both give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2

from ofp.api.v1 import feature_service_pb2 as pb

if TYPE_CHECKING:
    from ofp.snapshot import TypedCell

_STATUS = {name: number for name, number in pb.ValueStatus.items()}


def response_proto(
    doc: dict[str, Any], typed: Sequence[TypedCell] = ()
) -> pb.GetFeaturesResponse:
    """`{status, snapshot, served_at_utc, request_id?}` (and the typed values) -> proto."""
    out = pb.GetFeaturesResponse(status=doc["status"], served_at_utc=doc["served_at_utc"])
    if doc.get("request_id") is not None:
        out.request_id = doc["request_id"]
    snap = doc["snapshot"]
    s = out.snapshot
    s.snapshot_hash = snap["snapshot_hash"]
    _pins(s.pins, snap["pins"])
    s.as_of_time_utc = snap["as_of_time_utc"]
    s.created_at_utc = snap["created_at_utc"]
    for g in snap["feature_groups"]:
        s.feature_groups.add(name=g["name"], version=g["version"])
    rev = snap["feature_def_policy_rev"]
    s.feature_def_policy_rev.policy_id = rev["policy_id"]
    s.feature_def_policy_rev.revision = rev["revision"]
    s.feature_def_policy_rev.content_digest = rev["content_digest"]
    s.run_config_digest = snap["run_config_digest"]
    basis = snap["eb_offset_basis"]
    b = s.eb_offset_basis
    b.stream = basis["stream"]
    b.offset_kind = basis["offset_kind"]
    for o in basis["offsets"]:
        b.offsets.add(partition=o["partition"], offset=o["offset"])
    b.basis_digest = basis["basis_digest"]
    for name in ("window_start_utc", "window_end_utc"):
        if basis.get(name) is not None:
            setattr(b, name, basis[name])
    graph = snap.get("graph_version")
    if graph is not None:
        for name, value in graph.items():
            setattr(s.graph_version, name, value)
    features = s.features
    features.Clear()
    for label, groups in snap["features"].items():
        entry = features.fields[label].struct_value
        for group, values in groups.items():
            gv = entry.fields[group].struct_value
            for feature, value in values.items():
                v = gv.fields[feature]
                if isinstance(value, str):
                    v.string_value = value
                elif value is None:  # a v1 kind with no event in its window
                    v.null_value = struct_pb2.NULL_VALUE
                elif isinstance(value, list):  # last_n: strings, newest first
                    v.list_value.values.extend(struct_pb2.Value(string_value=x) for x in value)
                else:
                    v.number_value = value
    if not snap["features"]:
        # An empty map must still be present: `features: {}` is part of the contract.
        s.features.SetInParent()
    fr = snap["freshness"]
    f = s.freshness
    f.state = fr["state"]
    f.flags.extend(fr["flags"])
    f.stale_groups.extend(fr["stale_groups"])
    f.missing_groups.extend(fr["missing_groups"])
    f.missing_feature_keys.extend(fr["missing_feature_keys"])
    for name in ("snapshot_ref", "notes"):
        if snap.get(name) is not None:
            setattr(s, name, snap[name])
    for cell in typed:
        _typed_cell(out.typed_features.add(), cell)
    return out


def _typed_cell(c: pb.TypedCell, cell: TypedCell) -> None:
    c.key_type = cell.key_type
    c.key_id = cell.key_id
    c.group_name = cell.group
    c.group_version = cell.version
    c.present = cell.last_us is not None
    if cell.last_us is not None:
        seconds, micros = divmod(cell.last_us, 1_000_000)
        c.last_event_time.seconds = seconds
        c.last_event_time.nanos = micros * 1000
    for tv in cell.values:
        v = c.features.add(name=tv.name, status=_STATUS[tv.status])
        value = tv.value
        if value is None:
            v.null_value = struct_pb2.NULL_VALUE
        elif tv.kind == "int":
            v.int64_value = value
        elif tv.kind == "decimal":
            v.decimal_value = value
            if tv.scale is not None:
                v.scale = tv.scale
        elif tv.kind == "text":
            v.string_value = value
        elif tv.kind == "list":
            v.list_value.values.extend(value)
        else:  # "time": µs since the epoch
            seconds, micros = divmod(value, 1_000_000)
            v.timestamp_value.seconds = seconds
            v.timestamp_value.nanos = micros * 1000


def _pins(msg: pb.ContextPins, pins: dict[str, Any]) -> None:
    msg.platform_run_id = pins["platform_run_id"]
    msg.scenario_run_id = pins["scenario_run_id"]
    msg.scenario_id = pins["scenario_id"]
    msg.manifest_fingerprint = pins["manifest_fingerprint"]
    msg.parameter_hash = pins["parameter_hash"]
    msg.seed = pins["seed"]
    if pins.get("run_id") is not None:
        msg.run_id = pins["run_id"]

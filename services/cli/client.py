"""A thin GetFeatures client: JSON request in, JSON response (or contract error) out.

Transport failures become the contract error the server would have sent: the
rich `google.rpc.Status` detail when there is one, otherwise a synthesized
error from the gRPC status (UNAVAILABLE when the server cannot be reached).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class RpcFailedError(Exception):
    """GetFeatures answered with an error; `error` is the contract error document."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        super().__init__(f"{error.get('code')}: {error.get('detail')}")


def to_json(message: Any) -> dict[str, Any]:
    """Proto3 JSON as grpcurl shows it: snake_case names, empty lists printed."""
    text = json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    doc: dict[str, Any] = json.loads(text)
    snapshot = doc.get("snapshot")
    if isinstance(snapshot, dict) and isinstance(snapshot.get("features"), dict):
        snapshot["features"] = _integral_numbers(snapshot["features"])
    return doc


def _integral_numbers(value: Any) -> Any:
    """`google.protobuf.Struct` carries doubles, and Python renders a count as `3.0`;
    show it as `3`, as grpcurl does (the hash reads both the same)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_numbers(v) for v in value]
    return value


async def get_features(
    address: str, request: dict[str, Any], *, timeout_s: float
) -> dict[str, Any]:
    """Call GetFeatures once; the response as JSON, or RpcFailedError with the contract error."""
    try:
        message = json_format.ParseDict(request, pb.GetFeaturesRequest())
    except json_format.ParseError as exc:
        raise RpcFailedError(
            {"status": "ERROR", "code": "INVALID_REQUEST", "retryable": False,
             "detail": f"request does not fit the GetFeatures message: {exc}"}
        ) from None
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.GetFeatures(message, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise RpcFailedError(contract_error(exc)) from None
    return to_json(response)


def contract_error(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    code = exc.code()
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            err = pb.ErrorResponse()
            if detail.Is(err.DESCRIPTOR) and detail.Unpack(err):
                return {**to_json(err), "grpc_code": code.name}
    # No contract detail: the server was not reached, or something between failed.
    return {
        "status": "ERROR",
        "code": "UNAVAILABLE" if code in _RETRYABLE_GRPC else code.name,
        "retryable": code in _RETRYABLE_GRPC,
        "detail": exc.details() or code.name,
        "grpc_code": code.name,
    }


def parse_key(text: str) -> dict[str, str]:
    """`flow_id:42` -> {key_type: flow_id, key_id: 42} (the id may itself hold colons)."""
    key_type, sep, key_id = text.partition(":")
    if not sep or not key_type or not key_id:
        raise ValueError(f"feature key {text!r} is not <key_type>:<key_id>")
    return {"key_type": key_type, "key_id": key_id}


def parse_group(text: str) -> dict[str, str]:
    """`core_features:v1` -> {name: core_features, version: v1}."""
    name, sep, version = text.rpartition(":")
    if not sep or not name or not version:
        raise ValueError(f"feature group {text!r} is not <name>:<version>")
    return {"name": name, "version": version}

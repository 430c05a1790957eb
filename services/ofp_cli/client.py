"""A thin GetFeatures client: JSON request in, JSON response (or contract error) out.

Transport failures become the contract error the server would have sent: the
rich `google.rpc.Status` detail when there is one, otherwise a synthesized
error from the gRPC status (UNAVAILABLE when the server cannot be reached).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import json_format
from grpc_status import rpc_status

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc

from .errors import CliError

_RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class RpcFailedError(Exception):
    """GetFeatures answered with an error; `error` is the contract error document."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        super().__init__(f"{error.get('code')}: {error.get('detail')}")


@dataclass(frozen=True)
class ClientTLS:
    """PEM files for a TLS channel: the CA that signed the server, and for mutual TLS
    the client's certificate and key."""

    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.ca_path, self.cert_path, self.key_path))


def open_channel(address: str, tls: ClientTLS | None = None) -> grpc.aio.Channel:
    """A plaintext channel, or a TLS one when any TLS file is given."""
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(address)
    if (tls.cert_path is None) != (tls.key_path is None):
        raise CliError("--tls-cert and --tls-key go together (mutual TLS)")

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {path} ({exc.strerror})") from None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_path),
        private_key=read(tls.key_path),
        certificate_chain=read(tls.cert_path),
    )
    return grpc.aio.secure_channel(address, credentials)


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
    address: str, request: dict[str, Any], *, timeout_s: float, tls: ClientTLS | None = None
) -> dict[str, Any]:
    """Call GetFeatures once; the response as JSON, or RpcFailedError with the contract error."""
    try:
        message = json_format.ParseDict(request, pb.GetFeaturesRequest())
    except json_format.ParseError as exc:
        raise RpcFailedError(
            {"status": "ERROR", "code": "INVALID_REQUEST", "retryable": False,
             "detail": f"request does not fit the GetFeatures message: {exc}"}
        ) from None
    async with open_channel(address, tls) as channel:
        stub: Any = pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.GetFeatures(message, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise RpcFailedError(contract_error(exc)) from None
    return to_json(response)


async def get_status(
    address: str, *, stream: str | None = None, timeout_s: float, tls: ClientTLS | None = None
) -> dict[str, Any]:
    """Call GetStatus once; the status document (64-bit integers read back as numbers)."""
    request = pb.GetStatusRequest()
    if stream is not None:
        request.stream = stream
    async with open_channel(address, tls) as channel:
        stub: Any = pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.GetStatus(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise RpcFailedError(contract_error(exc)) from None
    text = json_format.MessageToJson(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    doc: dict[str, Any] = _int64_as_numbers(json.loads(text), response.DESCRIPTOR)
    return doc


_INT64_TYPES = frozenset({3, 4, 16, 18})  # FieldDescriptor TYPE_INT64/UINT64/SFIXED64/SINT64


def _int64_as_numbers(doc: Any, descriptor: Any) -> Any:
    """proto3 JSON renders 64-bit integers as strings; the contract's JSON has numbers."""
    if not isinstance(doc, dict):
        return doc
    for name, value in list(doc.items()):
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None:
            if isinstance(value, list):
                doc[name] = [_int64_as_numbers(v, field.message_type) for v in value]
            else:
                doc[name] = _int64_as_numbers(value, field.message_type)
        elif field.type in _INT64_TYPES:
            doc[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return doc


def contract_error(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    code = exc.code()
    try:
        # AioRpcError has every method from_call reads (code, details, trailing metadata).
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except ValueError:  # details that contradict the status line: not ours to trust
        status = None
    for detail in status.details if status is not None else ():
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

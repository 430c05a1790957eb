"""Read the rich error a GetFeatures refusal carries (SPEC 4.5), as any gRPC client would.

The server sends `grpc-status-details-bin` = google.rpc.Status whose details hold an
`ofp.v1.ErrorResponse` and a `google.rpc.ErrorInfo`. This module parses the trailing
metadata by hand (no server code involved), so a test sees exactly what is on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from ofp.api.v1 import feature_service_pb2 as pb

DETAILS_KEY = "grpc-status-details-bin"
FORBIDDEN_IN_DETAIL = ("SELECT", "Traceback", "asyncpg")


class MissingDetailError(AssertionError):
    """The refusal did not carry a parseable rich error."""


@dataclass(frozen=True)
class RichError:
    grpc_code: grpc.StatusCode
    message: str  # the gRPC status message (details())
    status: status_pb2.Status
    error: pb.ErrorResponse
    info: error_details_pb2.ErrorInfo

    @property
    def code(self) -> str:
        """The contract code as its string (the proto enum's value name)."""
        return pb.ErrorCode.Name(self.error.code)


def _details_bytes(metadata: Iterable[Any] | None) -> bytes | None:
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == DETAILS_KEY:
            return value if isinstance(value, bytes) else str(value).encode("latin-1")
    return None


def parse_rich_error(
    code: grpc.StatusCode, message: str | None, trailing: Iterable[Any] | None
) -> RichError:
    raw = _details_bytes(trailing)
    if raw is None:
        raise MissingDetailError(f"{code.name}: no {DETAILS_KEY} in trailing metadata")
    status = status_pb2.Status.FromString(raw)
    if status.code != code.value[0]:
        raise MissingDetailError(f"Status.code {status.code} != gRPC code {code.name}")
    error = pb.ErrorResponse()
    info = error_details_pb2.ErrorInfo()
    found_error = found_info = False
    for detail in status.details:
        if detail.Is(pb.ErrorResponse.DESCRIPTOR):
            found_error = detail.Unpack(error)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            found_info = detail.Unpack(info)
    if not (found_error and found_info):
        raise MissingDetailError(f"{code.name}: details lack ErrorResponse or ErrorInfo")
    return RichError(code, message or "", status, error, info)


def rich_error(exc: grpc.RpcError) -> RichError:
    """The rich error of a failed call (aio `AioRpcError` or a sync `grpc.Call` error)."""
    return parse_rich_error(
        exc.code(),
        exc.details(),
        exc.trailing_metadata(),
    )


def assert_clean_text(text: str, *secrets: str) -> None:
    """No SQL, stack trace, driver name or secret (SPEC 4.5)."""
    for word in (*FORBIDDEN_IN_DETAIL, *(s for s in secrets if s)):
        assert word not in text, f"{word!r} leaked into {text!r}"

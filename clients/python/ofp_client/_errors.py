"""OfpError: a refused or failed call, decoded from the gRPC status details."""

from __future__ import annotations

from typing import cast

import grpc

from ofp_client._gen import feature_service_pb2 as pb
from ofp_client._gen import rpc_status_pb2 as rpc

ERROR_DOMAIN = "ofp.feature_plane"
_DETAILS_KEY = "grpc-status-details-bin"


class OfpError(Exception):
    """A call that did not return an answer.

    `code` is the contract's ErrorCode name (INVALID_REQUEST, UNAVAILABLE, ...) when the
    server refused the call, None when it never said (transport failure, client-side
    deadline). `retryable` is the server's verdict; without one, only a gRPC UNAVAILABLE
    is retryable. `reason` and `domain` come from the google.rpc.ErrorInfo detail.
    """

    def __init__(
        self,
        code: str | None,
        retryable: bool,
        detail: str,
        request_id: str | None,
        grpc_code: grpc.StatusCode,
        *,
        reason: str | None = None,
        domain: str | None = None,
    ) -> None:
        super().__init__(f"{code or grpc_code.name}: {detail}")
        self.code = code
        self.retryable = retryable
        self.detail = detail
        self.request_id = request_id
        self.grpc_code = grpc_code
        self.reason = reason
        self.domain = domain

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> OfpError:
        call = cast(grpc.Call, error)  # errors raised by a call are also its grpc.Call
        grpc_code = call.code()
        detail = call.details() or ""
        found = cls(None, grpc_code == grpc.StatusCode.UNAVAILABLE, detail, None, grpc_code)
        for key, value in call.trailing_metadata() or ():
            if key == _DETAILS_KEY and isinstance(value, bytes):
                found._read_details(rpc.Status.FromString(value))
        return found

    def _read_details(self, status: rpc.Status) -> None:
        for any_ in status.details:
            type_name = any_.type_url.rpartition("/")[2]
            if type_name == pb.ErrorResponse.DESCRIPTOR.full_name:
                err = pb.ErrorResponse.FromString(any_.value)
                known = pb.ErrorCode.DESCRIPTOR.values_by_number.get(err.code)
                self.code = known.name if known is not None else str(err.code)
                self.retryable = err.retryable
                self.detail = err.detail or self.detail
                self.request_id = err.request_id if err.HasField("request_id") else None
                self.args = (f"{self.code}: {self.detail}",)
            elif type_name == "google.rpc.ErrorInfo":
                info = rpc.ErrorInfo.FromString(any_.value)
                self.reason, self.domain = info.reason, info.domain

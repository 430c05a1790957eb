"""Contract error codes (docs/contract.md 4.5) and the one exception type that carries them.

    ContractError        every refusal the API can give, keyed by `code`
      .code: ErrorCode   MISSING_PINS | INVALID_REQUEST | NOT_FOUND | UNAVAILABLE
                         | MISSING_PROVENANCE
      .retryable: bool       whether the caller may retry the same request unchanged
      .detail: str           human readable; never SQL, stack traces or secrets

The gRPC status code is a pure function of the contract code, so the mapping
lives here and nowhere else.
"""

from __future__ import annotations

import enum

import grpc


class ErrorCode(enum.StrEnum):
    MISSING_PINS = "MISSING_PINS"
    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    MISSING_PROVENANCE = "MISSING_PROVENANCE"


GRPC_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.MISSING_PINS: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.MISSING_PROVENANCE: grpc.StatusCode.UNAVAILABLE,
}

_DEFAULT_RETRYABLE: dict[ErrorCode, bool] = {
    ErrorCode.MISSING_PINS: False,
    ErrorCode.INVALID_REQUEST: False,
    ErrorCode.NOT_FOUND: False,
    ErrorCode.UNAVAILABLE: True,
    ErrorCode.MISSING_PROVENANCE: True,
}

MAX_DETAIL_CHARS = 2048


class ContractError(Exception):
    """A refusal with a contract code; `retryable` defaults from the code."""

    def __init__(self, code: ErrorCode, detail: str, *, retryable: bool | None = None,
                 basis: tuple[tuple[int, int], ...] | None = None) -> None:
        self.code = code
        self.detail = detail[:MAX_DETAIL_CHARS]
        self.retryable = _DEFAULT_RETRYABLE[code] if retryable is None else retryable
        # With a min_basis not reached: (partition, exclusive-next offset) when it ended.
        self.basis = basis
        super().__init__(f"{code}: {self.detail}")

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return GRPC_CODE[self.code]

"""Typed Python client of the OFP feature plane (ofp.v1.FeatureService); docs/clients.md."""

from ofp_client._client import (
    CHANNEL_OPTIONS,
    SERVICE_CONFIG,
    Answer,
    Cell,
    FeatureClient,
    FeatureValue,
    Partition,
    Snapshot,
    Status,
    Value,
    verify_snapshot,
)
from ofp_client._errors import ERROR_DOMAIN, OfpError
from ofp_client._gen import feature_service_pb2 as pb
from ofp_client._hashing import HASHED_FIELDS, canonical_json, snapshot_document, snapshot_hash

__all__ = [
    "CHANNEL_OPTIONS",
    "ERROR_DOMAIN",
    "HASHED_FIELDS",
    "SERVICE_CONFIG",
    "Answer",
    "Cell",
    "FeatureClient",
    "FeatureValue",
    "OfpError",
    "Partition",
    "Snapshot",
    "Status",
    "Value",
    "canonical_json",
    "pb",
    "snapshot_document",
    "snapshot_hash",
    "verify_snapshot",
]

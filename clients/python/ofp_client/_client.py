"""FeatureClient: GetFeatures and GetStatus with typed results (docs/clients.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from ofp_client._errors import OfpError
from ofp_client._gen import feature_service_pb2 as pb
from ofp_client._hashing import snapshot_document, snapshot_hash

FeatureValue = int | Decimal | str | datetime | list[str] | None
KeyLike = str | tuple[str, str]  # "flow_id:42" or ("flow_id", "42")
GroupLike = str | tuple[str, str]  # "core_features:v1" or ("core_features", "v1")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SERVICE = "ofp.v1.FeatureService"

# Retry only UNAVAILABLE (the code the server marks retryable, and what a call that
# raced a GOAWAY or a restarting replica gets); every attempt stays inside the call's
# deadline, and retryThrottling stops retries when most calls fail (no retry storm).
# round_robin spreads calls over every address a dns:/// target resolves to (the
# headless Service's pods) instead of pinning one connection.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": _SERVICE}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}

# Keepalive finds a peer that vanished behind a load balancer; the server accepts a
# ping every 10 s at most, also between calls (docs/operations.md, "Connections").
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # else an idle channel stops pinging
]


@dataclass(frozen=True)
class Value:
    """One feature value: `value` is int (counts), Decimal (sums, min, max, mean, ...),
    str (first, last), datetime (last_event_ts_utc), list[str] (last_n, newest first)
    or None; `status` is the ValueStatus name (VALUE_STATUS_PRESENT, ...)."""

    name: str
    value: FeatureValue
    status: str
    scale: int | None = None


@dataclass(frozen=True)
class Cell:
    """The values of one (key, group); `present` False: no event in the group's longest
    window (no values, no last_event_time)."""

    key_type: str
    key_id: str
    group_name: str
    group_version: str
    present: bool
    last_event_time: datetime | None
    values: dict[str, Value] = field(default_factory=dict)  # definition order

    def __getitem__(self, name: str) -> FeatureValue:
        return self.values[name].value


@dataclass(frozen=True)
class Snapshot:
    """The provenance of an answer; `raw` is the message the hash covers."""

    hash: str
    as_of: datetime
    policy_id: str
    revision: str
    stream: str
    offset_kind: str
    offsets: dict[int, int]  # partition -> exclusive-next offset: the basis
    watermark: datetime | None
    freshness: str  # GREEN, AMBER or RED
    flags: tuple[str, ...]
    raw: pb.FeatureSnapshot

    def document(self) -> dict[str, Any]:
        """The hashed fields in the server's JSON form (features as plain Python)."""
        return snapshot_document(self.raw)


@dataclass(frozen=True)
class Answer:
    snapshot: Snapshot
    cells: tuple[Cell, ...]
    request_id: str | None
    served_at: datetime
    raw: pb.GetFeaturesResponse

    def cell(self, key: KeyLike, group: str) -> Cell:
        key_type, key_id = _pair(key, last=False)
        for c in self.cells:
            if (c.key_type, c.key_id, c.group_name) == (key_type, key_id, group):
                return c
        raise KeyError((key_type, key_id, group))


@dataclass(frozen=True)
class Partition:
    partition: int
    next_offset: int
    event_time_high: datetime | None
    checkpoint_age_ms: int | None
    lag_records: int | None
    lag_ms: int | None
    closed: bool


@dataclass(frozen=True)
class Status:
    state: str  # GREEN, AMBER or RED: the degrade ladder's view
    reasons: tuple[tuple[str, str, str], ...]  # (code, state, detail), worst first
    stream: str | None
    revision: str | None
    watermark: datetime | None
    partitions: tuple[Partition, ...]
    raw: pb.GetStatusResponse


def verify_snapshot(answer: Answer | pb.GetFeaturesResponse | pb.FeatureSnapshot) -> bool:
    """Whether the snapshot's snapshot_hash is the hash of its content."""
    if isinstance(answer, Answer):
        snap = answer.snapshot.raw
    elif isinstance(answer, pb.GetFeaturesResponse):
        snap = answer.snapshot
    else:
        snap = answer
    return snap.snapshot_hash == snapshot_hash(snap)


class FeatureClient:
    """A channel to ofp.v1.FeatureService; thread-safe, meant to live as long as the process.

    `target`: host:port, or dns:///name:port for a headless Service (round_robin over its
    pods). `timeout_s`: every call's deadline unless the call gives its own; retries of
    UNAVAILABLE happen inside it. `tls`: channel credentials (grpc.ssl_channel_credentials)
    or None for plaintext.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 1.0,
        tls: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = CHANNEL_OPTIONS + list(options)
        self._channel = (grpc.secure_channel(target, tls, options=opts) if tls is not None
                         else grpc.insecure_channel(target, options=opts))
        self.timeout_s = timeout_s
        # The two unary methods, bound as the gRPC plugin's stub would bind them.
        self._get_features = self._channel.unary_unary(
            f"/{_SERVICE}/GetFeatures",
            request_serializer=pb.GetFeaturesRequest.SerializeToString,
            response_deserializer=pb.GetFeaturesResponse.FromString,
        )
        self._get_status = self._channel.unary_unary(
            f"/{_SERVICE}/GetStatus",
            request_serializer=pb.GetStatusRequest.SerializeToString,
            response_deserializer=pb.GetStatusResponse.FromString,
        )

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def get_features(
        self,
        keys: Iterable[KeyLike],
        groups: Iterable[GroupLike],
        *,
        as_of: datetime,
        pins: Mapping[str, Any],
        request_id: str | None = None,
        revision: str | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """Features of `keys` in `groups` as of `as_of` (timezone-aware) in the run scope
        `pins` (the six ContextPins by field name). Raises OfpError when refused."""
        request = pb.GetFeaturesRequest(
            pins=pb.ContextPins(**pins),
            as_of_time=_timestamp(as_of),
            feature_keys=[pb.FeatureKey(key_type=t, key_id=i)
                          for t, i in (_pair(k, last=False) for k in keys)],
            feature_groups=[pb.FeatureGroupRef(name=n, version=v)
                            for n, v in (_pair(g, last=True) for g in groups)],
        )
        if request_id is not None:
            request.request_id = request_id
        if revision is not None:
            request.policy_revision = revision
        return _answer(self._call(self._get_features, request, timeout_s))

    def get_status(
        self, stream: str | None = None, *, timeout_s: float | None = None
    ) -> Status:
        request = pb.GetStatusRequest()
        if stream is not None:
            request.stream = stream
        return _status(self._call(self._get_status, request, timeout_s))

    def _call(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as exc:
            raise OfpError.from_rpc_error(exc) from None


def _pair(item: KeyLike, *, last: bool) -> tuple[str, str]:
    if isinstance(item, str):
        # key_type has no ':' but a key_id may; a group version has none.
        a, sep, b = item.rpartition(":") if last else item.partition(":")
        if not sep:
            raise ValueError(f"expected 'a:b', got {item!r}")
        return a, b
    return item[0], item[1]


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    if when.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (the contract has no local time)")
    delta = when - _EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86_400 + delta.seconds,
                                   nanos=delta.microseconds * 1000)


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _micros(text: str) -> datetime:
    """The contract's micros form, YYYY-MM-DDTHH:MM:SS.ffffffZ."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _name(enum: Any, number: int) -> str:
    """The value's name (the contract string); a value newer than this client, as its number."""
    value = enum.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def _typed(v: pb.TypedValue) -> FeatureValue:
    kind = v.WhichOneof("value")
    if kind == "int64_value":
        return v.int64_value
    if kind == "decimal_value":
        return Decimal(v.decimal_value)
    if kind == "string_value":
        return v.string_value
    if kind == "timestamp_value":
        return _datetime(v.timestamp_value)
    if kind == "list_value":
        return list(v.list_value.values)
    return None  # null_value, or a kind newer than this client


def _answer(resp: pb.GetFeaturesResponse) -> Answer:
    snap = resp.snapshot
    basis = snap.eb_offset_basis
    cells = tuple(
        Cell(
            key_type=c.key_type,
            key_id=c.key_id,
            group_name=c.group_name,
            group_version=c.group_version,
            present=c.present,
            last_event_time=_datetime(c.last_event_time) if c.HasField("last_event_time")
            else None,
            values={v.name: Value(v.name, _typed(v), _name(pb.ValueStatus, v.status),
                                  v.scale if v.HasField("scale") else None)
                    for v in c.features},
        )
        for c in resp.typed_features
    )
    return Answer(
        snapshot=Snapshot(
            hash=snap.snapshot_hash,
            as_of=_micros(snap.as_of_time_utc),
            policy_id=snap.feature_def_policy_rev.policy_id,
            revision=snap.feature_def_policy_rev.revision,
            stream=basis.stream,
            offset_kind=_name(pb.OffsetKind, basis.offset_kind),
            offsets={o.partition: int(o.offset) for o in basis.offsets},
            watermark=_micros(basis.window_end_utc) if basis.HasField("window_end_utc")
            else None,
            freshness=_name(pb.HealthState, snap.freshness.state),
            flags=tuple(_name(pb.FreshnessFlag, f) for f in snap.freshness.flags),
            raw=snap,
        ),
        cells=cells,
        request_id=resp.request_id if resp.HasField("request_id") else None,
        served_at=_micros(resp.served_at_utc),
        raw=resp,
    )


def _status(resp: pb.GetStatusResponse) -> Status:
    def opt(msg: Any, name: str) -> Any:
        return getattr(msg, name) if msg.HasField(name) else None

    return Status(
        state=_name(pb.HealthState, resp.health.state),
        reasons=tuple((r.code, _name(pb.HealthState, r.state), r.detail)
                      for r in resp.health.reasons),
        stream=opt(resp, "stream"),
        revision=resp.policy.revision if resp.HasField("policy") else None,
        watermark=_micros(resp.watermark_utc) if resp.HasField("watermark_utc") else None,
        partitions=tuple(
            Partition(
                partition=p.partition,
                next_offset=int(p.next_offset),
                event_time_high=_micros(p.event_time_high_utc)
                if p.HasField("event_time_high_utc") else None,
                checkpoint_age_ms=opt(p, "checkpoint_age_ms"),
                lag_records=opt(p, "lag_records"),
                lag_ms=opt(p, "lag_ms"),
                closed=p.closed,
            )
            for p in resp.partitions
        ),
        raw=resp,
    )

import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OffsetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OFFSET_KIND_UNSPECIFIED: _ClassVar[OffsetKind]
    kinesis_sequence: _ClassVar[OffsetKind]
    kafka_offset: _ClassVar[OffsetKind]
    file_line: _ClassVar[OffsetKind]

class HealthState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATE_UNSPECIFIED: _ClassVar[HealthState]
    GREEN: _ClassVar[HealthState]
    AMBER: _ClassVar[HealthState]
    RED: _ClassVar[HealthState]

class FreshnessFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRESHNESS_FLAG_UNSPECIFIED: _ClassVar[FreshnessFlag]
    STALE_INPUT_BASIS: _ClassVar[FreshnessFlag]
    MISSING_FEATURE_STATE: _ClassVar[FreshnessFlag]
    STALE_BY_TTL: _ClassVar[FreshnessFlag]

class ValueStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_STATUS_UNSPECIFIED: _ClassVar[ValueStatus]
    VALUE_STATUS_PRESENT: _ClassVar[ValueStatus]
    VALUE_STATUS_NO_EVENTS_IN_WINDOW: _ClassVar[ValueStatus]
    VALUE_STATUS_STALE_BY_TTL: _ClassVar[ValueStatus]
    VALUE_STATUS_OUTSIDE_RETENTION: _ClassVar[ValueStatus]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    MISSING_PINS: _ClassVar[ErrorCode]
    INVALID_REQUEST: _ClassVar[ErrorCode]
    NOT_FOUND: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
    MISSING_PROVENANCE: _ClassVar[ErrorCode]

class ReadReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_REPLICA_STATE_UNSPECIFIED: _ClassVar[ReadReplicaState]
    UNKNOWN: _ClassVar[ReadReplicaState]
    IN_ROTATION: _ClassVar[ReadReplicaState]
    LAGGING: _ClassVar[ReadReplicaState]
    PROMOTED: _ClassVar[ReadReplicaState]
    UNREACHABLE: _ClassVar[ReadReplicaState]
OFFSET_KIND_UNSPECIFIED: OffsetKind
kinesis_sequence: OffsetKind
kafka_offset: OffsetKind
file_line: OffsetKind
HEALTH_STATE_UNSPECIFIED: HealthState
GREEN: HealthState
AMBER: HealthState
RED: HealthState
FRESHNESS_FLAG_UNSPECIFIED: FreshnessFlag
STALE_INPUT_BASIS: FreshnessFlag
MISSING_FEATURE_STATE: FreshnessFlag
STALE_BY_TTL: FreshnessFlag
VALUE_STATUS_UNSPECIFIED: ValueStatus
VALUE_STATUS_PRESENT: ValueStatus
VALUE_STATUS_NO_EVENTS_IN_WINDOW: ValueStatus
VALUE_STATUS_STALE_BY_TTL: ValueStatus
VALUE_STATUS_OUTSIDE_RETENTION: ValueStatus
ERROR_CODE_UNSPECIFIED: ErrorCode
MISSING_PINS: ErrorCode
INVALID_REQUEST: ErrorCode
NOT_FOUND: ErrorCode
UNAVAILABLE: ErrorCode
MISSING_PROVENANCE: ErrorCode
READ_REPLICA_STATE_UNSPECIFIED: ReadReplicaState
UNKNOWN: ReadReplicaState
IN_ROTATION: ReadReplicaState
LAGGING: ReadReplicaState
PROMOTED: ReadReplicaState
UNREACHABLE: ReadReplicaState

class GetFeaturesRequest(_message.Message):
    __slots__ = ("pins", "as_of_time_utc", "feature_keys", "feature_groups", "graph_resolution_mode", "request_id", "policy_revision", "as_of_time", "min_basis")
    PINS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_UTC_FIELD_NUMBER: _ClassVar[int]
    FEATURE_KEYS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_RESOLUTION_MODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_FIELD_NUMBER: _ClassVar[int]
    MIN_BASIS_FIELD_NUMBER: _ClassVar[int]
    pins: ContextPins
    as_of_time_utc: str
    feature_keys: _containers.RepeatedCompositeFieldContainer[FeatureKey]
    feature_groups: _containers.RepeatedCompositeFieldContainer[FeatureGroupRef]
    graph_resolution_mode: str
    request_id: str
    policy_revision: str
    as_of_time: _timestamp_pb2.Timestamp
    min_basis: _containers.RepeatedCompositeFieldContainer[EbOffset]
    def __init__(self, pins: _Optional[_Union[ContextPins, _Mapping]] = ..., as_of_time_utc: _Optional[str] = ..., feature_keys: _Optional[_Iterable[_Union[FeatureKey, _Mapping]]] = ..., feature_groups: _Optional[_Iterable[_Union[FeatureGroupRef, _Mapping]]] = ..., graph_resolution_mode: _Optional[str] = ..., request_id: _Optional[str] = ..., policy_revision: _Optional[str] = ..., as_of_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_basis: _Optional[_Iterable[_Union[EbOffset, _Mapping]]] = ...) -> None: ...

class ContextPins(_message.Message):
    __slots__ = ("platform_run_id", "scenario_run_id", "scenario_id", "manifest_fingerprint", "parameter_hash", "seed", "run_id")
    PLATFORM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_HASH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    platform_run_id: str
    scenario_run_id: str
    scenario_id: str
    manifest_fingerprint: str
    parameter_hash: str
    seed: int
    run_id: str
    def __init__(self, platform_run_id: _Optional[str] = ..., scenario_run_id: _Optional[str] = ..., scenario_id: _Optional[str] = ..., manifest_fingerprint: _Optional[str] = ..., parameter_hash: _Optional[str] = ..., seed: _Optional[int] = ..., run_id: _Optional[str] = ...) -> None: ...

class FeatureKey(_message.Message):
    __slots__ = ("key_type", "key_id")
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_type: str
    key_id: str
    def __init__(self, key_type: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class FeatureGroupRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class EbOffset(_message.Message):
    __slots__ = ("partition", "offset")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    partition: int
    offset: str
    def __init__(self, partition: _Optional[int] = ..., offset: _Optional[str] = ...) -> None: ...

class GetFeaturesResponse(_message.Message):
    __slots__ = ("status", "snapshot", "served_at_utc", "request_id", "typed_features")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TYPED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    status: str
    snapshot: FeatureSnapshot
    served_at_utc: str
    request_id: str
    typed_features: _containers.RepeatedCompositeFieldContainer[TypedCell]
    def __init__(self, status: _Optional[str] = ..., snapshot: _Optional[_Union[FeatureSnapshot, _Mapping]] = ..., served_at_utc: _Optional[str] = ..., request_id: _Optional[str] = ..., typed_features: _Optional[_Iterable[_Union[TypedCell, _Mapping]]] = ...) -> None: ...

class FeatureSnapshot(_message.Message):
    __slots__ = ("snapshot_hash", "pins", "as_of_time_utc", "created_at_utc", "feature_groups", "feature_def_policy_rev", "run_config_digest", "eb_offset_basis", "graph_version", "features", "freshness", "snapshot_ref", "notes")
    SNAPSHOT_HASH_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_UTC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    FEATURE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DEF_POLICY_REV_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EB_OFFSET_BASIS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REF_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    snapshot_hash: str
    pins: ContextPins
    as_of_time_utc: str
    created_at_utc: str
    feature_groups: _containers.RepeatedCompositeFieldContainer[FeatureGroupRef]
    feature_def_policy_rev: FeatureDefPolicyRev
    run_config_digest: str
    eb_offset_basis: EbOffsetBasis
    graph_version: GraphVersion
    features: _struct_pb2.Struct
    freshness: Freshness
    snapshot_ref: str
    notes: str
    def __init__(self, snapshot_hash: _Optional[str] = ..., pins: _Optional[_Union[ContextPins, _Mapping]] = ..., as_of_time_utc: _Optional[str] = ..., created_at_utc: _Optional[str] = ..., feature_groups: _Optional[_Iterable[_Union[FeatureGroupRef, _Mapping]]] = ..., feature_def_policy_rev: _Optional[_Union[FeatureDefPolicyRev, _Mapping]] = ..., run_config_digest: _Optional[str] = ..., eb_offset_basis: _Optional[_Union[EbOffsetBasis, _Mapping]] = ..., graph_version: _Optional[_Union[GraphVersion, _Mapping]] = ..., features: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., freshness: _Optional[_Union[Freshness, _Mapping]] = ..., snapshot_ref: _Optional[str] = ..., notes: _Optional[str] = ...) -> None: ...

class FeatureDefPolicyRev(_message.Message):
    __slots__ = ("policy_id", "revision", "content_digest")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    revision: str
    content_digest: str
    def __init__(self, policy_id: _Optional[str] = ..., revision: _Optional[str] = ..., content_digest: _Optional[str] = ...) -> None: ...

class EbOffsetBasis(_message.Message):
    __slots__ = ("stream", "offset_kind", "offsets", "basis_digest", "window_start_utc", "window_end_utc")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    BASIS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_UTC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_UTC_FIELD_NUMBER: _ClassVar[int]
    stream: str
    offset_kind: OffsetKind
    offsets: _containers.RepeatedCompositeFieldContainer[EbOffset]
    basis_digest: str
    window_start_utc: str
    window_end_utc: str
    def __init__(self, stream: _Optional[str] = ..., offset_kind: _Optional[_Union[OffsetKind, str]] = ..., offsets: _Optional[_Iterable[_Union[EbOffset, _Mapping]]] = ..., basis_digest: _Optional[str] = ..., window_start_utc: _Optional[str] = ..., window_end_utc: _Optional[str] = ...) -> None: ...

class GraphVersion(_message.Message):
    __slots__ = ("version_id", "watermark_ts_utc", "stream", "basis_digest", "computed_at_utc")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_TS_UTC_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    BASIS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    watermark_ts_utc: str
    stream: str
    basis_digest: str
    computed_at_utc: str
    def __init__(self, version_id: _Optional[str] = ..., watermark_ts_utc: _Optional[str] = ..., stream: _Optional[str] = ..., basis_digest: _Optional[str] = ..., computed_at_utc: _Optional[str] = ...) -> None: ...

class Freshness(_message.Message):
    __slots__ = ("state", "flags", "stale_groups", "missing_groups", "missing_feature_keys")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    STALE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MISSING_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FEATURE_KEYS_FIELD_NUMBER: _ClassVar[int]
    state: HealthState
    flags: _containers.RepeatedScalarFieldContainer[FreshnessFlag]
    stale_groups: _containers.RepeatedScalarFieldContainer[str]
    missing_groups: _containers.RepeatedScalarFieldContainer[str]
    missing_feature_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, state: _Optional[_Union[HealthState, str]] = ..., flags: _Optional[_Iterable[_Union[FreshnessFlag, str]]] = ..., stale_groups: _Optional[_Iterable[str]] = ..., missing_groups: _Optional[_Iterable[str]] = ..., missing_feature_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class TypedCell(_message.Message):
    __slots__ = ("key_type", "key_id", "group_name", "group_version", "present", "last_event_time", "features")
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    key_type: str
    key_id: str
    group_name: str
    group_version: str
    present: bool
    last_event_time: _timestamp_pb2.Timestamp
    features: _containers.RepeatedCompositeFieldContainer[TypedValue]
    def __init__(self, key_type: _Optional[str] = ..., key_id: _Optional[str] = ..., group_name: _Optional[str] = ..., group_version: _Optional[str] = ..., present: _Optional[bool] = ..., last_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features: _Optional[_Iterable[_Union[TypedValue, _Mapping]]] = ...) -> None: ...

class TypedValue(_message.Message):
    __slots__ = ("name", "status", "int64_value", "decimal_value", "string_value", "timestamp_value", "list_value", "null_value", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: ValueStatus
    int64_value: int
    decimal_value: str
    string_value: str
    timestamp_value: _timestamp_pb2.Timestamp
    list_value: StringList
    null_value: _struct_pb2.NullValue
    scale: int
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[ValueStatus, str]] = ..., int64_value: _Optional[int] = ..., decimal_value: _Optional[str] = ..., string_value: _Optional[str] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., list_value: _Optional[_Union[StringList, _Mapping]] = ..., null_value: _Optional[_Union[_struct_pb2.NullValue, str]] = ..., scale: _Optional[int] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ErrorResponse(_message.Message):
    __slots__ = ("status", "code", "retryable", "detail", "request_id", "served_at_utc", "current_basis")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    CURRENT_BASIS_FIELD_NUMBER: _ClassVar[int]
    status: str
    code: ErrorCode
    retryable: bool
    detail: str
    request_id: str
    served_at_utc: str
    current_basis: _containers.RepeatedCompositeFieldContainer[EbOffset]
    def __init__(self, status: _Optional[str] = ..., code: _Optional[_Union[ErrorCode, str]] = ..., retryable: _Optional[bool] = ..., detail: _Optional[str] = ..., request_id: _Optional[str] = ..., served_at_utc: _Optional[str] = ..., current_basis: _Optional[_Iterable[_Union[EbOffset, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("stream", "request_id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    stream: str
    request_id: str
    def __init__(self, stream: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status", "stream", "observed_at_utc", "policy", "policy_activated_at_utc", "watermark_utc", "watermark_age_ms", "partitions", "totals", "quarantine_open", "health", "request_id", "read_replicas")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_ACTIVATED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_UTC_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_OPEN_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    READ_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    status: str
    stream: str
    observed_at_utc: str
    policy: FeatureDefPolicyRev
    policy_activated_at_utc: str
    watermark_utc: str
    watermark_age_ms: int
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStatus]
    totals: OutcomeCounts
    quarantine_open: int
    health: HealthStatus
    request_id: str
    read_replicas: _containers.RepeatedCompositeFieldContainer[ReadReplicaStatus]
    def __init__(self, status: _Optional[str] = ..., stream: _Optional[str] = ..., observed_at_utc: _Optional[str] = ..., policy: _Optional[_Union[FeatureDefPolicyRev, _Mapping]] = ..., policy_activated_at_utc: _Optional[str] = ..., watermark_utc: _Optional[str] = ..., watermark_age_ms: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[PartitionStatus, _Mapping]]] = ..., totals: _Optional[_Union[OutcomeCounts, _Mapping]] = ..., quarantine_open: _Optional[int] = ..., health: _Optional[_Union[HealthStatus, _Mapping]] = ..., request_id: _Optional[str] = ..., read_replicas: _Optional[_Iterable[_Union[ReadReplicaStatus, _Mapping]]] = ...) -> None: ...

class PartitionStatus(_message.Message):
    __slots__ = ("partition", "offset_kind", "next_offset", "event_time_high_utc", "last_applied_at_utc", "updated_at_utc", "checkpoint_age_ms", "lag_records", "lag_ms", "lag_observed_at_utc", "closed", "lease_owner", "outcomes")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_KIND_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_HIGH_UTC_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    LAG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    LAG_OBSERVED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    partition: int
    offset_kind: OffsetKind
    next_offset: str
    event_time_high_utc: str
    last_applied_at_utc: str
    updated_at_utc: str
    checkpoint_age_ms: int
    lag_records: int
    lag_ms: int
    lag_observed_at_utc: str
    closed: bool
    lease_owner: str
    outcomes: OutcomeCounts
    def __init__(self, partition: _Optional[int] = ..., offset_kind: _Optional[_Union[OffsetKind, str]] = ..., next_offset: _Optional[str] = ..., event_time_high_utc: _Optional[str] = ..., last_applied_at_utc: _Optional[str] = ..., updated_at_utc: _Optional[str] = ..., checkpoint_age_ms: _Optional[int] = ..., lag_records: _Optional[int] = ..., lag_ms: _Optional[int] = ..., lag_observed_at_utc: _Optional[str] = ..., closed: _Optional[bool] = ..., lease_owner: _Optional[str] = ..., outcomes: _Optional[_Union[OutcomeCounts, _Mapping]] = ...) -> None: ...

class OutcomeCounts(_message.Message):
    __slots__ = ("applied", "duplicate", "ignored", "quarantined", "by_reason")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    BY_REASON_FIELD_NUMBER: _ClassVar[int]
    applied: int
    duplicate: int
    ignored: int
    quarantined: int
    by_reason: _containers.RepeatedCompositeFieldContainer[ReasonCount]
    def __init__(self, applied: _Optional[int] = ..., duplicate: _Optional[int] = ..., ignored: _Optional[int] = ..., quarantined: _Optional[int] = ..., by_reason: _Optional[_Iterable[_Union[ReasonCount, _Mapping]]] = ...) -> None: ...

class ReasonCount(_message.Message):
    __slots__ = ("outcome", "reason", "count")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    reason: str
    count: int
    def __init__(self, outcome: _Optional[str] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class HealthStatus(_message.Message):
    __slots__ = ("state", "reasons", "thresholds")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    state: HealthState
    reasons: _containers.RepeatedCompositeFieldContainer[HealthReason]
    thresholds: HealthThresholds
    def __init__(self, state: _Optional[_Union[HealthState, str]] = ..., reasons: _Optional[_Iterable[_Union[HealthReason, _Mapping]]] = ..., thresholds: _Optional[_Union[HealthThresholds, _Mapping]] = ...) -> None: ...

class HealthReason(_message.Message):
    __slots__ = ("code", "state", "detail", "partition")
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    code: str
    state: HealthState
    detail: str
    partition: int
    def __init__(self, code: _Optional[str] = ..., state: _Optional[_Union[HealthState, str]] = ..., detail: _Optional[str] = ..., partition: _Optional[int] = ...) -> None: ...

class HealthThresholds(_message.Message):
    __slots__ = ("checkpoint_amber_s", "checkpoint_red_s", "watermark_amber_s", "watermark_red_s", "quarantine_amber")
    CHECKPOINT_AMBER_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_RED_S_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_AMBER_S_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_RED_S_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_AMBER_FIELD_NUMBER: _ClassVar[int]
    checkpoint_amber_s: int
    checkpoint_red_s: int
    watermark_amber_s: int
    watermark_red_s: int
    quarantine_amber: int
    def __init__(self, checkpoint_amber_s: _Optional[int] = ..., checkpoint_red_s: _Optional[int] = ..., watermark_amber_s: _Optional[int] = ..., watermark_red_s: _Optional[int] = ..., quarantine_amber: _Optional[int] = ...) -> None: ...

class ReadReplicaStatus(_message.Message):
    __slots__ = ("name", "state", "in_rotation", "lag_bytes", "lag_ms", "checked_at_utc", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_ROTATION_FIELD_NUMBER: _ClassVar[int]
    LAG_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ReadReplicaState
    in_rotation: bool
    lag_bytes: int
    lag_ms: int
    checked_at_utc: str
    error: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ReadReplicaState, str]] = ..., in_rotation: _Optional[bool] = ..., lag_bytes: _Optional[int] = ..., lag_ms: _Optional[int] = ..., checked_at_utc: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class CanonicalEnvelope(_message.Message):
    __slots__ = ("event_id", "event_type", "ts_utc", "manifest_fingerprint", "parameter_hash", "seed", "scenario_id", "platform_run_id", "scenario_run_id", "run_id", "schema_version", "emitted_at_utc", "trace_id", "span_id", "parent_event_id", "producer", "payload")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TS_UTC_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_HASH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMITTED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    ts_utc: str
    manifest_fingerprint: str
    parameter_hash: str
    seed: int
    scenario_id: str
    platform_run_id: str
    scenario_run_id: str
    run_id: str
    schema_version: str
    emitted_at_utc: str
    trace_id: str
    span_id: str
    parent_event_id: str
    producer: str
    payload: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., ts_utc: _Optional[str] = ..., manifest_fingerprint: _Optional[str] = ..., parameter_hash: _Optional[str] = ..., seed: _Optional[int] = ..., scenario_id: _Optional[str] = ..., platform_run_id: _Optional[str] = ..., scenario_run_id: _Optional[str] = ..., run_id: _Optional[str] = ..., schema_version: _Optional[str] = ..., emitted_at_utc: _Optional[str] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., parent_event_id: _Optional[str] = ..., producer: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetFeaturesBatchRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: GetFeaturesRequest
    def __init__(self, request: _Optional[_Union[GetFeaturesRequest, _Mapping]] = ...) -> None: ...

class GetFeaturesBatchResponse(_message.Message):
    __slots__ = ("index", "response", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    response: GetFeaturesResponse
    error: ErrorResponse
    def __init__(self, index: _Optional[int] = ..., response: _Optional[_Union[GetFeaturesResponse, _Mapping]] = ..., error: _Optional[_Union[ErrorResponse, _Mapping]] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("snapshot_hash", "request_id")
    SNAPSHOT_HASH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_hash: str
    request_id: str
    def __init__(self, snapshot_hash: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("status", "snapshot", "canonical_json", "recorded_at_utc", "request", "request_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_UTC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    status: str
    snapshot: FeatureSnapshot
    canonical_json: str
    recorded_at_utc: str
    request: _struct_pb2.Struct
    request_id: str
    def __init__(self, status: _Optional[str] = ..., snapshot: _Optional[_Union[FeatureSnapshot, _Mapping]] = ..., canonical_json: _Optional[str] = ..., recorded_at_utc: _Optional[str] = ..., request: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

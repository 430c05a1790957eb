"""Every contract error code reached through a real gRPC call (SPEC 4.5).

Each refusal is checked the way a client sees it: the gRPC status code, then the
rich error in `grpc-status-details-bin` (ErrorResponse.code / retryable / request_id
and ErrorInfo.reason == code), and that no message leaks SQL, a stack trace, the
driver's name or the database URL.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.contracts.errors import ErrorCode
from ofp.contracts.schemas import (
    GET_FEATURES_ERROR,
    GET_FEATURES_REQUEST,
    SCHEMAS,
    first_error,
    format_path,
)
from ofp.contracts.timefmt import format_micros
from ofp_server.server import create_server
from tests.support.harness import get_features, project_once, request_proto, running_server
from tests.support.harness import settings as make_settings
from tests.support.rich_errors import RichError, assert_clean_text, rich_error
from tests.support.streams import BASE_US, HOUR_US, TOPIC, generate, pins
from tests.unit.test_request_validation import (
    REMOVE,
    apply,
    base_request,
    derive,
    expected_code,
)

pytestmark = pytest.mark.integration

DAY_US = 24 * HOUR_US
LARGEST_WINDOW_US = 7 * DAY_US
AS_OF_US = BASE_US + 3 * DAY_US
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def valid_request(run: str = "A", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pins": pins(run),
        "as_of_time_utc": format_micros(AS_OF_US),
        "feature_keys": [{"key_type": "flow_id", "key_id": "1"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
        "request_id": "req-errors-1",
    }
    doc.update(changes)
    return doc


async def refusal(stub: pb_grpc.FeatureServiceStub, msg: pb.GetFeaturesRequest) -> RichError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetFeatures(msg)
    return rich_error(caught.value)


def check(
    err: RichError,
    grpc_code: grpc.StatusCode,
    code: ErrorCode,
    *,
    retryable: bool,
    request_id: str | None = "req-errors-1",
    secrets: tuple[str, ...] = (),
) -> None:
    assert err.grpc_code == grpc_code, (err.grpc_code, err.error)
    assert err.error.status == "ERROR"
    assert err.code == code.value, err.error
    assert err.error.retryable is retryable, err.error
    assert err.info.reason == code.value
    assert err.info.domain
    if request_id is None:
        assert not err.error.HasField("request_id")
    else:
        assert err.error.request_id == request_id
    assert err.error.detail
    for text in (err.error.detail, err.message, err.status.message):
        assert_clean_text(text, *secrets)


@pytest.fixture
async def projected(pool: asyncpg.Pool, bus_root: Path) -> asyncpg.Pool:
    """Runs A and B projected (run C is never seen)."""
    generate(3, n_events=120, runs=("A", "B")).write(bus_root)
    await project_once(pool, bus_root)
    return pool


@pytest.fixture
async def stub(
    projected: asyncpg.Pool, bus_root: Path
) -> AsyncIterator[pb_grpc.FeatureServiceStub]:
    async with running_server(projected, bus_root, max_keys=2) as (_server, client):
        yield client


async def test_control_request_is_served_when_valid(stub: pb_grpc.FeatureServiceStub) -> None:
    doc = await get_features(stub, valid_request())
    assert doc["status"] == "OK"
    assert doc["request_id"] == "req-errors-1"


# ----------------------------------------------------------------- MISSING_PINS


def _without_pins(doc: dict[str, Any]) -> None:
    del doc["pins"]


def _without_pin(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        del doc["pins"][name]

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_without_pins, id="no-pins"),
        pytest.param(_without_pin("seed"), id="seed-missing"),
        pytest.param(_without_pin("parameter_hash"), id="parameter_hash-missing"),
        pytest.param(_without_pin("platform_run_id"), id="platform_run_id-missing"),
    ],
)
async def test_missing_pins_is_invalid_argument_when_pins_are_absent_or_incomplete(
    stub: pb_grpc.FeatureServiceStub, mutate: Callable[[dict[str, Any]], None], fresh_dsn: str
) -> None:
    doc = valid_request()
    mutate(doc)
    err = await refusal(stub, request_proto(doc))
    check(err, INVALID, ErrorCode.MISSING_PINS, retryable=False, secrets=(fresh_dsn,))


# -------------------------------------------------------------- INVALID_REQUEST


INVALID_REQUESTS: dict[str, dict[str, Any]] = {
    "unknown-group": {"feature_groups": [{"name": "no_such_group", "version": "v1"}]},
    "unknown-version": {"feature_groups": [{"name": "core_features", "version": "v9"}]},
    "too-many-keys": {
        "feature_keys": [{"key_type": "flow_id", "key_id": str(i)} for i in range(3)]
    },
    "bad-as-of-format": {"as_of_time_utc": "2026-02-09 00:00:00"},
    "as-of-not-on-calendar": {"as_of_time_utc": "2026-02-30T00:00:00.000000Z"},
    "duplicate-group-name": {
        "feature_groups": [
            {"name": "core_features", "version": "v1"},
            {"name": "core_features", "version": "v2"},
        ]
    },
    "unknown-graph-mode": {"graph_resolution_mode": "sometimes"},
}


@pytest.mark.parametrize("changes", INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
async def test_invalid_request_is_invalid_argument_when_request_breaks_a_rule(
    stub: pb_grpc.FeatureServiceStub, changes: dict[str, Any], fresh_dsn: str
) -> None:
    err = await refusal(stub, request_proto(valid_request(**changes)))
    check(err, INVALID, ErrorCode.INVALID_REQUEST, retryable=False, secrets=(fresh_dsn,))


async def test_max_keys_limit_admits_the_limit_when_configured(
    stub: pb_grpc.FeatureServiceStub,
) -> None:
    keys = [{"key_type": "flow_id", "key_id": str(i)} for i in range(2)]
    assert (await get_features(stub, valid_request(feature_keys=keys)))["status"] == "OK"


async def test_request_id_is_absent_from_the_error_when_not_given(
    stub: pb_grpc.FeatureServiceStub,
) -> None:
    doc = valid_request()
    del doc["request_id"], doc["pins"]
    err = await refusal(stub, request_proto(doc))
    check(err, INVALID, ErrorCode.MISSING_PINS, retryable=False, request_id=None)


async def test_request_id_is_echoed_in_the_error_when_given(
    stub: pb_grpc.FeatureServiceStub,
) -> None:
    doc = valid_request(request_id="caller-ü-42", feature_groups=[{"name": "x", "version": "1"}])
    err = await refusal(stub, request_proto(doc))
    check(err, INVALID, ErrorCode.INVALID_REQUEST, retryable=False, request_id="caller-ü-42")


@pytest.mark.parametrize(
    "request_id", ["req-7", "", "x" * 129, "y" * 5000], ids=["valid", "empty", "129", "5000"]
)
async def test_error_response_matches_its_schema_when_request_id_is_invalid(
    stub: pb_grpc.FeatureServiceStub, request_id: str
) -> None:
    # The refusal of a bad request_id must itself be a valid ErrorResponse (request_id
    # 1..128 when present): an invalid id is not "known", so it is not echoed.
    unknown_group = [{"name": "no_such_group", "version": "v1"}]
    doc = valid_request(request_id=request_id, feature_groups=unknown_group)
    err = await refusal(stub, request_proto(doc))
    assert err.code == ErrorCode.INVALID_REQUEST.value
    shown = json_format.MessageToDict(err.error, preserving_proto_field_name=True)
    assert first_error(GET_FEATURES_ERROR, shown) is None, shown.get("request_id", "")[:40]


# -------------------------------------------------------------------- NOT_FOUND


async def test_not_found_when_pins_name_a_run_never_seen(
    stub: pb_grpc.FeatureServiceStub, fresh_dsn: str
) -> None:
    err = await refusal(stub, request_proto(valid_request("C")))
    check(
        err, grpc.StatusCode.NOT_FOUND, ErrorCode.NOT_FOUND, retryable=False, secrets=(fresh_dsn,)
    )


# ------------------------------------------------------------------ UNAVAILABLE


def _free_port() -> int:
    """A TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unavailable_and_retryable_when_database_is_unreachable(bus_root: Path) -> None:
    secret = "s3cret-Pa55word"
    dsn = f"postgresql://ofp_user:{secret}@127.0.0.1:{_free_port()}/ofp_db"
    dead_pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2, timeout=2)
    assert dead_pool is not None
    server = create_server(make_settings(bus_root, database_url=dsn), dead_pool, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = pb_grpc.FeatureServiceStub(channel)
            for _ in range(2):  # the second call must not be served from a stale cache
                err = await refusal(client, request_proto(valid_request()))
                check(
                    err,
                    grpc.StatusCode.UNAVAILABLE,
                    ErrorCode.UNAVAILABLE,
                    retryable=True,
                    secrets=(dsn, secret, "ofp_user", "ofp_db"),
                )
    finally:
        await server.stop(0)
        await dead_pool.close()


async def test_unavailable_and_retryable_when_no_basis_exists_yet(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    # An empty bus: the projector records the policy, but consumes nothing.
    await project_once(pool, bus_root)
    assert await pool.fetchval("SELECT count(*) FROM active_policy") == 1
    assert await pool.fetchval("SELECT count(*) FROM checkpoints") == 0
    async with running_server(pool, bus_root) as (_server, client):
        err = await refusal(client, request_proto(valid_request()))
    check(err, grpc.StatusCode.UNAVAILABLE, ErrorCode.UNAVAILABLE, retryable=True)


async def test_unavailable_and_retryable_when_no_policy_is_recorded_yet(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    async with running_server(pool, bus_root) as (_server, client):
        err = await refusal(client, request_proto(valid_request()))
    check(err, grpc.StatusCode.UNAVAILABLE, ErrorCode.UNAVAILABLE, retryable=True)


async def test_unavailable_not_retryable_when_require_ieg_has_no_graph_source(
    stub: pb_grpc.FeatureServiceStub,
) -> None:
    err = await refusal(stub, request_proto(valid_request(graph_resolution_mode="require_ieg")))
    check(err, grpc.StatusCode.UNAVAILABLE, ErrorCode.UNAVAILABLE, retryable=False)


async def test_unavailable_not_retryable_when_as_of_reaches_before_retained_state(
    projected: asyncpg.Pool, bus_root: Path
) -> None:
    window_start_us = AS_OF_US - LARGEST_WINDOW_US
    await projected.execute(
        "INSERT INTO retention (stream, retained_from_us) VALUES ($1, $2)"
        " ON CONFLICT (stream) DO UPDATE SET retained_from_us = EXCLUDED.retained_from_us",
        TOPIC,
        window_start_us + 1,
    )
    async with running_server(projected, bus_root) as (_server, client):
        err = await refusal(client, request_proto(valid_request()))
        check(err, grpc.StatusCode.UNAVAILABLE, ErrorCode.UNAVAILABLE, retryable=False)
        # One microsecond later the whole window is retained: served.
        later = valid_request(as_of_time_utc=format_micros(AS_OF_US + 1))
        assert (await get_features(client, later))["status"] == "OK"


async def test_missing_provenance_when_checkpoints_mix_offset_kinds(
    projected: asyncpg.Pool, bus_root: Path
) -> None:
    await projected.execute(
        "INSERT INTO checkpoints (stream, partition, offset_kind, next_offset)"
        " VALUES ($1, $2, 'kinesis_sequence', $3)",
        TOPIC,
        99,
        5,
    )
    async with running_server(projected, bus_root) as (_server, client):
        err = await refusal(client, request_proto(valid_request()))
    check(err, grpc.StatusCode.UNAVAILABLE, ErrorCode.MISSING_PROVENANCE, retryable=True)


# ------------------------------------------------- schema-derived invalid requests

UNKNOWN_FIELD_NUMBER = 999


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, *, length_delimited: bool) -> bytes:
    if length_delimited:
        payload = b"not-a-varint"
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return _varint(number << 3 | 0) + _varint(12345)


def _message_at(msg: Message, path: tuple[str | int, ...]) -> Message:
    for part in path:
        msg = msg[part] if isinstance(part, int) else getattr(msg, part)
    return msg


def to_wire(
    kind: str, path: tuple[str | int, ...], value: Any
) -> tuple[pb.GetFeaturesRequest, pb.GetFeaturesRequest | None] | None:
    """The derived case as a proto message, or None when protobuf cannot express it;
    with, for a case sent as raw unknown-field bytes, the same message without them.

    ParseDict expresses every case whose value fits the field's type. The rest are
    expressed the way they would arrive from a foreign client: an unknown property is
    an unknown field number, and a value of the wrong JSON type is the field sent with
    the wrong wire type (a varint for a string or message, bytes for an integer), which
    protobuf keeps as an unknown field. What stays inexpressible: a request that is not
    an object, and a seed outside uint64.
    """
    doc = apply(base_request(), path, value)
    try:
        return json_format.ParseDict(doc, pb.GetFeaturesRequest()), None
    except json_format.ParseError:
        pass
    if not path or kind not in ("wrong_type", "unknown_property"):
        return None
    # Build the message without the offending value, then add it as raw wire bytes.
    without = base_request() if kind == "unknown_property" else apply(base_request(), path, REMOVE)
    msg = json_format.ParseDict(without, pb.GetFeaturesRequest())
    *parent, name = path
    if isinstance(name, int):  # an array item of the wrong type: the array field itself
        *parent, name = parent
    plain = copy.deepcopy(msg)
    holder = _message_at(msg, tuple(parent))
    if kind == "unknown_property":
        raw = _field_bytes(UNKNOWN_FIELD_NUMBER, length_delimited=False)
    else:
        field = holder.DESCRIPTOR.fields_by_name[str(name)]
        varint_field = field.type in (field.TYPE_UINT64, field.TYPE_INT64, field.TYPE_BOOL)
        raw = _field_bytes(field.number, length_delimited=varint_field)
    holder.MergeFromString(raw)
    return msg, plain


DERIVED = list(derive(SCHEMAS[GET_FEATURES_REQUEST], base_request(), ()))


async def test_every_schema_derived_invalid_request_is_refused_when_sent_through_grpc(
    stub: pb_grpc.FeatureServiceStub, fresh_dsn: str
) -> None:
    """Every case protobuf can carry as a field value is refused like the JSON form.
    A case that only raw bytes can carry (an unknown field number, a field with the
    wrong wire type) is an unknown field to protobuf: ignored, as protobuf's
    evolution rule expects (docs/contract.md 4.1), so the answer is the one to the
    same message without those bytes."""
    assert len(DERIVED) >= 40
    by_parse_dict = 0
    expressible: list[tuple[str, tuple[str | int, ...], pb.GetFeaturesRequest]] = []
    ignored: list[tuple[str, tuple[str | int, ...], pb.GetFeaturesRequest,
                        pb.GetFeaturesRequest]] = []
    for kind, path, value in DERIVED:
        try:
            json_format.ParseDict(apply(base_request(), path, value), pb.GetFeaturesRequest())
            by_parse_dict += 1
        except json_format.ParseError:
            pass
        wire = to_wire(kind, path, value)
        if wire is not None and wire[1] is None:
            expressible.append((kind, path, wire[0]))
        elif wire is not None and wire[1] is not None:
            ignored.append((kind, path, wire[0], wire[1]))
    # ParseDict alone expresses ~59% (the wrong-type and unknown-property cases cannot
    # be a valid message); on the wire nearly all are.
    assert by_parse_dict >= 0.5 * len(DERIVED)
    assert len(expressible) + len(ignored) >= 0.7 * len(DERIVED), len(DERIVED)
    assert len(ignored) >= 10

    failures: list[str] = []
    for kind, path, msg in expressible:
        label = f"{format_path(path) or '<root>'}:{kind}"
        try:
            await stub.GetFeatures(copy.deepcopy(msg))
        except grpc.aio.AioRpcError as exc:
            err = rich_error(exc)
            want = expected_code(kind, path)
            if err.grpc_code != INVALID or err.code != want.value:
                failures.append(f"{label}: {err.grpc_code.name} {err.code} (want {want})")
                continue
            if err.error.retryable or err.info.reason != want.value:
                failures.append(f"{label}: retryable={err.error.retryable} {err.info.reason}")
            assert_clean_text(err.error.detail, fresh_dsn)
            assert_clean_text(err.message, fresh_dsn)
        else:
            failures.append(f"{label}: accepted")
    for kind, path, msg, plain in ignored:
        label = f"{format_path(path) or '<root>'}:{kind} (as unknown field bytes)"
        outcomes = []
        for m in (msg, plain):
            try:
                await stub.GetFeatures(copy.deepcopy(m))
                outcomes.append(("OK", ""))
            except grpc.aio.AioRpcError as exc:
                err = rich_error(exc)
                outcomes.append((err.grpc_code.name, err.code))
        if outcomes[0] != outcomes[1]:
            failures.append(f"{label}: {outcomes[0]}, without the bytes {outcomes[1]}")
    assert not failures, "\n".join(failures)

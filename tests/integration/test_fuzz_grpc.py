"""Hypothesis sends generated GetFeaturesRequest messages to one real server (SPEC 4.5).

Whatever arrives, the answer is either a snapshot whose hash recomputes, or a refusal
with a contract code and a parseable ErrorResponse: never INTERNAL or UNKNOWN.

How the async server and Hypothesis meet: the test is an `async def` under `@given`.
pytest-asyncio wraps Hypothesis' inner test so that every example runs as a coroutine
on the session event loop, the same loop the fixtures built the asyncpg pool, the
grpc.aio server and the channel on. Fixtures are therefore set up once per test, not
per example (hence the suppressed `function_scoped_fixture` health check, which is what
we want here: one server, 150 requests). No thread, no second loop, no blocking client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.config import Settings
from ofp.contracts.errors import GRPC_CODE, ErrorCode
from ofp.contracts.hashing import normalize_json_snapshot, verify_response
from ofp.contracts.schemas import GET_FEATURES_ERROR, GET_FEATURES_RESPONSE, first_error
from ofp.contracts.timefmt import format_micros
from tests.support.harness import get_features, project_once, response_json, running_server
from tests.support.rich_errors import assert_clean_text, rich_error
from tests.support.streams import BASE_US, HOUR_US, generate, pins

pytestmark = pytest.mark.integration

METHOD = "/ofp.v1.FeatureService/GetFeatures"
UINT64_MAX = 2**64 - 1
UNKNOWN_FIELD = b"\xb8\x3e\x01"  # field 999, varint 1
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MAX_MESSAGE_BYTES = Settings().max_message_bytes
PIN_FIELDS = (
    "platform_run_id",
    "scenario_run_id",
    "scenario_id",
    "manifest_fingerprint",
    "parameter_hash",
)


@dataclass(frozen=True)
class Fuzzed:
    """A request as field values (None = unset), plus optional unknown wire bytes."""

    pins: dict[str, Any] | None
    as_of: str | None
    keys: list[tuple[str | None, str | None]]
    groups: list[tuple[str | None, str | None]]
    mode: str | None
    request_id: str | None
    unknown: bool

    def to_bytes(self) -> bytes:
        msg = pb.GetFeaturesRequest()
        if self.pins is not None:
            msg.pins.SetInParent()
            for name, value in self.pins.items():
                if value is not None:
                    setattr(msg.pins, name, value)
        if self.as_of is not None:
            msg.as_of_time_utc = self.as_of
        for key_type, key_id in self.keys:
            key = msg.feature_keys.add()
            if key_type is not None:
                key.key_type = key_type
            if key_id is not None:
                key.key_id = key_id
        for group_name, version in self.groups:
            group = msg.feature_groups.add()
            if group_name is not None:
                group.name = group_name
            if version is not None:
                group.version = version
        if self.mode is not None:
            msg.graph_resolution_mode = self.mode
        if self.request_id is not None:
            msg.request_id = self.request_id
        return msg.SerializeToString() + (UNKNOWN_FIELD if self.unknown else b"")


# ----------------------------------------------------------------------- strategies

ODD_STRINGS = ["", " ", "\x00", "a\x00b", "é", "💥" * 10, "\u202e", "'; DROP TABLE x;--", "%s"]
small_text = st.text(max_size=40) | st.sampled_from(ODD_STRINGS)
any_text = small_text | st.text(min_size=200, max_size=3000)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


as_of_strings = st.one_of(
    st.integers(BASE_US - 30 * 24 * HOUR_US, BASE_US + 30 * 24 * HOUR_US).map(format_micros),
    st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999).map(format_micros),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", fullmatch=True
    ),
    any_text,
)
seeds = st.sampled_from([0, 7, 1, UINT64_MAX]) | st.integers(0, UINT64_MAX)
valid_pins = st.sampled_from(["A", "B", "C"]).map(pins)  # run C is never seen
seen_pins = st.sampled_from(["A", "B"]).map(pins)
wild_pins = st.fixed_dictionaries(
    {name: maybe(st.sampled_from([pins("A")[name]]) | small_text) for name in PIN_FIELDS}
    | {"seed": maybe(seeds), "run_id": maybe(st.just("1" * 32) | small_text)}
)
key_types = st.sampled_from(["flow_id", "merchant_id"]) | small_text
key_ids = st.sampled_from(["1", "2", "3", "42"]) | any_text
keys = st.lists(st.tuples(maybe(key_types), maybe(key_ids)), max_size=120)
valid_key_ids = st.sampled_from(["1", "2", "3", "42"]) | st.text(min_size=1, max_size=256)
valid_keys = st.lists(st.tuples(st.just("flow_id"), valid_key_ids), min_size=1, max_size=5)
group_names = st.sampled_from(["core_features"]) | small_text
group_versions = st.sampled_from(["v1", "v2"]) | small_text
groups = st.lists(st.tuples(maybe(group_names), maybe(group_versions)), max_size=20)
valid_groups = st.just([("core_features", "v1")])
modes = st.sampled_from(["none", "resolve_if_needed", "require_ieg"]) | small_text

wild_requests = st.builds(
    Fuzzed,
    pins=maybe(valid_pins | wild_pins),
    as_of=maybe(as_of_strings),
    keys=keys,
    groups=groups,
    mode=maybe(modes),
    request_id=maybe(any_text),
    unknown=st.booleans(),
)


@st.composite
def near_valid_requests(draw: st.DrawFn) -> Fuzzed:
    """Each part valid three times in four, so most requests reach the database read."""

    def part(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
        return draw(wild if draw(st.booleans()) and draw(st.booleans()) else valid)

    near_as_of = st.integers(BASE_US - 10 * 24 * HOUR_US, BASE_US + 20 * 24 * HOUR_US)
    return Fuzzed(
        pins=part(seen_pins, valid_pins | wild_pins),
        as_of=part(near_as_of.map(format_micros), as_of_strings),
        keys=part(valid_keys, keys),
        groups=part(valid_groups, groups),
        mode=part(st.sampled_from([None, "none", "resolve_if_needed"]), maybe(modes)),
        request_id=part(maybe(st.text(min_size=1, max_size=128)), maybe(any_text)),
        unknown=False,
    )


@st.composite
def requests(draw: st.DrawFn) -> Fuzzed:
    near = draw(st.booleans()) or draw(st.booleans())
    return draw(near_valid_requests() if near else wild_requests)


# ------------------------------------------------------------------------- fixtures


@asynccontextmanager
async def raw_client(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[Any]:
    """A GetFeatures callable taking request bytes as they go on the wire."""
    async with (
        running_server(pool, bus_root) as (server, _stub),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield channel.unary_unary(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=pb.GetFeaturesResponse.FromString,
        )


@pytest.fixture
async def raw_call(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[Any]:
    """One server over runs A and B (run C never seen) for all examples of a test."""
    generate(11, n_events=200, runs=("A", "B")).write(bus_root)
    await project_once(pool, bus_root)
    async with raw_client(pool, bus_root) as call:
        yield call


async def assert_contract_answer(raw_call: Any, request: bytes) -> str:
    """Send one request; check the answer is a contract answer; return its outcome code."""
    try:
        response = await raw_call(request, timeout=30)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in NEVER, (exc.code(), exc.details())
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(request) > MAX_MESSAGE_BYTES:
            return "TOO_LARGE"  # refused by gRPC before the servicer sees it
        err = rich_error(exc)
        code = ErrorCode(err.code)
        assert GRPC_CODE[code] == exc.code()
        assert err.info.reason == code.value
        assert err.error.status == "ERROR"
        assert_clean_text(err.error.detail)
        shown = json_format.MessageToDict(err.error, preserving_proto_field_name=True)
        problem = first_error(GET_FEATURES_ERROR, shown)
        assert problem is None, problem
        return code.value
    doc = response_json(response)
    assert doc["status"] == "OK"
    readable = {**doc, "snapshot": normalize_json_snapshot(doc["snapshot"])}
    problem = first_error(GET_FEATURES_RESPONSE, readable)
    assert problem is None, problem
    matches, claimed, recomputed = verify_response(doc)
    assert matches, (claimed, recomputed)
    return "OK"


# ---------------------------------------------------------------------------- tests


VALID = Fuzzed(
    pins("A"),
    format_micros(BASE_US + 50 * HOUR_US),
    [("flow_id", "1")],
    [("core_features", "v1")],
    None,
    "r",
    unknown=False,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(request=requests())
@example(request=VALID)
@example(request=Fuzzed(**{**VALID.__dict__, "pins": pins("C")}))
@example(request=Fuzzed(**{**VALID.__dict__, "keys": [("merchant_id", "1")]}))
@example(request=Fuzzed(**{**VALID.__dict__, "keys": [("flow_id", "a\x00b")]}))
@example(request=Fuzzed(**{**VALID.__dict__, "request_id": "x" * 3000}))
async def test_every_generated_request_gets_a_contract_answer_when_sent(
    raw_call: Any, request: Fuzzed
) -> None:
    await assert_contract_answer(raw_call, request.to_bytes())


# Regressions the fuzzer found, kept as plain tests so they read as behaviour.


async def test_snapshot_reports_missing_key_when_its_type_matches_no_requested_group(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(11, n_events=50, runs=("A",)).write(bus_root)
    await project_once(pool, bus_root)
    request = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(BASE_US + 50 * HOUR_US),
        "feature_keys": [{"key_type": "merchant_id", "key_id": "1"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
    }
    async with running_server(pool, bus_root) as (_server, stub):
        doc = await get_features(stub, request)
    assert doc["snapshot"]["features"] == {}
    assert doc["snapshot"]["freshness"]["missing_feature_keys"] == ["merchant_id:1"]
    assert verify_response(doc)[0]


@pytest.mark.parametrize(
    ("where", "value"),
    [("key_id", "1\x002"), ("scenario_id", "scenario_\x00A"), ("request_id", "r\x00")],
)
async def test_nul_character_gets_a_contract_answer_when_the_rest_is_valid(
    raw_call: Any, where: str, value: str
) -> None:
    # NUL passes the schema (no pattern on these fields) but PostgreSQL text refuses it.
    if where == "key_id":
        request = Fuzzed(**{**VALID.__dict__, "keys": [("flow_id", value)]})
    elif where == "scenario_id":
        request = Fuzzed(**{**VALID.__dict__, "pins": {**pins("A"), "scenario_id": value}})
    else:
        request = Fuzzed(**{**VALID.__dict__, "request_id": value})
    outcome = await assert_contract_answer(raw_call, request.to_bytes())
    # A snapshot (key missing / run not found) or a refusal as invalid: never INTERNAL.
    assert outcome in ("OK", ErrorCode.NOT_FOUND.value, ErrorCode.INVALID_REQUEST.value)


async def test_request_that_is_not_protobuf_is_refused_as_invalid_argument(
    raw_call: Any,
) -> None:
    # A truncated length-delimited field: no message can be decoded from these bytes.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(b"\x0a\x05ab", timeout=30)
    assert caught.value.code() not in NEVER, (caught.value.code(), caught.value.details())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

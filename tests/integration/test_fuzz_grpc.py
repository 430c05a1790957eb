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
from ofp.contracts.errors import GRPC_CODE, ErrorCode
from ofp.contracts.hashing import verify_response

from tests.support.harness import get_features, project_once, response_json, running_server
from tests.support.rich_errors import assert_clean_text, rich_error
from tests.support.streams import BASE_US, HOUR_US, format_micros, generate, pins

pytestmark = pytest.mark.integration

METHOD = "/ofp.v1.FeatureService/GetFeatures"
UINT64_MAX = 2**64 - 1
UNKNOWN_FIELD = b"\xb8\x3e\x01"  # field 999, varint 1
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
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
        for name, version in self.groups:
            group = msg.feature_groups.add()
            if name is not None:
                group.name = name
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
valid_keys = st.lists(st.tuples(st.just("flow_id"), key_ids), min_size=1, max_size=5)
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
# Mostly-valid requests reach the database read, where the interesting failures live:
# each part is valid most of the time, wild otherwise.
near_as_of = st.integers(BASE_US - 10 * 24 * HOUR_US, BASE_US + 20 * 24 * HOUR_US).map(
    format_micros
)
near_valid_requests = st.builds(
    Fuzzed,
    pins=st.one_of(seen_pins, seen_pins, seen_pins, valid_pins, wild_pins),
    as_of=st.one_of(near_as_of, near_as_of, near_as_of, as_of_strings),
    keys=st.one_of(valid_keys, valid_keys, valid_keys, keys),
    groups=st.one_of(valid_groups, valid_groups, valid_groups, groups),
    mode=maybe(st.sampled_from(["none", "resolve_if_needed"]) | modes),
    request_id=maybe(small_text),
    unknown=st.just(False),
)
requests = near_valid_requests | wild_requests


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
async def raw_call(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[Any]:
    """A unary callable taking request bytes, against a server with runs A and B."""
    generate(11, n_events=200, runs=("A", "B")).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (server, _stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel.unary_unary(
                METHOD,
                request_serializer=lambda b: b,
                response_deserializer=pb.GetFeaturesResponse.FromString,
            )


async def assert_contract_answer(raw_call: Any, request: bytes) -> str:
    """Send one request; check the answer is a contract answer; return its outcome code."""
    try:
        response = await raw_call(request, timeout=30)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in NEVER, (exc.code(), exc.details())
        err = rich_error(exc)
        code = ErrorCode(err.error.code)
        assert GRPC_CODE[code] == exc.code()
        assert err.info.reason == code.value
        assert err.error.status == "ERROR"
        assert_clean_text(err.error.detail)
        return code.value
    doc = response_json(response)
    assert doc["status"] == "OK"
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
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(request=requests)
async def test_every_generated_request_gets_a_contract_answer_when_sent(
    raw_call: Any, request: Fuzzed
) -> None:
    from hypothesis import assume, event
    from ofp.contracts.request import request_to_json, validate_request_json
    try:
        v = validate_request_json(request_to_json(pb.GetFeaturesRequest.FromString(request.to_bytes())))
        known = (v.pins not in (pins("A"), pins("B")) or any(k != "flow_id" for k, _ in v.keys)
                 or "\x00" in repr(v))
        assume(not known)
        event("valid")
    except Exception as e:
        if type(e).__name__ == "UnsatisfiedAssumption": raise
    out = await assert_contract_answer(raw_call, request.to_bytes())
    event(out)


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


async def test_key_with_a_nul_character_is_answered_when_pins_and_group_are_valid(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(11, n_events=50, runs=("A",)).write(bus_root)
    await project_once(pool, bus_root)
    request = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(BASE_US + 50 * HOUR_US),
        "feature_keys": [{"key_type": "flow_id", "key_id": "1\x002"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
    }
    async with running_server(pool, bus_root) as (server, _stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(
                METHOD,
                request_serializer=lambda b: b,
                response_deserializer=pb.GetFeaturesResponse.FromString,
            )
            outcome = await assert_contract_answer(
                call, json_format.ParseDict(request, pb.GetFeaturesRequest()).SerializeToString()
            )
    # Either answer is acceptable: a snapshot listing the key as missing, or a refusal.
    assert outcome in ("OK", ErrorCode.INVALID_REQUEST.value)

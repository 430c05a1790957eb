"""GetFeatures request validation (docs/contract.md 4.1, 4.5).

Invalid requests are DERIVED from the request schema by walking it (following $refs),
so a constraint added to the schema is tested without touching this file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ofp.api.v1 import feature_service_pb2
from ofp.contracts import request as request_module
from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.request import PIN_NAMES, request_to_json, validate_request_json
from ofp.contracts.schemas import GET_FEATURES_REQUEST, SCHEMAS, format_path

SCENARIO_RUN_ID = "c" * 32
PINS: dict[str, Any] = {
    "platform_run_id": "platform_20260206T000000Z",
    "scenario_run_id": SCENARIO_RUN_ID,
    "scenario_id": "baseline",
    "manifest_fingerprint": "a" * 64,
    "parameter_hash": "b" * 64,
    "seed": 7,
    "run_id": SCENARIO_RUN_ID,
}


def base_request() -> dict[str, Any]:
    """A valid request carrying every optional property, so the walk reaches them all."""
    return {
        "pins": dict(PINS),
        "as_of_time_utc": "2026-02-06T00:00:01.000000Z",
        "feature_keys": [{"key_type": "flow_id", "key_id": "42"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
        "graph_resolution_mode": "none",
        "request_id": "req-1",
    }


# --------------------------------------------------------------------------- derivation

REMOVE = object()
WRONG_TYPE: dict[str, Any] = {
    "string": 12345,
    "integer": "not-an-integer",
    "number": "not-a-number",
    "boolean": "not-a-boolean",
    "array": "not-an-array",
    "object": "not-an-object",
}
Path = tuple[str | int, ...]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"]]
    return schema


def derive(schema: dict[str, Any], instance: Any, path: Path) -> Iterator[tuple[str, Path, Any]]:
    """(kind, path, replacement or REMOVE) for every constraint the schema states."""
    schema = resolve(schema)
    kind = schema.get("type")
    if kind in WRONG_TYPE:
        yield "wrong_type", path, WRONG_TYPE[kind]
    if "enum" in schema:
        yield "not_in_enum", path, "not_a_member"
    if kind == "string":
        if schema.get("minLength", 0) > 0:
            yield "below_min_length", path, "x" * (schema["minLength"] - 1)
        if "maxLength" in schema:
            yield "above_max_length", path, "x" * (schema["maxLength"] + 1)
        if "pattern" in schema:
            yield "pattern_violated", path, "!not matching!"
    if kind == "integer":
        if "minimum" in schema:
            yield "below_minimum", path, schema["minimum"] - 1
        if "maximum" in schema:
            yield "above_maximum", path, schema["maximum"] + 1
    if kind == "array":
        if schema.get("minItems", 0) > 0:
            yield "below_min_items", path, copy.deepcopy(instance[: schema["minItems"] - 1])
        if "maxItems" in schema:
            many = [copy.deepcopy(instance[0]) for _ in range(schema["maxItems"] + 1)]
            yield "above_max_items", path, many
        yield from derive(schema["items"], instance[0], (*path, 0))
    if kind == "object":
        required = set(schema.get("required", ()))
        for name, sub in schema.get("properties", {}).items():
            if name in required:
                yield "removed", (*path, name), REMOVE
            if name in instance:
                yield from derive(sub, instance[name], (*path, name))
        if schema.get("additionalProperties") is False:
            yield "unknown_property", (*path, "unexpected_field"), "surprise"


def apply(doc: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    if value is REMOVE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def expected_code(kind: str, path: Path) -> ErrorCode:
    """MISSING_PINS exactly when `pins` or one of the six pins was removed."""
    pin = len(path) == 2 and path[0] == "pins" and path[1] in PIN_NAMES
    if kind == "removed" and (path == ("pins",) or pin):
        return ErrorCode.MISSING_PINS
    return ErrorCode.INVALID_REQUEST


DERIVED = [
    pytest.param(kind, path, value, id=f"{format_path(path) or '<root>'}:{kind}")
    for kind, path, value in derive(SCHEMAS[GET_FEATURES_REQUEST], base_request(), ())
]


def test_the_walk_derives_cases_for_every_level_when_schema_is_walked() -> None:
    ids = {p.id for p in DERIVED}
    for expected in (
        "unexpected_field:unknown_property",
        "pins:removed",
        "pins.seed:above_maximum",
        "pins.run_id:pattern_violated",
        "pins.unexpected_field:unknown_property",
        "feature_keys:above_max_items",
        "feature_keys[0].key_id:above_max_length",
        "feature_groups[0].unexpected_field:unknown_property",
        "graph_resolution_mode:not_in_enum",
    ):
        assert expected in ids


def test_base_request_is_accepted_when_valid() -> None:
    valid = validate_request_json(base_request())
    assert valid.pins == PINS
    assert valid.as_of_us == 1_770_336_001_000_000
    assert valid.as_of_text == "2026-02-06T00:00:01.000000Z"
    assert valid.keys == (("flow_id", "42"),)
    assert valid.groups == (("core_features", "v1"),)
    assert valid.graph_resolution_mode == "none"
    assert valid.request_id == "req-1"


@pytest.mark.parametrize(("kind", "path", "value"), DERIVED)
def test_request_is_refused_when_it_violates_the_schema(kind: str, path: Path, value: Any) -> None:
    doc = apply(base_request(), path, value)
    with pytest.raises(ContractError) as caught:
        validate_request_json(doc)
    error = caught.value
    assert error.code == expected_code(kind, path), error.detail
    assert not error.retryable
    names = [part for part in path if isinstance(part, str)]
    if names:
        assert names[-1] in error.detail
    assert "Traceback" not in error.detail


# ------------------------------------------------------------------ rules beyond the schema


def refusal(doc: dict[str, Any], **limits: int) -> ContractError:
    with pytest.raises(ContractError) as caught:
        validate_request_json(doc, **limits)
    return caught.value


def test_request_is_refused_when_as_of_month_is_13() -> None:
    doc = base_request()
    doc["as_of_time_utc"] = "2026-13-06T00:00:01.000000Z"
    error = refusal(doc)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert "as_of_time_utc" in error.detail


@pytest.mark.parametrize(("text", "canonical"), [
    ("2026-02-06T12:00:00Z", "2026-02-06T12:00:00.000000Z"),
    ("2026-02-06T12:00:00.5Z", "2026-02-06T12:00:00.500000Z"),
    ("2026-02-06T12:00:00.123Z", "2026-02-06T12:00:00.123000Z"),
    ("2026-02-06T12:00:00.123456Z", "2026-02-06T12:00:00.123456Z"),
    ("2026-02-06T12:00:00.123456789Z", "2026-02-06T12:00:00.123456Z"),  # truncated
    ("2026-02-06T12:00:00.999999999+00:00", "2026-02-06T12:00:00.999999Z"),
    ("2026-02-06t12:00:00z", "2026-02-06T12:00:00.000000Z"),
])
def test_as_of_accepts_rfc3339_utc_with_0_to_9_digits_and_states_six(
    text: str, canonical: str
) -> None:
    doc = base_request()
    doc["as_of_time_utc"] = text
    assert validate_request_json(doc).as_of_text == canonical


@pytest.mark.parametrize("text", [
    "2026-02-06T12:00:00.1234567890Z", "2026-02-06T12:00:00+01:00", "2026-02-06 12:00:00Z",
    "2026-02-06T12:00:00", "2026-02-06", "1770379200", "2026-02-06T24:00:00Z", "",
])
def test_as_of_refusal_says_what_was_expected_with_an_example(text: str) -> None:
    doc = base_request()
    doc["as_of_time_utc"] = text
    error = refusal(doc)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert error.detail.startswith("as_of_time_utc: ")
    assert "2026-02-06T12:00:00Z" in error.detail and "^" not in error.detail


def test_as_of_may_be_a_protobuf_timestamp_instead() -> None:
    msg = proto_request()
    msg.ClearField("as_of_time_utc")
    msg.as_of_time.FromJsonString("2026-02-06T00:00:01.123456789Z")
    valid = validate_request_json(request_to_json(msg))
    assert valid.as_of_text == "2026-02-06T00:00:01.123456Z"
    msg.as_of_time_utc = "2026-02-06T00:00:01Z"
    assert "not both" in refusal(request_to_json(msg)).detail
    msg.ClearField("as_of_time_utc")
    msg.ClearField("as_of_time")
    assert "as_of_time_utc: required" in refusal(request_to_json(msg)).detail


def test_request_is_refused_when_as_of_is_february_30() -> None:
    doc = base_request()
    doc["as_of_time_utc"] = "2026-02-30T00:00:01.000000Z"
    assert refusal(doc).code == ErrorCode.INVALID_REQUEST


def test_request_is_refused_when_run_id_differs_from_scenario_run_id() -> None:
    doc = base_request()
    doc["pins"]["run_id"] = "d" * 32
    error = refusal(doc)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert "run_id" in error.detail


def test_request_is_accepted_when_run_id_is_absent() -> None:
    doc = base_request()
    del doc["pins"]["run_id"]
    assert "run_id" not in validate_request_json(doc).pins


def test_request_is_refused_when_a_group_name_repeats() -> None:
    doc = base_request()
    doc["feature_groups"] = [
        {"name": "core_features", "version": "v1"},
        {"name": "core_features", "version": "v2"},
    ]
    error = refusal(doc)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert "feature_groups[1]" in error.detail


def test_request_is_refused_when_configured_max_keys_is_exceeded() -> None:
    doc = base_request()
    doc["feature_keys"] = [{"key_type": "flow_id", "key_id": str(i)} for i in range(3)]
    assert validate_request_json(doc, max_keys=3).keys[-1] == ("flow_id", "2")
    error = refusal(doc, max_keys=2)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert "feature_keys" in error.detail


def test_request_is_refused_when_configured_max_groups_is_exceeded() -> None:
    doc = base_request()
    doc["feature_groups"] = [{"name": f"g{i}", "version": "v1"} for i in range(3)]
    assert refusal(doc, max_groups=2).code == ErrorCode.INVALID_REQUEST


def test_groups_keep_request_order_when_valid() -> None:
    doc = base_request()
    doc["feature_groups"] = [{"name": "b", "version": "v1"}, {"name": "a", "version": "v2"}]
    assert validate_request_json(doc).groups == (("b", "v1"), ("a", "v2"))


def test_seed_zero_is_accepted_when_present() -> None:
    doc = base_request()
    doc["pins"]["seed"] = 0
    assert validate_request_json(doc).pins["seed"] == 0


def test_request_is_refused_with_missing_pins_when_seed_is_absent() -> None:
    doc = base_request()
    del doc["pins"]["seed"]
    error = refusal(doc)
    assert error.code == ErrorCode.MISSING_PINS
    assert "seed" in error.detail


def test_request_is_refused_with_missing_pins_when_pins_is_null() -> None:
    doc = base_request()
    doc["pins"] = None
    assert refusal(doc).code == ErrorCode.MISSING_PINS


def test_graph_resolution_mode_defaults_to_none_when_absent() -> None:
    doc = base_request()
    del doc["graph_resolution_mode"], doc["request_id"]
    valid = validate_request_json(doc)
    assert valid.graph_resolution_mode == "none"
    assert valid.request_id is None


def test_request_is_refused_when_seed_is_a_bool() -> None:
    doc = base_request()
    doc["pins"]["seed"] = True
    assert refusal(doc).code == ErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- proto -> JSON


def proto_request(seed: int | None = 0) -> feature_service_pb2.GetFeaturesRequest:
    msg = feature_service_pb2.GetFeaturesRequest(as_of_time_utc="2026-02-06T00:00:01.000000Z")
    pins = msg.pins
    pins.platform_run_id = PINS["platform_run_id"]
    pins.scenario_run_id = PINS["scenario_run_id"]
    pins.scenario_id = PINS["scenario_id"]
    pins.manifest_fingerprint = PINS["manifest_fingerprint"]
    pins.parameter_hash = PINS["parameter_hash"]
    if seed is not None:
        pins.seed = seed
    msg.feature_keys.add(key_type="flow_id", key_id="42")
    msg.feature_groups.add(name="core_features", version="v1")
    return msg


def test_request_to_json_keeps_seed_zero_when_set() -> None:
    doc = request_to_json(proto_request(seed=0))
    assert doc["pins"]["seed"] == 0
    assert validate_request_json(doc).pins["seed"] == 0


def test_request_to_json_round_trips_when_message_is_valid() -> None:
    msg = proto_request(seed=18446744073709551615)
    msg.request_id = "req-9"
    doc = request_to_json(msg)
    assert doc == {
        "pins": {k: v for k, v in PINS.items() if k != "run_id"} | {"seed": 18446744073709551615},
        "as_of_time_utc": "2026-02-06T00:00:01.000000Z",
        "feature_keys": [{"key_type": "flow_id", "key_id": "42"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
        "request_id": "req-9",
    }
    valid = validate_request_json(doc)
    assert valid.request_id == "req-9"
    rebuilt = feature_service_pb2.GetFeaturesRequest()
    rebuilt.pins.seed = valid.pins["seed"]
    assert rebuilt.pins.seed == msg.pins.seed


def test_request_to_json_gives_missing_pins_when_seed_is_unset() -> None:
    doc = request_to_json(proto_request(seed=None))
    assert "seed" not in doc["pins"]
    assert refusal(doc).code == ErrorCode.MISSING_PINS


def test_request_to_json_ignores_unknown_fields_and_reports_them() -> None:
    """A client built from a newer proto: its extra fields are ignored (protobuf's
    evolution rule), and reported by message so the server can count them."""
    # field 999, varint 1: a field this contract does not define
    unknown = b"\xb8\x3e\x01"
    top = feature_service_pb2.GetFeaturesRequest.FromString(
        proto_request().SerializeToString() + unknown
    )
    nested = proto_request()
    nested.feature_groups[0].MergeFromString(unknown)
    plain = request_to_json(proto_request())
    for msg, where in ((top, "GetFeaturesRequest"), (nested, "FeatureGroupRef")):
        seen: list[dict[str, list[int]]] = []
        doc = request_to_json(msg, seen.append)
        assert doc == plain
        assert seen == [{where: [999]}]
        assert validate_request_json(doc).keys == (("flow_id", "42"),)
    quiet: list[dict[str, list[int]]] = []
    request_to_json(proto_request(), quiet.append)
    assert quiet == []


def test_direct_conversion_covers_every_field_of_the_generated_messages() -> None:
    # A contract change that adds a field turns the direct conversion off (the
    # generic printer takes over); this says it is time to teach it the field.
    assert request_module._DIRECT


_text = st.text(max_size=6)


@st.composite
def any_request(draw: st.DrawFn) -> feature_service_pb2.GetFeaturesRequest:
    msg = feature_service_pb2.GetFeaturesRequest()
    if draw(st.booleans()):
        msg.pins.SetInParent()
        for name in (*PIN_NAMES, "run_id"):
            if draw(st.booleans()):
                if name == "seed":
                    msg.pins.seed = draw(st.integers(0, 2**64 - 1))
                else:
                    setattr(msg.pins, name, draw(_text))
    for name in ("as_of_time_utc", "graph_resolution_mode", "request_id", "policy_revision"):
        if draw(st.booleans()):
            setattr(msg, name, draw(_text))
    for _ in range(draw(st.integers(0, 2))):
        o = msg.min_basis.add()
        if draw(st.booleans()):
            o.partition = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            o.offset = draw(_text)
    if draw(st.booleans()):
        msg.as_of_time.seconds = draw(st.integers(-62135596800, 253402300799))
        msg.as_of_time.nanos = draw(st.integers(0, 999_999_999))
    for _ in range(draw(st.integers(0, 3))):
        key = msg.feature_keys.add()
        for name in ("key_type", "key_id"):
            if draw(st.booleans()):
                setattr(key, name, draw(_text))
    for _ in range(draw(st.integers(0, 3))):
        group = msg.feature_groups.add()
        for name in ("name", "version"):
            if draw(st.booleans()):
                setattr(group, name, draw(_text))
    return msg


@given(any_request())
def test_direct_conversion_equals_the_generic_printer(
    msg: feature_service_pb2.GetFeaturesRequest,
) -> None:
    assert request_to_json(msg) == request_module._request_to_json_generic(msg, None)

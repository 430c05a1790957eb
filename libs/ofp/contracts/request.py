"""GetFeatures request validation (docs/contract.md 4.1): proto -> JSON form -> `ValidRequest`.

Every constraint of `get_features_request.schema.yaml` is enforced through the schema
itself; the rules a schema cannot say are checked here:

- `pins` absent (or null) or any of the six pins absent -> MISSING_PINS; a pin that is
  present but malformed is INVALID_REQUEST like every other violation;
- `as_of_time_utc` must be a real calendar instant in the micros form;
- `pins.run_id`, when present, must equal `pins.scenario_run_id`;
- a group name at most once;
- at most `max_keys` keys and `max_groups` groups (the configured limits; the schema's
  maxItems are the hard upper bounds).

Details name the field path and never carry stack traces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# types-protobuf is not a dev dependency yet; the ignore is inert once it is.
from google.protobuf import json_format  # type: ignore[import-untyped,unused-ignore]
from google.protobuf.message import Message  # type: ignore[import-untyped,unused-ignore]
from google.protobuf.unknown_fields import (  # type: ignore[import-untyped,unused-ignore]
    UnknownFieldSet,
)

from ofp.api.v1 import feature_service_pb2
from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.schemas import GET_FEATURES_REQUEST, first_error
from ofp.contracts.timefmt import AS_OF_EXPECTED, format_micros, parse_as_of

PIN_NAMES = (
    "platform_run_id",
    "scenario_run_id",
    "scenario_id",
    "manifest_fingerprint",
    "parameter_hash",
    "seed",
)
DEFAULT_GRAPH_RESOLUTION_MODE = "none"


@dataclass(frozen=True)
class ValidRequest:
    """A GetFeatures request that passed every contract rule."""

    pins: dict[str, Any]  # the pins as given (run_id included when present); seed is an int
    as_of_us: int  # microseconds since the Unix epoch, UTC
    as_of_text: str  # canonical micros form of as_of_us
    keys: tuple[tuple[str, str], ...]  # (key_type, key_id) in request order
    groups: tuple[tuple[str, str], ...]  # (name, version) in request order
    graph_resolution_mode: str = DEFAULT_GRAPH_RESOLUTION_MODE
    request_id: str | None = None
    policy_revision: str | None = None  # None: the active revision answers
    # Read-your-basis: (partition, exclusive-next offset) the answer's basis must reach.
    min_basis: tuple[tuple[int, int], ...] = ()


def _invalid(detail: str) -> ContractError:
    return ContractError(ErrorCode.INVALID_REQUEST, detail)


def _messages(msg: Message) -> Iterator[Message]:
    """`msg` and every message nested in it (set singular and repeated message fields)."""
    yield msg
    for descriptor, value in msg.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        if descriptor.is_repeated:
            for item in value:
                yield from _messages(item)
        else:
            yield from _messages(value)


def _field_names(message_class: Any) -> frozenset[str]:
    return frozenset(f.name for f in message_class.DESCRIPTOR.fields)


_PIN_FIELDS = (*PIN_NAMES, "run_id")
# The direct conversion below knows these messages field by field. It is used
# only while the generated messages have exactly these fields, so a contract
# change can never be dropped silently: it falls back to MessageToDict.
_DIRECT = (
    _field_names(feature_service_pb2.GetFeaturesRequest)
    == {"pins", "as_of_time_utc", "feature_keys", "feature_groups", "graph_resolution_mode",
        "request_id", "policy_revision", "as_of_time", "min_basis"}
    and _field_names(feature_service_pb2.ContextPins) == set(_PIN_FIELDS)
    and _field_names(feature_service_pb2.FeatureKey) == {"key_type", "key_id"}
    and _field_names(feature_service_pb2.FeatureGroupRef) == {"name", "version"}
)


UnknownFields = Callable[[dict[str, list[int]]], None]


def request_to_json(
    msg: feature_service_pb2.GetFeaturesRequest, on_unknown: UnknownFields | None = None
) -> dict[str, Any]:
    """The JSON form of a proto request, with `pins.seed` as an int.

    Equal to `MessageToDict(msg, preserving_proto_field_name=True)` with the seed read
    back as a number (tests/unit/test_request_validation.py proves it), built field by
    field: this runs for every request, and the generic printer costs more than the
    rest of validation. Fields this contract does not know (a client built from a
    newer proto) are ignored, as protobuf's evolution rule expects, and reported to
    `on_unknown` (message name -> field numbers) so that they are counted.
    """
    if not _DIRECT:
        return _request_to_json_generic(msg, on_unknown)
    unknown = bool(len(UnknownFieldSet(msg)))
    doc: dict[str, Any] = {}
    if msg.HasField("pins"):
        pins = msg.pins
        unknown = unknown or bool(len(UnknownFieldSet(pins)))
        doc["pins"] = {name: getattr(pins, name) for name in _PIN_FIELDS if pins.HasField(name)}
    if msg.HasField("as_of_time_utc"):
        doc["as_of_time_utc"] = msg.as_of_time_utc
    if msg.feature_keys:
        keys = []
        for k in msg.feature_keys:
            unknown = unknown or bool(len(UnknownFieldSet(k)))
            if k.HasField("key_type") and k.HasField("key_id"):
                keys.append({"key_type": k.key_type, "key_id": k.key_id})
            else:
                keys.append(
                    {name: getattr(k, name) for name in ("key_type", "key_id") if k.HasField(name)}
                )
        doc["feature_keys"] = keys
    if msg.feature_groups:
        groups = []
        for g in msg.feature_groups:
            unknown = unknown or bool(len(UnknownFieldSet(g)))
            groups.append(
                {name: getattr(g, name) for name in ("name", "version") if g.HasField(name)}
            )
        doc["feature_groups"] = groups
    if msg.HasField("graph_resolution_mode"):
        doc["graph_resolution_mode"] = msg.graph_resolution_mode
    if msg.HasField("request_id"):
        doc["request_id"] = msg.request_id
    if msg.HasField("policy_revision"):
        doc["policy_revision"] = msg.policy_revision
    if msg.HasField("as_of_time"):
        doc["as_of_time"] = _timestamp_text(msg.as_of_time)
    if msg.min_basis:
        basis = []
        for o in msg.min_basis:
            unknown = unknown or bool(len(UnknownFieldSet(o)))
            basis.append({name: getattr(o, name) for name in ("partition", "offset")
                          if o.HasField(name)})
        doc["min_basis"] = basis
    if unknown and on_unknown is not None:
        on_unknown(unknown_fields(msg))
    return doc


def _timestamp_text(ts: Any) -> str:
    try:
        text: str = ts.ToJsonString()
    except ValueError as exc:  # seconds or nanos out of Timestamp's range
        raise _invalid(f"as_of_time: {exc}") from None
    return text


def unknown_fields(msg: Message) -> dict[str, list[int]]:
    """Message name -> the field numbers it carries that this contract does not know."""
    found: dict[str, set[int]] = {}
    for part in _messages(msg):
        unknown = UnknownFieldSet(part)
        if len(unknown):
            found.setdefault(part.DESCRIPTOR.name, set()).update(f.field_number for f in unknown)
    return {name: sorted(numbers) for name, numbers in found.items()}


def _request_to_json_generic(
    msg: feature_service_pb2.GetFeaturesRequest, on_unknown: UnknownFields | None
) -> dict[str, Any]:
    if on_unknown is not None and (found := unknown_fields(msg)):
        on_unknown(found)
    doc: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    pins = doc.get("pins")
    if isinstance(pins, dict) and isinstance(pins.get("seed"), str):
        pins["seed"] = int(pins["seed"])  # proto3 JSON renders uint64 as a string
    return doc


def validate_request_json(
    doc: dict[str, Any], *, max_keys: int = 100, max_groups: int = 16
) -> ValidRequest:
    """Validate a JSON-form request; raise ContractError (MISSING_PINS / INVALID_REQUEST)."""
    if not isinstance(doc, dict):
        raise _invalid("request: must be a JSON object")
    pins = doc.get("pins")
    if pins is None:
        raise ContractError(ErrorCode.MISSING_PINS, "pins: required")
    if isinstance(pins, dict):
        missing = [name for name in PIN_NAMES if pins.get(name) is None]
        if missing:
            raise ContractError(
                ErrorCode.MISSING_PINS, "pins: missing " + ", ".join(f"pins.{m}" for m in missing)
            )

    # The as-of first: its error says what was expected, with an example, where the
    # schema's would quote a regular expression.
    has_text, has_ts = "as_of_time_utc" in doc, "as_of_time" in doc
    if has_text and has_ts:
        raise _invalid("as_of_time_utc and as_of_time: give one of them, not both")
    if not has_text and not has_ts:
        raise _invalid(f"as_of_time_utc: required ({AS_OF_EXPECTED}; or as_of_time)")
    as_of_name = "as_of_time_utc" if has_text else "as_of_time"
    try:
        as_of_us = parse_as_of(doc[as_of_name])
    except ValueError as exc:
        raise _invalid(f"{as_of_name}: {exc}") from None

    error = first_error(GET_FEATURES_REQUEST, doc)
    if error is not None:
        raise _invalid(error)
    # One C pass over all the request's text; the walk that names the field
    # runs only when something is wrong.
    if not storable_text("".join(_request_texts(doc))):
        bad_text = unstorable_text(doc)
        if bad_text is not None:
            raise _invalid(f"{bad_text}: contains a NUL character or an unpaired surrogate")

    # The schema has passed: every shape below is as declared.
    run_id = pins.get("run_id")
    if run_id is not None and run_id != pins["scenario_run_id"]:
        raise _invalid("pins.run_id: must equal pins.scenario_run_id")

    keys = tuple((k["key_type"], k["key_id"]) for k in doc["feature_keys"])
    groups = tuple((g["name"], g["version"]) for g in doc["feature_groups"])
    if len(keys) > max_keys:
        raise _invalid(f"feature_keys: {len(keys)} keys exceed the limit of {max_keys}")
    if len(groups) > max_groups:
        raise _invalid(f"feature_groups: {len(groups)} groups exceed the limit of {max_groups}")
    seen: set[str] = set()
    for index, (name, _version) in enumerate(groups):
        if name in seen:
            raise _invalid(f"feature_groups[{index}].name: group {name!r} requested twice")
        seen.add(name)

    return ValidRequest(
        pins=dict(pins),
        as_of_us=as_of_us,
        as_of_text=format_micros(as_of_us),
        keys=keys,
        groups=groups,
        graph_resolution_mode=doc.get("graph_resolution_mode", DEFAULT_GRAPH_RESOLUTION_MODE),
        request_id=doc.get("request_id"),
        policy_revision=doc.get("policy_revision"),
        min_basis=_min_basis(doc.get("min_basis") or ()),
    )


def _min_basis(items: Any) -> tuple[tuple[int, int], ...]:
    """The schema has passed: partitions are uint32, offsets 1..128 characters."""
    out: dict[int, int] = {}
    for i, item in enumerate(items):
        offset = item["offset"]
        if not (offset.isascii() and offset.isdigit()):
            raise _invalid(f"min_basis[{i}].offset: must be a decimal exclusive-next offset")
        if item["partition"] in out:
            raise _invalid(f"min_basis[{i}].partition: partition {item['partition']} twice")
        out[item["partition"]] = int(offset)
    return tuple(sorted(out.items()))


def _request_texts(doc: dict[str, Any]) -> Iterator[str]:
    """Every string of a request that passed the schema (so its shape is known)."""
    for value in doc["pins"].values():
        if isinstance(value, str):
            yield value
    yield doc.get("as_of_time_utc") or doc["as_of_time"]
    for k in doc["feature_keys"]:
        yield k["key_type"]
        yield k["key_id"]
    for g in doc["feature_groups"]:
        yield g["name"]
        yield g["version"]
    for item in doc.get("min_basis") or ():
        yield item["offset"]
    for name in ("graph_resolution_mode", "request_id", "policy_revision"):
        if name in doc:
            yield doc[name]


def storable_text(text: str) -> bool:
    """True when `text` fits a PostgreSQL text column: no NUL, no unpaired surrogate."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unstorable_text(value: Any, path: str = "") -> str | None:
    """Path of the first string that is not storable text (NUL, unpaired surrogate), or None."""
    if isinstance(value, str):
        return None if storable_text(value) else (path or "value")
    if isinstance(value, dict):
        for k, v in value.items():
            found = unstorable_text(v, f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = unstorable_text(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


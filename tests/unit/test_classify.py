"""Record classification: one outcome per record, decided without the store (contract 2.2)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from ofp.events import Candidate, Ignored, Quarantined, classify, parse_amount
from ofp.policy import policy_from_dict

POLICY = policy_from_dict({
    "policy_id": "p", "revision": "r1", "source_topic": "t",
    "feature_groups": [{"name": "g", "version": "v1", "key_type": "flow_id"}],
})
ENV: dict[str, Any] = {
    "event_id": "e1", "event_type": "txn", "ts_utc": "2026-02-06T00:00:01.000000Z",
    "manifest_fingerprint": "a" * 64, "parameter_hash": "b" * 64, "seed": 1,
    "scenario_id": "s", "platform_run_id": "platform_20260206T000000Z",
    "scenario_run_id": "c" * 32, "payload": {"flow_id": 42, "amount": 12.50, "fraud_flag": True},
}


def _c(doc: Any, run: str | None = None) -> Any:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return classify(raw, POLICY, run)


def test_valid_event_contributes_exact_amount_and_canonical_key() -> None:
    out = _c(ENV)
    assert isinstance(out, Candidate)
    assert out.contributions[0].key_id == "42"
    assert out.contributions[0].amount == Decimal("12.5")
    assert out.ts_us == 1770336001000000


def test_wrapped_envelope_is_the_same_event() -> None:
    a, b = _c(ENV), _c({"envelope": ENV})
    assert isinstance(a, Candidate) and a == b


def test_labels_and_trace_fields_do_not_change_the_payload_hash() -> None:
    a = _c(ENV)
    b = _c({**ENV, "trace_id": "t2", "emitted_at_utc": "2026-02-06T00:00:09.000000Z"})
    c = _c({**ENV, "payload": {**ENV["payload"], "amount": 13}})
    assert isinstance(a, Candidate) and isinstance(b, Candidate) and isinstance(c, Candidate)
    assert a.payload_hash == b.payload_hash != c.payload_hash


@pytest.mark.parametrize(
    "doc, reason",
    [
        ({**ENV, "platform_run_id": "platform_20990101T000000Z"}, "foreign_run"),
        ({**ENV, "event_type": "action_outcome"}, "event_type_not_consumed"),
        ({**ENV, "payload": {"amount": 1}}, "no_key_field"),
        ({**ENV, "payload": {"flow_id": None}}, "no_key_field"),
    ],
)
def test_ignored_records(doc: dict[str, Any], reason: str) -> None:
    out = _c(doc, "platform_20260206T000000Z")
    assert isinstance(out, Ignored) and out.reason == reason


def test_malformed_record_of_a_foreign_run_is_still_quarantined() -> None:
    doc = {**ENV, "platform_run_id": "platform_20990101T000000Z", "ts_utc": "yesterday"}
    out = _c(doc, "platform_20260206T000000Z")
    assert isinstance(out, Quarantined) and out.reason == "envelope_invalid"


@pytest.mark.parametrize(
    "text, value",
    [("12.50", "12.5"), ("-3.07", "-3.07"), ("1e2", "1E+2"), (" 7 ", "7"), ("0.000", "0")],
)
def test_numeric_strings_are_exact_decimals(text: str, value: str) -> None:
    assert parse_amount(text) == Decimal(value)


@pytest.mark.parametrize("bad", ["", "1,5", "0x10", "NaN", "-Infinity", True, [1], {"a": 1}])
def test_non_numbers_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_amount(bad)

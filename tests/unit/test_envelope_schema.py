"""The canonical envelope schema (docs/contract.md 2.1) through `envelope_errors`."""

from __future__ import annotations

from typing import Any

import pytest

from ofp.contracts.schemas import envelope_errors


def envelope(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "0f8e1c2a9b3d4e5f60718293a4b5c6d7",
        "event_type": "transaction_authorised",
        "ts_utc": "2026-02-06T00:00:01.000000Z",
        "manifest_fingerprint": "a" * 64,
        "parameter_hash": "b" * 64,
        "seed": 0,
        "scenario_id": "baseline",
        "platform_run_id": "platform_20260206T000000Z",
        "scenario_run_id": "c" * 32,
        "payload": {"flow_id": 42, "event_seq": 1, "amount": "12.50"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


VALID = {
    "full": envelope(),
    "pins_absent": {
        k: v
        for k, v in envelope().items()
        if k in ("event_id", "event_type", "ts_utc", "manifest_fingerprint")
    },
    "free_form_payload": envelope(payload={"nested": {"list": [1, None, 2.5]}, "fraud_flag": True}),
    "optional_strings": envelope(
        run_id="c" * 32,
        schema_version="1.0",
        emitted_at_utc="2026-02-06T00:00:02.000000Z",
        trace_id="t",
        span_id="s",
        parent_event_id="p",
        producer="generator",
    ),
    "large_seed": envelope(seed=18446744073709551615),
}

INVALID = {
    "unknown_top_level_field": (envelope(extra=1), "extra"),
    "bad_ts_pattern": (envelope(ts_utc="2026-02-06T00:00:01Z"), "ts_utc"),
    "ts_month_13": (envelope(ts_utc="2026-13-06T00:00:01.000000Z"), "ts_utc"),
    "bad_manifest_fingerprint": (envelope(manifest_fingerprint="A" * 64), "manifest_fingerprint"),
    "short_manifest_fingerprint": (envelope(manifest_fingerprint="a" * 63), "manifest_fingerprint"),
    "event_id_missing": (envelope(event_id=...), "event_id"),
    "event_id_empty": (envelope(event_id=""), "event_id"),
    "payload_not_object": (envelope(payload=[1]), "payload"),
    "seed_negative": (envelope(seed=-1), "seed"),
    "seed_string": (envelope(seed="1"), "seed"),
    "platform_run_id_bad": (envelope(platform_run_id="platform_x"), "platform_run_id"),
}


@pytest.mark.parametrize("name", list(VALID))
def test_envelope_errors_is_none_when_envelope_is_valid(name: str) -> None:
    assert envelope_errors(VALID[name]) is None


@pytest.mark.parametrize("name", list(INVALID))
def test_envelope_errors_names_the_field_when_envelope_is_invalid(name: str) -> None:
    doc, field = INVALID[name]
    error = envelope_errors(doc)
    assert error is not None
    assert field in error
    assert "\n" not in error


def test_envelope_errors_rejects_when_value_is_not_an_object() -> None:
    assert envelope_errors(["not", "an", "object"]) is not None

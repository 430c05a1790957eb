"""The micros timestamp form: strict parsing, canonical formatting, round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ofp.contracts.timefmt import format_micros, is_micros, parse_micros

ROUND_TRIPS = [
    ("1970-01-01T00:00:00.000000Z", 0),
    ("1970-01-01T00:00:00.000001Z", 1),
    ("1969-12-31T23:59:59.999999Z", -1),
    ("2026-02-06T00:00:01.000000Z", 1_770_336_001_000_000),
    ("2024-02-29T12:34:56.789012Z", 1_709_210_096_789_012),
    ("0001-01-01T00:00:00.000000Z", -62_135_596_800_000_000),
    ("9999-12-31T23:59:59.999999Z", 253_402_300_799_999_999),
]

REJECTED = [
    "2026-13-01T00:00:00.000000Z",  # month 13
    "2026-00-01T00:00:00.000000Z",  # month 0
    "2026-02-30T00:00:00.000000Z",  # February 30
    "2025-02-29T00:00:00.000000Z",  # not a leap year
    "2026-02-06T24:00:00.000000Z",  # hour 24
    "2026-02-06T00:60:00.000000Z",  # minute 60
    "2026-02-06T23:59:60.000000Z",  # leap second
    "0000-01-01T00:00:00.000000Z",  # year 0
    "2026-02-06T00:00:01Z",  # no fraction
    "2026-02-06T00:00:01.000Z",  # millis
    "2026-02-06T00:00:01.0000000Z",  # seven digits
    "2026-02-06T00:00:01.000000",  # no Z
    "2026-02-06T00:00:01.000000+00:00",  # offset instead of Z
    "2026-02-06t00:00:01.000000z",  # lower case
    "2026-02-06 00:00:01.000000Z",  # space separator
    " 2026-02-06T00:00:01.000000Z",  # leading space
    "2026-02-06T00:00:01.000000Z\n",  # trailing newline
    "２０２６-02-06T00:00:01.000000Z",  # non-ASCII digits
    "",
]


@pytest.mark.parametrize(("text", "us"), ROUND_TRIPS, ids=[t for t, _ in ROUND_TRIPS])
def test_parse_and_format_are_inverse_when_text_is_canonical(text: str, us: int) -> None:
    assert parse_micros(text) == us
    assert format_micros(us) == text
    assert is_micros(text)


@pytest.mark.parametrize("text", REJECTED, ids=repr)
def test_parse_raises_when_text_is_not_a_micros_instant(text: str) -> None:
    with pytest.raises(ValueError):
        parse_micros(text)
    assert not is_micros(text)


def test_parse_raises_when_value_is_not_a_string() -> None:
    with pytest.raises(ValueError):
        parse_micros(1_770_336_001)  # type: ignore[arg-type]


def test_format_raises_when_instant_is_out_of_range() -> None:
    with pytest.raises(ValueError):
        format_micros(10**20)


@given(st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999))
def test_format_then_parse_returns_the_instant_when_in_range(us: int) -> None:
    assert parse_micros(format_micros(us)) == us


@given(st.integers(min_value=-62135596800000000, max_value=253402300799999999))
def test_format_micros_equals_the_datetime_rendering(us: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    assert format_micros(us) == (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )

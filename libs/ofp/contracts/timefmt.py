"""The contract's one timestamp form: RFC 3339 UTC with exactly six fractional digits.

    parse_micros("2026-02-06T00:00:01.000000Z") -> 1770336001000000   (µs since the epoch)
    format_micros(1770336001000000)             -> "2026-02-06T00:00:01.000000Z"

Both sit on the projector's hot path, so parsing is a precompiled ASCII regex plus
integer arithmetic (the calendar check is one `date` construction), never strptime.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_MICROS_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z",
    re.ASCII,
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000


def parse_micros(text: str) -> int:
    """Microseconds since the Unix epoch of a strict `YYYY-MM-DDTHH:MM:SS.ffffffZ` string.

    Raises ValueError on any other shape or on an instant that is not on the calendar
    (month 13, February 30, hour 24, second 60...).
    """
    match = _MICROS_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a micros UTC timestamp (YYYY-MM-DDTHH:MM:SS.ffffffZ): {text!r}")
    year, month, day, hour, minute, second, micro = map(int, match.groups())
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time of day out of range: {text!r}")
    try:
        ordinal = date(year, month, day).toordinal()
    except ValueError:
        raise ValueError(f"not a calendar date: {text!r}") from None
    return (
        (ordinal - _EPOCH_ORDINAL) * _US_PER_DAY
        + ((hour * 60 + minute) * 60 + second) * 1_000_000
        + micro
    )


def format_micros(us: int) -> str:
    """The canonical string of `us` microseconds since the Unix epoch (inverse of parse)."""
    try:
        moment = _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise ValueError(f"instant out of range: {us}") from None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def is_micros(text: object) -> bool:
    """True when `text` is a valid micros timestamp (no exception on the fast path)."""
    if not isinstance(text, str):
        return False
    try:
        parse_micros(text)
    except ValueError:
        return False
    return True

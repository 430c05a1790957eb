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
    # Events arrive in time order, so most share their minute with one parsed
    # just before: the minute prefix, once validated, is remembered, and only
    # the seconds and fraction are checked here. Anything else takes the full
    # parse, which is the one that decides and explains a refusal.
    if isinstance(text, str) and len(text) == 27:
        minute_us = _MINUTES.get(text[:17])
        if minute_us is not None and text[19] == "." and text[26] == "Z":
            second = text[17:19]
            micro = text[20:26]
            if (
                second.isascii() and second.isdigit() and second < "60"
                and micro.isascii() and micro.isdigit()
            ):
                return minute_us + int(second) * 1_000_000 + int(micro)
    return _parse_micros(text)


def _parse_micros(text: str) -> int:
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
    minute_us = (ordinal - _EPOCH_ORDINAL) * _US_PER_DAY + (hour * 60 + minute) * 60_000_000
    if len(_MINUTES) >= _MINUTES_KEPT:
        _MINUTES.clear()
    _MINUTES[text[:17]] = minute_us
    return minute_us + second * 1_000_000 + micro


_AS_OF_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|\+00:00)",
    re.ASCII,
)
AS_OF_EXPECTED = (
    "an RFC 3339 UTC timestamp with 0 to 9 fractional digits, such as"
    " 2026-02-06T12:00:00Z or 2026-02-06T12:00:00.123456Z"
)


def parse_as_of(text: str) -> int:
    """Microseconds since the epoch of a request's as-of time: any RFC 3339 UTC
    timestamp (`Z` or `+00:00`) with 0 to 9 fractional digits; digits past the
    microsecond are truncated (docs/contract.md 4.1). Its canonical form is
    `format_micros` of the result. Raises ValueError saying what was expected."""
    match = _AS_OF_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected {AS_OF_EXPECTED}, got {text!r}")
    fraction = (match.group(7) or "")[:6].ljust(6, "0")
    canonical = "{}-{}-{}T{}:{}:{}.{}Z".format(*match.groups()[:6], fraction)
    try:
        return _parse_micros(canonical)
    except ValueError:
        raise ValueError(f"not a calendar instant: {text!r} (expected {AS_OF_EXPECTED})"
                         ) from None


# Validated `YYYY-MM-DDTHH:MM:` prefixes -> µs since the epoch at that minute.
_MINUTES: dict[str, int] = {}
_MINUTES_KEPT = 4096


def format_micros(us: int) -> str:
    """The canonical string of `us` microseconds since the Unix epoch (inverse of parse)."""
    # Several per response: the date part is remembered per day, the rest is
    # integer arithmetic.
    day, in_day = divmod(us, _US_PER_DAY)
    date_text = _DAYS.get(day)
    if date_text is None:
        try:
            moment = _EPOCH + timedelta(days=day)
        except OverflowError:
            raise ValueError(f"instant out of range: {us}") from None
        if len(_DAYS) >= _DAYS_KEPT:
            _DAYS.clear()
        date_text = _DAYS[day] = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
    seconds, micro = divmod(in_day, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{date_text}{hour:02d}:{minute:02d}:{second:02d}.{micro:06d}Z"


# Days since the epoch -> "YYYY-MM-DDT".
_DAYS: dict[int, str] = {}
_DAYS_KEPT = 4096


def is_micros(text: object) -> bool:
    """True when `text` is a valid micros timestamp (no exception on the fast path)."""
    if not isinstance(text, str):
        return False
    try:
        parse_micros(text)
    except ValueError:
        return False
    return True

"""Event lines for the file-bus at millions per run, and GetFeatures requests.

Lines come from one string template (no `json.dumps` per event); they are the
envelope shape of contract 2.1 with the pins of `tests.support.streams.pins("A")`.
The rich template (`rich=True`) adds the payload fields the rich v1 policy of
`bench/policies.py` reads: `card_id`, `merchant_id` and `status`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.timefmt import format_micros, parse_micros

TOPIC = "fp.bus.traffic.fraud.v1"
GROUP = {"name": "core_features", "version": "v1"}
HOUR_US = 3_600_000_000
WEEK_US = 7 * 24 * HOUR_US
# Every generated event lies in (BASE_US - WEEK_US, BASE_US]: requests ask at
# as_of = BASE_US, so every key is present in its 7-day window and, once the
# latest event is applied, the basis is not stale.
BASE_US = parse_micros("2026-02-13T00:00:00.000000Z")

PINS: dict[str, Any] = {
    "platform_run_id": "platform_20260201T000000Z",
    "scenario_run_id": "1" * 32,
    "scenario_id": "scenario_A",
    "manifest_fingerprint": "f" * 64,
    "parameter_hash": "e" * 64,
    "seed": 0,
}
_PINS_JSON = ",".join(
    f'"{k}":{v}' if isinstance(v, int) else f'"{k}":"{v}"' for k, v in PINS.items()
)
_TEMPLATE = (
    '{"event_id":"%s%028x","event_type":"txn","ts_utc":"%s.%06dZ",' + _PINS_JSON
    + ',"schema_version":"1.0","payload":{"flow_id":%d,"event_seq":%d,'
    '"amount":"%d.%02d","fraud_flag":false}}\n'
)


# The rich payload: a flow's card is `1 + flow // 2` (two flows per card); its
# merchant cycles over `FLOW_MERCHANTS` merchants of its own among `MERCHANTS`,
# so a hot flow has few distinct merchants (distinct_count reads each tile's
# distinct values, docs/features.md "Cost"); one event in ten is declined.
_RICH_TEMPLATE = (
    '{"event_id":"%s%028x","event_type":"txn","ts_utc":"%s.%06dZ",' + _PINS_JSON
    + ',"schema_version":"1.0","payload":{"flow_id":%d,"card_id":%d,"merchant_id":%d,'
    '"event_seq":%d,"amount":"%d.%02d","status":"%s","fraud_flag":%s}}\n'
)
MERCHANTS = 1_000
FLOW_MERCHANTS = 20


def rich_ids(flow: int, seq: int) -> tuple[int, int]:
    """(card_id, merchant_id) of a rich event of `flow` with sequence number `seq`."""
    return 1 + flow // 2, 1 + (flow * 7 + seq % FLOW_MERCHANTS) % MERCHANTS


Key = int | tuple[str, int | str]
"""A requested key: an int is a `flow_id`, else (key_type, key_id)."""


def key_pair(key: Key) -> tuple[str, str]:
    if isinstance(key, int):
        return "flow_id", str(key)
    return key[0], str(key[1])


def key_label(key: Key) -> str:
    """How the answer names the key: `<key_type>:<key_id>`."""
    kt, kid = key_pair(key)
    return f"{kt}:{kid}"


class _SecondText:
    """`YYYY-MM-DDTHH:MM:SS` of an epoch second, cached for runs of equal seconds."""

    def __init__(self) -> None:
        self._sec = -1
        self._text = ""

    def __call__(self, sec: int) -> str:
        if sec != self._sec:
            self._sec = sec
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return self._text


def keyed_lines(
    tag: str, events: Iterable[tuple[int, int]], *, first_seq: int = 0, rich: bool = False
) -> Iterator[tuple[int, str]]:
    """(key, envelope line) per (key, ts_us); event ids are `tag` (4 hex) + a sequence number."""
    assert len(tag) == 4 and int(tag, 16) >= 0
    second = _SecondText()
    seq = first_seq
    for key, ts_us in events:
        sec, micros = divmod(ts_us, 1_000_000)
        if rich:
            card, merchant = rich_ids(key, seq)
            yield key, _RICH_TEMPLATE % (
                tag, seq, second(sec), micros, key, card, merchant, seq, seq % 1000, seq % 100,
                "declined" if seq % 10 == 3 else "approved",
                "true" if seq % 97 == 5 else "false")
        else:
            yield key, _TEMPLATE % (tag, seq, second(sec), micros, key, seq, seq % 1000,
                                    seq % 100)
        seq += 1


def write_bus(
    root: Path, tag: str, events: Iterable[tuple[int, int]], *, partitions: int = 1,
    first_seq: int = 0, rich: bool = False,
) -> int:
    """Append events to `<root>/<topic>/partition=<n>.jsonl`, partition = key % partitions."""
    topic = root / TOPIC
    topic.mkdir(parents=True, exist_ok=True)
    files = [(topic / f"partition={p}.jsonl").open("a", encoding="ascii", buffering=1 << 20)
             for p in range(partitions)]
    buffers: list[list[str]] = [[] for _ in range(partitions)]
    n = 0
    try:
        for key, line in keyed_lines(tag, events, first_seq=first_seq, rich=rich):
            p = key % partitions
            buffers[p].append(line)
            n += 1
            if len(buffers[p]) >= 10_000:
                files[p].write("".join(buffers[p]))
                buffers[p].clear()
        for f, buf in zip(files, buffers, strict=True):
            f.write("".join(buf))
    finally:
        for f in files:
            f.close()
    return n


def spread_keys(first_key: int, n_keys: int) -> Iterator[tuple[int, int]]:
    """One event per key, event times spread over the week ending at BASE_US (last = BASE_US)."""
    step = max(1, (WEEK_US - HOUR_US) // max(1, n_keys))
    start = BASE_US - (n_keys - 1) * step
    for i in range(n_keys):
        yield first_key + i, start + i * step


def hot_key(key: int, n_events: int) -> Iterator[tuple[int, int]]:
    """`n_events` events of one key inside its 7-day window ending at BASE_US."""
    step = max(1, (WEEK_US - HOUR_US) // max(1, n_events))
    start = BASE_US - (n_events - 1) * step
    for i in range(n_events):
        yield key, start + i * step


def ingest_events(n_events: int, n_keys: int) -> Iterator[tuple[int, int]]:
    """A steady stream: event time rises through the week, keys cycle over `n_keys`."""
    step = max(1, WEEK_US // max(1, n_events))
    start = BASE_US - (n_events - 1) * step
    for i in range(n_events):
        yield 1 + (i * 7919) % n_keys, start + i * step


def request_doc(keys: Iterable[Key], as_of_us: int = BASE_US,
                groups: Iterable[dict[str, str]] = (GROUP,)) -> dict[str, Any]:
    """The JSON form of a GetFeatures request (by default 1 group x 3 windows per key)."""
    return {
        "pins": PINS,
        "as_of_time_utc": format_micros(as_of_us),
        "feature_keys": [dict(zip(("key_type", "key_id"), key_pair(k), strict=True))
                         for k in keys],
        "feature_groups": list(groups),
    }


def request_proto(doc: dict[str, Any]) -> pb.GetFeaturesRequest:
    message = pb.GetFeaturesRequest()
    json_format.ParseDict(doc, message)
    return message


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message

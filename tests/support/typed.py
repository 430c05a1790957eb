"""The typed values of a GetFeatures answer say exactly what its snapshot says.

`assert_typed_agrees(doc)` reads the proto JSON of a response (as any client sees
it: int64 as a decimal string, Timestamp as RFC 3339) and checks each typed cell
against `snapshot.features`, written from docs/clients.md alone: same keys,
groups, names in order, the same value under the type its kind has, a status
consistent with the value and the freshness flags.
"""

from __future__ import annotations

from typing import Any

from ofp.contracts.timefmt import format_micros, parse_as_of

ONEOF = ("int64_value", "decimal_value", "string_value", "timestamp_value", "list_value",
         "null_value")


def _value(v: dict[str, Any]) -> tuple[str, Any]:
    present = [k for k in ONEOF if k in v]
    assert len(present) == 1, v
    kind = present[0]
    raw = v[kind]
    if kind == "int64_value":
        return kind, int(raw)
    if kind == "timestamp_value":
        return kind, format_micros(parse_as_of(raw))
    if kind == "list_value":
        return kind, list(raw.get("values", []))
    if kind == "null_value":
        assert raw is None
        return kind, None
    return kind, raw


def assert_typed_agrees(doc: dict[str, Any]) -> None:
    snap = doc["snapshot"]
    features = snap["features"]
    freshness = snap["freshness"]
    cells = doc.get("typed_features", [])
    seen_present: set[tuple[str, str]] = set()
    for cell in cells:
        label = f"{cell['key_type']}:{cell['key_id']}"
        group = cell["group_name"]
        assert group in {g["name"] for g in snap["feature_groups"]}, cell
        if not cell["present"]:
            assert group not in features.get(label, {}), cell
            assert label in freshness["missing_feature_keys"], cell
            assert not cell.get("features") and "last_event_time" not in cell, cell
            continue
        seen_present.add((label, group))
        values = features[label][group]
        typed = cell["features"]
        # A Struct is a map: its order is not kept, the typed list's is definition order.
        names = [t["name"] for t in typed]
        assert sorted(names) == sorted(values) and len(set(names)) == len(names), names
        assert names[-1] == "last_event_ts_utc", names
        assert format_micros(parse_as_of(cell["last_event_time"])) == values[
            "last_event_ts_utc"]
        for t in typed:
            kind, got = _value(t)
            want = values[t["name"]]
            if isinstance(want, float) and want.is_integer():
                want = int(want)  # Struct renders every number as a double
            assert got == want, (t, want)
            if t["name"] == "last_event_ts_utc":
                assert kind == "timestamp_value" and t["status"] == "VALUE_STATUS_PRESENT"
                continue
            if got is None or got == [] or (kind == "int64_value" and got == 0):
                assert t["status"] == "VALUE_STATUS_NO_EVENTS_IN_WINDOW", t
            if t["status"] == "VALUE_STATUS_NO_EVENTS_IN_WINDOW":
                assert got in (None, [], 0, "0"), t  # the kind's empty value
            elif t["status"] == "VALUE_STATUS_STALE_BY_TTL":
                assert "STALE_BY_TTL" in freshness["flags"] and group in freshness[
                    "stale_groups"], t
            else:
                assert t["status"] == "VALUE_STATUS_PRESENT", t
            if "scale" in t:
                assert kind == "decimal_value"
                places = got.partition(".")[2]
                assert len(places) <= t["scale"], t
    # Every present (key, group) of the snapshot has its typed cell.
    assert seen_present == {(label, g) for label, groups in features.items() for g in groups}

"""GetFeatures as pure functions: request -> read plan, stored row -> snapshot (docs/contract.md 4).

`plan_read` says exactly which tiles and event ranges the store must sum;
`assemble_snapshot` turns what one database snapshot returned into the
contract's snapshot, freshness and hash. No I/O and no wall clock here, except
`created_at_us` which the caller passes in and which is not hashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ofp.contracts.canonical import sha256_hex
from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.hashing import basis_digest_of, hashed_bytes
from ofp.contracts.request import ValidRequest
from ofp.contracts.timefmt import format_micros
from ofp.features import AGGREGATE_KINDS, Intermediate, finalize
from ofp.model import FeatureProbe, ReadProbes, SnapshotRow
from ofp.policy import FeatureGroup, Policy
from ofp.windows import FeatureWindowProbe, WindowProbe, feature_window_probe, window_probe

FLAG_STALE_INPUT_BASIS = "STALE_INPUT_BASIS"
FLAG_MISSING_FEATURE_STATE = "MISSING_FEATURE_STATE"
FLAG_STALE_BY_TTL = "STALE_BY_TTL"
# A window the store returned nothing for: no events, and the canonical zero sum.
_NO_EVENTS = (0, "0")

# Typed values (docs/clients.md): how each value is typed, and its status.
PRESENT = "VALUE_STATUS_PRESENT"
NO_EVENTS_IN_WINDOW = "VALUE_STATUS_NO_EVENTS_IN_WINDOW"
STALE = "VALUE_STATUS_STALE_BY_TTL"
INT, DECIMAL, TEXT, LIST, TIME = "int", "decimal", "text", "list", "time"
_VALUE_TYPE = {
    "count": INT, "distinct_count": INT, "approx_distinct_count": INT,
    "first": TEXT, "last": TEXT, "last_n": LIST,
}


class TypedValue(NamedTuple):
    name: str
    status: str
    kind: str  # INT, DECIMAL, TEXT, LIST or TIME: how `value` is typed (None: null)
    value: Any  # for TIME: µs since the epoch
    scale: int | None = None


class TypedCell(NamedTuple):
    key_type: str
    key_id: str
    group: str
    version: str
    last_us: int | None  # None: the key is missing (no event in the longest window)
    values: tuple[TypedValue, ...]


def _status(empty: bool, stale: bool) -> str:
    return NO_EVENTS_IN_WINDOW if empty else (STALE if stale else PRESENT)


@dataclass(frozen=True, slots=True)
class Cell:
    """One (key, group) pair the request asks for, and where its values sit in the row."""

    key_type: str
    key_id: str
    group: FeatureGroup
    index: int  # position in ReadProbes.cells
    # Per window of the group: (index into ReadProbes.windows, count feature name,
    # sum feature name, ttl_us); shared by every cell of the group.
    windows: tuple[tuple[int, str, str, int], ...]
    # v1 groups: indexes into ReadProbes.feature_probes, the presence probe first,
    # then one per feature in policy order (index is -1: no v0 cell).
    feature_probes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadPlan:
    groups: tuple[FeatureGroup, ...]  # requested groups, sorted by (name, version)
    cells: tuple[Cell, ...]
    probes: ReadProbes


def plan_read(req: ValidRequest, policy: Policy, group_ids: dict[tuple[str, str], int]) -> ReadPlan:
    groups = []
    for name, version in req.groups:
        g = policy.group(name, version)
        if g is None or (name, version) not in group_ids:
            known = ", ".join(f"{x.name}/{x.version}" for x in policy.groups)
            raise ContractError(
                ErrorCode.INVALID_REQUEST,
                f"feature group {name}/{version} is not in policy {policy.policy_id}"
                f" revision {policy.revision} (known: {known})",
            )
        groups.append(g)
    groups.sort(key=lambda g: (g.name, g.version))
    # A window's tiles and edges depend only on (as-of, duration): shared by all keys.
    window_index: dict[int, int] = {}
    windows: list[WindowProbe] = []
    group_windows: list[tuple[int, int]] = []
    last_from: list[tuple[int, int]] = []
    group_slots: dict[str, tuple[int, tuple[tuple[int, str, str, int], ...]]] = {}
    for g in groups:
        gid = group_ids[(g.name, g.version)]
        if g.features is not None:  # read through feature probes, per cell
            group_slots[g.name] = (gid, ())
            continue
        slots = []
        for w in g.windows:
            i = window_index.get(w.duration_us)
            if i is None:
                i = window_index[w.duration_us] = len(windows)
                windows.append(window_probe(req.as_of_us, w.duration_us))
            slots.append((i, f"event_count_{w.name}", f"amount_sum_{w.name}", w.ttl_us))
            group_windows.append((gid, i))
        last_from.append((gid, req.as_of_us - g.max_window_us))
        group_slots[g.name] = (gid, tuple(slots))
    cells: list[Cell] = []
    cell_keys: list[tuple[int, str]] = []
    feature_probes: list[FeatureProbe] = []
    feature_windows: dict[int, FeatureWindowProbe] = {}

    def feature_window(duration_us: int) -> FeatureWindowProbe:
        w = feature_windows.get(duration_us)
        if w is None:
            w = feature_windows[duration_us] = feature_window_probe(req.as_of_us, duration_us)
        return w

    seen: set[tuple[str, str, str]] = set()
    for key_type, key_id in req.keys:
        for g in groups:
            if g.key_type != key_type or (key_type, key_id, g.name) in seen:
                continue
            seen.add((key_type, key_id, g.name))
            gid, wins = group_slots[g.name]
            if g.features is not None:
                first = len(feature_probes)
                # Presence needs the latest event only (`_feature_cell`).
                feature_probes.append(FeatureProbe(
                    gid, key_id, 0, feature_window(g.max_window_us), False, True,
                    aggregate=False))
                feature_probes.extend(
                    FeatureProbe(gid, key_id, j, feature_window(f.window_us),
                                 f.agg == "first", f.agg in ("last", "seconds_since_last"),
                                 f.n or 0, f.agg == "distinct_count",
                                 f.agg == "approx_distinct_count",
                                 f.agg in AGGREGATE_KINDS)
                    for j, f in enumerate(g.features, 1)
                )
                cells.append(Cell(key_type, key_id, g, -1, (),
                                  tuple(range(first, len(feature_probes)))))
                continue
            cells.append(Cell(key_type, key_id, g, len(cell_keys), wins))
            cell_keys.append((gid, key_id))
    probes = ReadProbes(windows, cell_keys, group_windows, last_from, req.as_of_us,
                        feature_probes)
    return ReadPlan(tuple(groups), tuple(cells), probes)


def check_row(req: ValidRequest, plan: ReadPlan, row: SnapshotRow) -> None:
    """Refusals that depend on what the store holds (docs/contract.md 4.5)."""
    # Before anything is consumed every scope is unknown: that is "not yet", not "never".
    if not row.offsets:
        raise ContractError(ErrorCode.UNAVAILABLE, "no input basis yet: nothing consumed")
    if row.scope_id is None:
        raise ContractError(ErrorCode.NOT_FOUND, "no state was ever recorded for these pins")
    if len(row.offset_kinds) != 1:
        raise ContractError(
            ErrorCode.MISSING_PROVENANCE, "the basis mixes offset kinds; cannot state it"
        )
    if row.retained_from_us is not None:
        reach = req.as_of_us - max(g.max_window_us for g in plan.groups)
        if reach < row.retained_from_us:
            raise ContractError(
                ErrorCode.UNAVAILABLE,
                f"as_of_time_utc reaches before retained state"
                f" ({format_micros(row.retained_from_us)})",
                retryable=False,
            )


_NO_FEATURE_EVENTS = Intermediate(0, None, None, None, None, None, None, None)


def _feature_cell(
    cell: Cell, row: SnapshotRow, as_of_us: int, typed: list[TypedValue] | None = None
) -> tuple[dict[str, Any], bool] | None:
    """A v1 cell's values and whether any feature is stale by its ttl; None: no event
    of the key within the group's longest window (the key is missing). With
    `typed`, the values are also appended to it typed."""
    features = cell.group.features
    assert features is not None
    presence = row.feature_values.get(cell.feature_probes[0])
    if presence is None or presence.last_ts is None:
        return None
    last_us = presence.last_ts
    age_us = as_of_us - last_us
    values: dict[str, Any] = {}
    stale = False
    for f, probe in zip(features, cell.feature_probes[1:], strict=True):
        w = row.feature_values.get(probe, _NO_FEATURE_EVENTS)
        value = values[f.name] = finalize(f, w, as_of_us)
        too_old = age_us > f.ttl_us
        stale = stale or too_old
        if typed is not None:
            kind = _VALUE_TYPE.get(f.agg, DECIMAL)
            empty = (value is None or value == [] or (kind == INT and value == 0)
                     or (f.agg == "sum" and not w.n))
            typed.append(TypedValue(f.name, _status(empty, too_old), kind, value, f.scale))
    values["last_event_ts_utc"] = format_micros(last_us)
    if typed is not None:
        typed.append(TypedValue("last_event_ts_utc", PRESENT, TIME, last_us))
    return values, stale


def assemble_snapshot(
    req: ValidRequest,
    plan: ReadPlan,
    row: SnapshotRow,
    *,
    stream: str,
    max_basis_lag_us: int,
    created_at_us: int,
    typed: list[TypedCell] | None = None,
    hashed: list[bytes] | None = None,
) -> dict[str, Any]:
    """The contract snapshot (JSON form) including its snapshot_hash; with `typed`,
    the same values typed, one TypedCell per plan cell, appended to it; with
    `hashed`, the bytes the hash covers appended to it (the snapshot log keeps them)."""
    check_row(req, plan, row)
    offset_kind = row.offset_kinds[0]
    offsets = [{"partition": p, "offset": o} for p, o in row.offsets]
    basis: dict[str, Any] = {
        "stream": stream,
        "offset_kind": offset_kind,
        "offsets": offsets,
        "basis_digest": basis_digest_of(stream, offset_kind, tuple(row.offsets)),
    }
    if row.watermark_us is not None:
        basis["window_end_utc"] = format_micros(row.watermark_us)

    features: dict[str, dict[str, dict[str, Any]]] = {}
    present_groups: set[str] = set()
    missing_keys: set[str] = set()
    stale_groups: set[str] = set()
    flags: set[str] = set()
    red = False
    matched_types = {c.key_type for c in plan.cells}
    for key_type, key_id in req.keys:
        if key_type not in matched_types:
            missing_keys.add(f"{key_type}:{key_id}")
    for cell in plan.cells:
        label = f"{cell.key_type}:{cell.key_id}"
        if cell.group.features is not None:
            typed_values: list[TypedValue] | None = None if typed is None else []
            got = _feature_cell(cell, row, req.as_of_us, typed_values)
            if typed is not None:
                typed.append(TypedCell(
                    cell.key_type, cell.key_id, cell.group.name, cell.group.version,
                    None if got is None else row.feature_values[cell.feature_probes[0]].last_ts,
                    () if typed_values is None or got is None else tuple(typed_values)))
            if got is None:
                missing_keys.add(label)
                continue
            present_groups.add(cell.group.name)
            if got[1]:
                flags.add(FLAG_STALE_BY_TTL)
                stale_groups.add(cell.group.name)
            features.setdefault(label, {})[cell.group.name] = got[0]
            continue
        last_us = row.lasts.get(cell.index)
        if last_us is None:
            missing_keys.add(label)
            if typed is not None:
                typed.append(TypedCell(cell.key_type, cell.key_id, cell.group.name,
                                       cell.group.version, None, ()))
            continue
        present_groups.add(cell.group.name)
        values: dict[str, Any] = {}
        age_us = req.as_of_us - last_us
        v0_typed: list[TypedValue] = []
        for win, count_name, sum_name, ttl_us in cell.windows:
            count, total = row.values.get((cell.index, win), _NO_EVENTS)
            values[count_name] = count
            values[sum_name] = total
            if age_us > ttl_us:
                flags.add(FLAG_STALE_BY_TTL)
                stale_groups.add(cell.group.name)
            if typed is not None:
                status = _status(not count, age_us > ttl_us)
                v0_typed.append(TypedValue(count_name, status, INT, count))
                v0_typed.append(TypedValue(sum_name, status, DECIMAL, total))
        values["last_event_ts_utc"] = format_micros(last_us)
        if typed is not None:
            v0_typed.append(TypedValue("last_event_ts_utc", PRESENT, TIME, last_us))
            typed.append(TypedCell(cell.key_type, cell.key_id, cell.group.name,
                                   cell.group.version, last_us, tuple(v0_typed)))
        features.setdefault(label, {})[cell.group.name] = values
    if missing_keys:
        flags.add(FLAG_MISSING_FEATURE_STATE)
    if row.watermark_us is None or req.as_of_us > row.watermark_us:
        flags.add(FLAG_STALE_INPUT_BASIS)
        stale_groups.update(g.name for g in plan.groups)
        red = row.watermark_us is None or req.as_of_us - row.watermark_us > max_basis_lag_us
    state = "RED" if red else ("AMBER" if flags else "GREEN")

    snapshot: dict[str, Any] = {
        "pins": dict(req.pins),
        "as_of_time_utc": req.as_of_text,
        "created_at_utc": format_micros(created_at_us),
        "feature_groups": [{"name": g.name, "version": g.version} for g in plan.groups],
        "feature_def_policy_rev": {
            "policy_id": row.policy_id,
            "revision": row.revision,
            "content_digest": row.content_digest,
        },
        "run_config_digest": row.run_config_digest,
        "eb_offset_basis": basis,
        "graph_version": None,
        "features": features,
        "freshness": {
            "state": state,
            "flags": sorted(flags),
            "stale_groups": sorted(stale_groups),
            "missing_groups": sorted(g.name for g in plan.groups if g.name not in present_groups),
            "missing_feature_keys": sorted(missing_keys),
        },
    }
    # Built above from integers and strings only: no float walk needed.
    body = hashed_bytes(snapshot, floats_checked=True)
    snapshot["snapshot_hash"] = sha256_hex(body)
    if hashed is not None:
        hashed.append(body)
    return snapshot

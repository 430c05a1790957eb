"""The late-data audit's comparisons (docs/audit.md), pure.

A recorded snapshot is re-derived at its as-of from the current state; every
feature whose value differs is one diff. Values are compared in the contract's
JSON form (counts as integers, decimals as canonical text), so equal values
are equal whatever the transport did to them.
"""

from __future__ import annotations

from typing import Any

# Cells a snapshot was asked for: (key_type, key_id, group name, group version).
Cell = tuple[str, str, str, str]
_ABSENT = object()  # a feature one side does not have (null is a value)


def feature_diffs(served: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (key, group, feature), the served and the re-derived value where they differ.

    A key (or group) present on one side only differs in each of its features,
    the absent side shown as null; rows are sorted by key, group, feature."""
    diffs: list[dict[str, Any]] = []
    for label in sorted(set(served) | set(now)):
        groups_then = served.get(label) or {}
        groups_now = now.get(label) or {}
        for group in sorted(set(groups_then) | set(groups_now)):
            then = groups_then.get(group)
            current = groups_now.get(group)
            names = set(then or {}) | set(current or {})
            for name in sorted(names):
                a = _ABSENT if then is None else then.get(name, _ABSENT)
                b = _ABSENT if current is None else current.get(name, _ABSENT)
                if a != b:
                    diffs.append({"key": label, "group": group, "feature": name,
                                  "served": None if a is _ABSENT else a,
                                  "now": None if b is _ABSENT else b})
    return diffs


def snapshot_cells(request: dict[str, Any]) -> list[Cell]:
    """Every (key, group) pair of a recorded request (the group's key type decides
    later which pairs exist)."""
    return [(k["key_type"], k["key_id"], g["name"], g["version"])
            for k in request.get("feature_keys", ()) for g in request.get("feature_groups", ())]


def basis_offsets(snapshot: dict[str, Any]) -> dict[int, int]:
    """partition -> exclusive-next offset of a snapshot's eb_offset_basis."""
    basis = snapshot.get("eb_offset_basis") or {}
    return {int(o["partition"]): int(o["offset"]) for o in basis.get("offsets", ())}

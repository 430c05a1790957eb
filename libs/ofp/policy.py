"""Feature policy: load, validate, normalise, digest (docs/contract.md 3).

The normalised policy is a plain JSON-able dict; `content_digest` and
`run_config_digest` are SHA-256 of its canonical JSON, so any two processes that
read the same YAML agree on both digests byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ofp.contracts.canonical import digest
from ofp.features import (
    Feature,
    FeatureError,
    check_key_type,
    features_from_normalized,
    parse_features,
    window_text,
)

DEFAULT_WINDOWS: tuple[tuple[str, int], ...] = (("1h", 3600), ("24h", 86400), ("7d", 604800))
# The decision loop's own outputs travel on the same topic but are not traffic;
# a group that does not list its event types consumes everything except these.
DEFAULT_EXCLUDED_EVENT_TYPES: tuple[str, ...] = (
    "action_intent",
    "action_outcome",
    "decision_response",
)
_DURATION = re.compile(r"^([0-9]+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_GROUP_KEYS = {
    "name", "version", "key_type", "amount_field", "windows", "event_types", "exclude_event_types",
    "features",
}
_TOP_KEYS = {"policy_id", "revision", "source_topic", "feature_groups", "description"}


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the problem."""


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    duration_s: int
    ttl_s: int

    @property
    def duration_us(self) -> int:
        return self.duration_s * 1_000_000

    @property
    def ttl_us(self) -> int:
        return self.ttl_s * 1_000_000


@dataclass(frozen=True, slots=True)
class FeatureGroup:
    name: str
    version: str
    key_type: str
    amount_field: str
    windows: tuple[Window, ...]  # sorted by duration, then name
    event_types: tuple[str, ...] | None  # None: every type not excluded
    exclude_event_types: tuple[str, ...]
    # The v1 feature language (docs/features.md); None: the v0 form (count and
    # sum of `amount_field` per window). A v1 group's `windows` are its
    # features' distinct windows, and its `amount_field` is empty.
    features: tuple[Feature, ...] | None = None

    @property
    def max_window_us(self) -> int:
        return max(w.duration_us for w in self.windows)

    def consumes(self, event_type: str) -> bool:
        if self.event_types is not None:
            return event_type in self.event_types
        return event_type not in self.exclude_event_types

    def feature_names(self) -> list[str]:
        if self.features is not None:
            return [*(f.name for f in self.features), "last_event_ts_utc"]
        names = []
        for w in self.windows:
            names += [f"event_count_{w.name}", f"amount_sum_{w.name}"]
        return [*names, "last_event_ts_utc"]

    def normalized(self) -> dict[str, Any]:
        if self.features is not None:
            return {
                "name": self.name,
                "version": self.version,
                "key_type": self.key_type,
                "event_types": None if self.event_types is None else list(self.event_types),
                "exclude_event_types": list(self.exclude_event_types),
                "features": [f.normalized() for f in self.features],
            }
        # The v0 form: exactly these keys, so v0 digests (and answers) never change.
        return {
            "name": self.name,
            "version": self.version,
            "key_type": self.key_type,
            "amount_field": self.amount_field,
            "event_types": None if self.event_types is None else list(self.event_types),
            "exclude_event_types": list(self.exclude_event_types),
            "windows": [
                {"window": w.name, "duration_s": w.duration_s, "ttl_s": w.ttl_s}
                for w in self.windows
            ],
        }


@dataclass(frozen=True, slots=True)
class Policy:
    policy_id: str
    revision: str
    source_topic: str
    groups: tuple[FeatureGroup, ...]  # sorted by (name, version)

    def normalized(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy_id,
            "revision": self.revision,
            "source_topic": self.source_topic,
            "feature_groups": [g.normalized() for g in self.groups],
        }

    @property
    def content_digest(self) -> str:
        return digest(self.normalized())

    def group(self, name: str, version: str) -> FeatureGroup | None:
        for g in self.groups:
            if g.name == name and g.version == version:
                return g
        return None

    def run_config(self, required_platform_run_id: str | None) -> dict[str, Any]:
        """Semantic inputs only: transport wiring never enters the digest."""
        return {
            "policy_id": self.policy_id,
            "revision": self.revision,
            "content_digest": self.content_digest,
            "feature_groups": [g.normalized() for g in self.groups],
            "source_topic": self.source_topic,
            "required_platform_run_id": required_platform_run_id,
        }

    def run_config_digest(self, required_platform_run_id: str | None) -> str:
        return digest(self.run_config(required_platform_run_id))


def parse_duration(text: Any, *, where: str) -> int:
    """`<int>(s|m|h|d)` > 0, in seconds."""
    m = _DURATION.match(str(text)) if isinstance(text, str | int) else None
    if m is None or int(m.group(1)) <= 0:
        raise PolicyError(f"{where}: duration {text!r} is not <int>(s|m|h|d) greater than zero")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def load_policy(path: str | Path, *, required_groups: tuple[str, ...] = ()) -> Policy:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"feature policy {p}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"feature policy {p}: not valid YAML ({exc})") from None
    return policy_from_dict(raw, source=str(p), required_groups=required_groups)


def policy_from_dict(
    raw: Any, *, source: str = "policy", required_groups: tuple[str, ...] = ()
) -> Policy:
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: top level must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise PolicyError(f"{source}: unknown keys {sorted(unknown)}")
    for field in ("policy_id", "revision", "source_topic"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            raise PolicyError(f"{source}: {field} is missing or empty")
    groups_raw = raw.get("feature_groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise PolicyError(f"{source}: feature_groups is missing or empty")
    groups = [_group(g, where=f"{source}: feature_groups[{i}]") for i, g in enumerate(groups_raw)]
    seen: set[str] = set()
    for g in groups:
        # A request names a group at most once, so a name maps to one version.
        if g.name in seen:
            raise PolicyError(f"{source}: feature group {g.name!r} appears more than once")
        seen.add(g.name)
    for name in required_groups:
        if name not in seen:
            raise PolicyError(f"{source}: configured feature group {name!r} is absent")
    return Policy(
        policy_id=raw["policy_id"],
        revision=str(raw["revision"]),
        source_topic=raw["source_topic"],
        groups=tuple(sorted(groups, key=lambda g: (g.name, g.version))),
    )


def _group(raw: Any, *, where: str) -> FeatureGroup:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a mapping")
    unknown = set(raw) - _GROUP_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    for field in ("name", "version", "key_type"):
        if not isinstance(raw.get(field), str) or not raw[field]:
            raise PolicyError(f"{where}: {field} is missing or empty")
    where = f"{where} ({raw['name']})"
    if "features" in raw:
        return _v1_group(raw, where=where)
    amount_field = raw.get("amount_field", "amount")
    if not isinstance(amount_field, str) or not amount_field:
        raise PolicyError(f"{where}: amount_field must be a non-empty string")
    windows_raw = raw.get("windows")
    if windows_raw is None:
        windows = [Window(name, secs, secs) for name, secs in DEFAULT_WINDOWS]
    else:
        if not isinstance(windows_raw, list) or not windows_raw:
            raise PolicyError(f"{where}: windows must be a non-empty list")
        windows = []
        for j, w in enumerate(windows_raw):
            ww = f"{where}: windows[{j}]"
            if not isinstance(w, dict) or set(w) - {"window", "duration", "ttl"}:
                raise PolicyError(f"{ww}: must be a mapping of window, duration, ttl")
            name = w.get("window")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,32}", name):
                raise PolicyError(f"{ww}: window name {name!r} must match [A-Za-z0-9_]{{1,32}}")
            duration = parse_duration(w.get("duration"), where=ww)
            ttl = parse_duration(w["ttl"], where=ww) if "ttl" in w else duration
            if ttl < duration:
                raise PolicyError(f"{ww}: ttl {w['ttl']!r} is shorter than duration")
            windows.append(Window(name, duration, ttl))
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise PolicyError(f"{where}: window names repeat: {names}")
    event_types = raw.get("event_types")
    if event_types is not None and (
        not isinstance(event_types, list) or not all(isinstance(t, str) for t in event_types)
    ):
        raise PolicyError(f"{where}: event_types must be a list of strings")
    excluded = raw.get("exclude_event_types", list(DEFAULT_EXCLUDED_EVENT_TYPES))
    if not isinstance(excluded, list) or not all(isinstance(t, str) for t in excluded):
        raise PolicyError(f"{where}: exclude_event_types must be a list of strings")
    return FeatureGroup(
        name=raw["name"],
        version=str(raw["version"]),
        key_type=raw["key_type"],
        amount_field=amount_field,
        windows=tuple(sorted(windows, key=lambda w: (w.duration_s, w.name))),
        event_types=None if event_types is None else tuple(sorted(set(event_types))),
        exclude_event_types=tuple(sorted(set(excluded))),
    )


def _event_types(raw: dict[str, Any], *, where: str) -> tuple[tuple[str, ...] | None,
                                                            tuple[str, ...]]:
    event_types = raw.get("event_types")
    if event_types is not None and (
        not isinstance(event_types, list) or not all(isinstance(t, str) for t in event_types)
    ):
        raise PolicyError(f"{where}: event_types must be a list of strings")
    excluded = raw.get("exclude_event_types", list(DEFAULT_EXCLUDED_EVENT_TYPES))
    if not isinstance(excluded, list) or not all(isinstance(t, str) for t in excluded):
        raise PolicyError(f"{where}: exclude_event_types must be a list of strings")
    return (None if event_types is None else tuple(sorted(set(event_types))),
            tuple(sorted(set(excluded))))


def _v1_group(raw: dict[str, Any], *, where: str) -> FeatureGroup:
    """A group in the v1 feature language: a `features:` list (docs/features.md)."""
    for key in ("amount_field", "windows"):
        if key in raw:
            raise PolicyError(
                f"{where}: {key} belongs to the v0 form; with features: each feature names"
                " its field and window"
            )
    try:
        features = parse_features(raw["features"], where=where)
        check_key_type(raw["key_type"], where=where)
    except FeatureError as exc:
        raise PolicyError(str(exc)) from None
    event_types, excluded = _event_types(raw, where=where)
    return FeatureGroup(
        name=raw["name"],
        version=str(raw["version"]),
        key_type=raw["key_type"],
        amount_field="",
        windows=_feature_windows(features),
        event_types=event_types,
        exclude_event_types=excluded,
        features=features,
    )


def _feature_windows(features: tuple[Feature, ...]) -> tuple[Window, ...]:
    durations = sorted({f.window_s for f in features})
    return tuple(Window(window_text(d), d, d) for d in durations)


def policy_from_normalized(content: dict[str, Any]) -> Policy:
    """Rebuild a Policy from the normalized form recorded in the database."""
    groups = []
    for g in content["feature_groups"]:
        if "features" in g:
            features = features_from_normalized(g["features"])
            groups.append(FeatureGroup(
                name=g["name"],
                version=g["version"],
                key_type=g["key_type"],
                amount_field="",
                windows=_feature_windows(features),
                event_types=None if g["event_types"] is None else tuple(g["event_types"]),
                exclude_event_types=tuple(g["exclude_event_types"]),
                features=features,
            ))
            continue
        groups.append(
            FeatureGroup(
                name=g["name"],
                version=g["version"],
                key_type=g["key_type"],
                amount_field=g["amount_field"],
                windows=tuple(
                    Window(w["window"], int(w["duration_s"]), int(w["ttl_s"]))
                    for w in g["windows"]
                ),
                event_types=None if g["event_types"] is None else tuple(g["event_types"]),
                exclude_event_types=tuple(g["exclude_event_types"]),
            )
        )
    return Policy(
        policy_id=content["policy_id"],
        revision=content["revision"],
        source_topic=content["source_topic"],
        groups=tuple(groups),
    )


def union_policy(base: Policy, others: Iterable[Policy]) -> Policy:
    """`base` with the groups of `others` added: what the projector applies while a
    revision is rolled out. A (name, version) means one thing in every revision
    (the store refuses a changed meaning), so each is taken once."""
    groups = {(g.name, g.version): g for g in base.groups}
    for other in others:
        if other.source_topic != base.source_topic:
            raise PolicyError(
                f"revision {other.revision} reads {other.source_topic!r}, the active revision"
                f" {base.revision} reads {base.source_topic!r}: one database serves one stream"
            )
        for g in other.groups:
            groups.setdefault((g.name, g.version), g)
    return replace(base, groups=tuple(groups[k] for k in sorted(groups)))

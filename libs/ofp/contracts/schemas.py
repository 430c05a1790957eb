"""Compiled validators for the RTDL contract schemas.

The RTDL YAML schemas (the authority, in `ofp/contracts/rtdl/`) ship as package data
and are read with importlib.resources, so an installed package validates without the
repository. All schemas share one `jsonschema_rs.Registry`, so cross-file `$ref`s
(`context_pins.schema.yaml`, ...) resolve offline, and format validation is on.

    SCHEMAS                file name -> schema, as loaded
    validator(name)        compiled validator of one schema file (cached)
    first_error(name, doc) None when `doc` is valid, else "<path>: <message>"
    envelope_errors(obj)   first_error against the canonical envelope
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
import yaml


def load_schemas() -> dict[str, dict[str, Any]]:
    """Every `*.schema.yaml` of the package's `rtdl/` directory, keyed by file name."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files("ofp.contracts").joinpath("rtdl").iterdir(),
                        key=lambda e: e.name):
        if entry.name.endswith(".schema.yaml"):
            out[entry.name] = yaml.load(entry.read_text(encoding="utf-8"), Loader=loader)
    return out


SCHEMAS: dict[str, dict[str, Any]] = load_schemas()

ENVELOPE = "canonical_envelope.schema.yaml"
GET_FEATURES_REQUEST = "get_features_request.schema.yaml"
GET_FEATURES_RESPONSE = "get_features_response.schema.yaml"
GET_FEATURES_ERROR = "get_features_error.schema.yaml"
FEATURE_SNAPSHOT = "feature_snapshot.schema.yaml"

_MAX_MESSAGE_CHARS = 300


@cache
def _registry() -> jsonschema_rs.Registry:
    return jsonschema_rs.Registry([(schema["$id"], schema) for schema in SCHEMAS.values()])


@cache
def validator(name: str) -> jsonschema_rs.Validator:
    """The compiled validator of schema file `name` (e.g. "freshness.schema.yaml")."""
    try:
        schema = SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown contract schema {name!r}") from None
    return jsonschema_rs.validator_for(schema, validate_formats=True, registry=_registry())


def format_path(path: Any) -> str:
    """`["feature_keys", 0, "key_id"]` -> "feature_keys[0].key_id"; `[]` -> ""."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def first_error(name: str, doc: Any) -> str | None:
    """None when `doc` is valid against schema `name`, else one short readable error."""
    compiled = validator(name)
    if compiled.is_valid(doc):
        return None
    for error in compiled.iter_errors(doc):
        message = str(error.message)
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
        path = format_path(error.instance_path)
        return f"{path}: {message}" if path else message
    return "does not match the schema"  # is_valid and iter_errors disagreed; still refuse


def envelope_errors(obj: Any) -> str | None:
    """None when `obj` is a valid canonical envelope (docs/contract.md 2.1), else its first error.

    Pins are not required by the envelope schema; the projector checks them separately.
    """
    return first_error(ENVELOPE, obj)

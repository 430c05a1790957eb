"""`ofp export`'s fast row validation gives exactly what `validate_request_json` gives.

The export validates the pins and groups once, then each row's as-of and keys
(`_RowParser.fast`); a row it is not sure of goes through the full validation.
Whatever it accepts must be the very ValidRequest the full validation returns
(so a row's answer and hash are GetFeatures' own), and it must accept nothing
the full validation refuses.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ofp.config import Settings
from ofp.contracts.errors import ContractError
from ofp.contracts.request import validate_request_json
from ofp.policy import load_policy
from ofp_cli.export import ExportOptions, _Display, _RowParser
from ofp_cli.spine import Spine

REPO = Path(__file__).resolve().parents[2]
PINS: dict[str, Any] = {
    "platform_run_id": "platform_20260201T000000Z", "scenario_run_id": "1" * 32,
    "scenario_id": "scenario_A", "manifest_fingerprint": "f" * 64, "parameter_hash": "e" * 64,
    "seed": 0,
}


def parser() -> _RowParser:
    tmp = Path(tempfile.mkdtemp(prefix="ofp-export-rows-"))
    spine = tmp / "spine.csv"
    spine.write_text("key,as_of\n", encoding="utf-8")
    groups = list(load_policy(REPO / "config" / "features_v0.yaml").groups)
    options = ExportOptions(spine=spine, out=tmp / "out.parquet", pins=PINS)
    return _RowParser(Settings(), options, Spine(spine, key_types={"flow_id"}), groups)


PARSER = parser()
as_ofs = st.one_of(
    st.sampled_from(["2026-02-06T12:00:00Z", "2026-02-06t12:00:00.123456789z",
                     "2026-02-06T12:00:00+00:00", "2026-02-30T00:00:00Z", "2026-02-06T24:00:00Z",
                     "2026-02-06T23:59:60Z", "2026-02-06 12:00:00Z", "2026-02-06T12:00:00",
                     "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", ""]),
    st.text(max_size=30))
key_texts = st.one_of(st.sampled_from(["42", "", "x" * 256, "x" * 257, "a\x00b", "\ud800",
                                       "é", "id:with:colons"]), st.text(max_size=8))


@given(as_of=as_ofs, key_type=st.sampled_from(["flow_id", "", "t" * 65, "merchant_id"]),
       key_id=key_texts, groups=st.sampled_from([None, ["core_features:v1"],
                                                 ["core_features:v1", "core_features:v1"]]))
def test_fast_validation_accepts_only_what_the_full_validation_accepts_identically(
    as_of: str, key_type: str, key_id: str, groups: list[str] | None
) -> None:
    p = PARSER
    doc = {**p.template(), "as_of_time_utc": as_of,
           "feature_keys": [{"key_type": key_type, "key_id": key_id}]}
    if groups is not None:
        doc["feature_groups"] = [dict(zip(("name", "version"), g.split(":"), strict=True))
                                 for g in groups]
    try:
        full = validate_request_json(doc)
    except ContractError:
        full = None
    fast = p.fast(doc)
    if fast is not None:
        assert fast == full


def test_fast_validation_takes_plain_rows() -> None:
    doc = {**PARSER.template(), "as_of_time_utc": "2026-02-06T12:00:00.5Z",
           "feature_keys": [{"key_type": "flow_id", "key_id": "42"}]}
    assert PARSER.fast(doc) == validate_request_json(doc)
    assert PARSER.fast(doc) is not None


def test_progress_is_logged_as_json_lines_when_stderr_is_not_a_terminal() -> None:
    display = _Display()
    assert not display.tty  # pytest captures stderr
    with capture_logs() as logs:
        display.start(100)
        display.update(40, Counter({"OK": 39, "BAD_ROW": 1}))
        display.update(100, Counter({"OK": 99, "BAD_ROW": 1}), final=True)
    lines = [x for x in logs if x["event"] == "export_progress"]
    assert [x["rows_done"] for x in lines] == [40, 100]
    assert lines[-1]["rows_total"] == 100 and lines[-1]["finished"] is True
    assert lines[-1]["statuses"] == {"OK": 99, "BAD_ROW": 1}
    assert lines[0]["eta_s"] is not None and lines[0]["rows_per_s"] > 0

"""`buf breaking` guards every stub from now on: the protos this release leaves are
kept as a baseline image (protos/baseline/ofp_v1.binpb), `make lint` checks the
current protos against it, and a wire-incompatible edit is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
BASELINE = REPO / "protos" / "baseline" / "ofp_v1.binpb"


def breaking(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", str(module), "--against", str(BASELINE)],
        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_current_protos_keep_the_baseline() -> None:
    done = breaking(REPO / "protos")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_changed_field_type_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(REPO / "protos", copy, ignore=shutil.ignore_patterns("baseline"))
    proto = copy / "ofp" / "v1" / "feature_service.proto"
    text = proto.read_text()
    old = 'optional string request_id = 6 [json_name = "request_id"];'
    assert old in text
    proto.write_text(text.replace(old, 'optional int64 request_id = 6 [json_name = "request_id"];'))
    done = breaking(copy)
    assert done.returncode != 0
    assert "request_id" in done.stdout + done.stderr

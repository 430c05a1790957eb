"""Every `ofp` command says what it does, shows examples, and takes `--json`;
`ofp --version` names the installed version."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ofp_cli.main import build_parser
from ofp_cli.usage import EXAMPLES, commands

PARSER = build_parser()
COMMANDS = commands(PARSER)


def test_the_command_tree_is_walked() -> None:
    paths = {path for path, _, _ in COMMANDS}
    assert {"migrate", "status", "replay", "verify", "policy stage", "quarantine replay",
            "quarantine list", "quarantine show"} <= paths


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS])
def test_every_command_has_a_description_examples_and_json_when_asked_for_help(
    path: str,
) -> None:
    parser = next(p for q, p, _ in COMMANDS if q == path)
    text = parser.format_help()
    assert parser.description, f"ofp {path}: no description"
    assert "\nexamples:\n" in text, f"ofp {path}: no examples (add them to usage.EXAMPLES)"
    examples = text.split("\nexamples:\n", 1)[1]
    assert f"ofp {path}" in examples, f"ofp {path}: the examples do not show the command"
    leaf = not any(q.startswith(path + " ") for q, _, _ in COMMANDS)
    if leaf:
        assert "--json" in text, f"ofp {path}: no --json"


def test_every_example_names_a_command_that_exists() -> None:
    paths = {p for p, _, _ in COMMANDS} | {""}
    assert set(EXAMPLES) <= paths, set(EXAMPLES) - paths


def _ofp(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ofp_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_version_and_help_when_run_as_a_process(tmp_path: Path) -> None:
    done = _ofp("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"ofp {metadata.version('ofp')}"
    done = _ofp("quarantine", "replay", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "examples:" in done.stdout


def test_json_of_a_text_command_is_its_output_as_one_document(tmp_path: Path) -> None:
    # `migrate --print-grants` prints SQL text and needs no database.
    done = _ofp("migrate", "--print-grants", "--database", "ofp", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["command"] == "migrate" and doc["exit_code"] == 0
    assert any("GRANT" in line for line in doc["output"])

"""What `ofp ... --help` says: a description and examples for every command, and
`--json` on every command.

The examples live here, in one table keyed by command path, so that a new
command without any is caught by one test (tests/unit/test_cli_help.py)
rather than found missing by an operator. `finish(parser)` applies the table to
the whole parser tree after every module has added its commands.

`--json` is every command's: a command that prints JSON anyway (get-features,
dev, snapshot get) accepts it and prints the same; one that prints JSON when
asked declares it (`set_defaults(json_aware=True)` or its own `--json`); for
any other, `ofp` captures its text output and prints
`{"command", "exit_code", "output": [lines]}`.
"""

from __future__ import annotations

import argparse
from importlib import metadata

EXAMPLES: dict[str, list[str]] = {
    "": [
        "ofp dev                                  # everything local, with a sample stream",
        "ofp status --fail-on red                 # exit 1 when the health is RED",
        "ofp quarantine list                      # quarantined records by reason",
    ],
    "migrate": [
        "ofp migrate",
        "ofp migrate --wait 60 --json             # in a Job that may start before the database",
        "ofp migrate --print-grants --database ofp > roles.sql",
    ],
    "dev": [
        "ofp dev                                  # serve until Ctrl-C",
        "ofp dev --no-follow --events 200         # print the sample answer and exit",
    ],
    "status": [
        "ofp status",
        "ofp status --json | jq .health",
        "ofp status --address 10.0.0.5:50051 --fail-on amber   # a server's GetStatus",
    ],
    "get-features": [
        "ofp get-features --pins-json @pins.json --as-of 2026-02-06T12:00:00Z \\",
        "    --key flow_id:3 --group core_features:v1 > answer.json",
    ],
    "verify": [
        "ofp verify answer.json                   # recompute snapshot_hash",
        "ofp verify --replay answer.json --json   # rebuild the basis from the bus, ask again",
    ],
    "replay": [
        "ofp replay                               # into ofp_replay_<time>, dropped afterwards",
        "ofp replay --keep                        # keep it to inspect or switch to",
        "ofp replay --target-dsn postgresql://ofp@db/ofp_rebuilt --json",
    ],
    "policy": [
        "ofp policy stage config/features_v2.yaml",
        "ofp policy status --json",
        "ofp policy activate 2026-03-01",
    ],
    "policy stage": [
        "ofp policy stage config/features_v2.yaml",
        "ofp policy stage config/features_v2.yaml --no-backfill",
    ],
    "policy backfill": ["ofp policy backfill --timeout 3600"],
    "policy activate": ["ofp policy activate 2026-03-01"],
    "policy rollback": ["ofp policy rollback --json"],
    "policy discard": ["ofp policy discard"],
    "policy status": ["ofp policy status", "ofp policy status --json"],
    "snapshot": ["ofp snapshot get 9f2c...e1 --address 127.0.0.1:50051"],
    "snapshot get": ["ofp snapshot get 9f2c...e1 --address 127.0.0.1:50051 > snapshot.json"],
    "audit": [
        "ofp audit --since 2h",
        "ofp audit --since 30m --every 5m --json",
    ],
    "export": [
        "ofp export --spine spine.csv --out features.parquet --pins-json @pins.json \\",
        "    --group core_features:v1",
    ],
    "quarantine": [
        "ofp quarantine list",
        "ofp quarantine show 42",
        "ofp quarantine replay --reason ts_in_future",
    ],
    "quarantine list": [
        "ofp quarantine list                      # counts by reason, then the open records",
        "ofp quarantine list --reason key_invalid --all --json",
    ],
    "quarantine show": ["ofp quarantine show 42", "ofp quarantine show 42 --json"],
    "quarantine replay": [
        "ofp quarantine replay                    # every open record",
        "ofp quarantine replay --reason ts_in_future --json",
        "ofp quarantine replay --id 42 --id 43",
    ],
}


# Commands whose answer on stdout is JSON whatever the flags.
JSON_NATIVE = frozenset({"get-features", "dev", "snapshot get"})


def version() -> str:
    try:
        return metadata.version("ofp")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def commands(parser: argparse.ArgumentParser, path: str = ""
             ) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every (command path, parser, one-line help) below `parser`, depth first."""
    found: list[tuple[str, argparse.ArgumentParser, str | None]] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, child in action.choices.items():
            child_path = f"{path} {name}".strip()
            found.append((child_path, child, helps.get(name)))
            found.extend(commands(child, child_path))
    return found


def finish(parser: argparse.ArgumentParser) -> None:
    """Descriptions, examples and `--json` on every command; `--version` on `ofp`."""
    parser.add_argument("--version", action="version", version=f"ofp {version()}")
    _describe(parser, "", parser.description)
    for path, child, help_text in commands(parser):
        _describe(child, path, help_text)
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
        if not leaf:
            continue
        if "--json" in child._option_string_actions:
            child.set_defaults(json_aware=True)  # its own --json
        else:
            native = path in JSON_NATIVE
            child.add_argument(
                "--json", action="store_true",
                help="the output is JSON already" if native
                else "print the result as JSON on stdout")
            if native:
                child.set_defaults(json_aware=True)


def _describe(p: argparse.ArgumentParser, path: str, help_text: str | None) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    if not p.description and help_text:
        p.description = help_text[0].upper() + help_text[1:] + "."
    examples = EXAMPLES.get(path)
    if examples:
        p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)

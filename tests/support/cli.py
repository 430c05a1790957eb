"""Run the `ofp` CLI and the console scripts as real processes in tests."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from tests.support.harness import POLICY_PATH


def process_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any OFP_ setting, plus `extra`: what a
    product process started by a test sees."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OFP_")}, **extra}


async def run_ofp(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`ofp ARGS` in a subprocess; asyncio, so an in-process server keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ofp_cli.main", *args,
        env=process_env(env),
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def cli_env(dsn: str, bus_root: Path, **extra: str) -> dict[str, str]:
    return {
        "OFP_DATABASE_URL": dsn,
        "OFP_FILE_BUS_ROOT": str(bus_root),
        "OFP_FEATURES_PATH": str(POLICY_PATH),
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port

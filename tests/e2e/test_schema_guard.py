"""The workloads refuse a database whose schema is not their build's (exit 3, one line),
and the server still waits for a database that does not answer."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from ofp.store.db import migrate
from ofp.store.schema import EXIT_SCHEMA, expected_versions
from tests.support.cli import cli_env, free_port, process_env


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


async def _run(name: str, env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        _script(name), *args, env=process_env(env), cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def _set_schema(dsn: str, *, shift: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        if shift == "ahead":
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'x')")
        elif shift == "behind":
            await conn.execute("DELETE FROM schema_migrations WHERE version = $1",
                               max(expected_versions()))
    finally:
        await conn.close()


def _one_line(err: str, workload: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"{workload}:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("workload", ["ofp-projector", "ofp-server"])
@pytest.mark.parametrize(
    ("shift", "expected"),
    [("ahead", "ahead of this build"), ("behind", "behind this build")],
)
async def test_workload_refuses_to_start_when_the_schema_is_not_its_own(
    fresh_dsn: str, bus_root: Path, tmp_path: Path, workload: str, shift: str, expected: str
) -> None:
    await _set_schema(fresh_dsn, shift=shift)
    env = cli_env(fresh_dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
                  OFP_AUTO_MIGRATE="false")
    args = ("--once",) if workload == "ofp-projector" else ()

    code, err = await _run(workload, env, tmp_path, *args)

    assert code == EXIT_SCHEMA, err
    line = _one_line(err, workload)
    assert "refusing to start" in line and expected in line, line


async def test_projector_refuses_a_database_without_schema_when_auto_migrate_is_off(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    env = cli_env(fresh_dsn, bus_root, OFP_AUTO_MIGRATE="false")

    code, err = await _run("ofp-projector", env, tmp_path, "--once")

    assert code == EXIT_SCHEMA, err
    assert "no OFP schema" in _one_line(err, "ofp-projector")
    conn = await asyncpg.connect(fresh_dsn)
    try:  # and it created nothing
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_projector_with_auto_migrate_still_refuses_a_schema_ahead_of_it(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    await _set_schema(fresh_dsn, shift="ahead")

    code, err = await _run("ofp-projector", cli_env(fresh_dsn, bus_root), tmp_path, "--once")

    assert code == EXIT_SCHEMA, err
    assert "ahead of this build" in _one_line(err, "ofp-projector")


async def test_server_keeps_waiting_when_the_database_does_not_answer(
    bus_root: Path, tmp_path: Path
) -> None:
    dead = f"postgresql://u@127.0.0.1:{free_port()}/d"
    env = process_env(cli_env(dead, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{free_port()}"))
    proc = await asyncio.create_subprocess_exec(
        _script("ofp-server"), env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=5)  # the guard re-checks meanwhile
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b'"event": "schema_check_deferred"' in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

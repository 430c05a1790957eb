"""The DSN's password and AWS secrets never reach logs or errors (docs/contract.md 6, issue 5).

Both console scripts run as real processes with a DSN that holds a password and points
at a host that does not answer, plus AWS credentials in the environment. Whatever they
print (JSON logs on stdout, one-line errors on stderr) must not contain either secret;
the server must still be alive (liveness) and say why it is not serving.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.e2e.test_workloads import _script
from tests.support.cli import cli_env, free_port, process_env, run_ofp
from tests.support.streams import generate

PASSWORD = "Pw-d0-not-leak-7f3a"
AWS_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"
AWS_SESSION = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN"
SECRETS = (PASSWORD, AWS_SECRET, AWS_SESSION)
HOSTS = ("127.0.0.1:{port}", "ofp-db.invalid:5432")


def secret_env(bus_root: Path, host: str, **extra: str) -> dict[str, str]:
    dsn = f"postgresql://ofp:{PASSWORD}@{host}/ofp?sslmode=disable"
    return process_env({
        **cli_env(dsn, bus_root, **extra),
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_SESSION_TOKEN": AWS_SESSION,
        "AWS_REGION": "eu-west-1",
    })


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        where = text.find(secret)
        assert where < 0, f"secret leaked: ...{text[max(0, where - 200):where + 200]}"


@pytest.mark.parametrize("host", HOSTS, ids=["refused", "unresolvable"])
async def test_projector_fails_in_one_line_without_secrets_when_the_database_is_wrong(
    bus_root: Path, tmp_path: Path, host: str
) -> None:
    generate(71, n_events=10, n_partitions=1).write(bus_root)
    env = secret_env(bus_root, host.format(port=free_port()))
    proc = await asyncio.create_subprocess_exec(
        _script("ofp-projector"), "--once", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = out.decode() + err.decode()
    assert proc.returncode != 0
    assert "Traceback" not in text, text[-2000:]
    assert_no_secret(text)


@pytest.mark.parametrize("host", HOSTS, ids=["refused", "unresolvable"])
async def test_server_stays_alive_unready_and_logs_no_secret_when_the_database_is_wrong(
    bus_root: Path, tmp_path: Path, host: str
) -> None:
    port, metrics_port = free_port(), free_port()
    env = secret_env(bus_root, host.format(port=free_port()),
                     OFP_GRPC_ADDRESS=f"127.0.0.1:{port}", OFP_METRICS_PORT=str(metrics_port))
    proc = await asyncio.create_subprocess_exec(
        _script("ofp-server"), env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async def until_health_failed() -> None:
            assert proc.stdout is not None
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "server exited: " + "".join(seen)
                seen.append(line)
                if '"health_check_failed"' in line:
                    return

        await asyncio.wait_for(until_health_failed(), timeout=60)
        # Ask it something that touches the database, too: an RPC error must not leak.
        rc, out, err = await run_ofp(
            "status", "--address", f"127.0.0.1:{port}", "--json", env=process_env({}), cwd=tmp_path
        )
        assert rc == 1 and json.loads(out)["code"] == "UNAVAILABLE"
        assert_no_secret(out + err)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, err_bytes = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = "".join(seen) + rest.decode() + err_bytes.decode()
    assert proc.returncode == 0, text[-2000:]
    assert "Traceback" not in text
    assert_no_secret(text)

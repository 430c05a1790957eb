"""TLS and mutual TLS on the gRPC port, from configured PEM files (throwaway CAs).

The right certificates succeed; no TLS, an unknown server CA, a missing client
certificate or one from another CA fail. The plaintext health listener (for kubelet
probes) serves grpc.health.v1 only, never the feature service.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.config import ConfigError
from ofp_server.server import FeatureServer, create_server
from tests.support.harness import project_once
from tests.support.harness import settings as make_settings

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    server_ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the server does not trust
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    client = client_ca.issue_cert("ofp-client.example")
    rogue = rogue_ca.issue_cert("ofp-client.example")

    def write(name: str, data: bytes) -> Path:
        path = d / name
        path.write_bytes(data)
        return path

    def chain(cert: trustme.LeafCert) -> bytes:
        return b"".join(blob.bytes() for blob in cert.cert_chain_pems)

    return Pki(
        server_ca=write("server-ca.pem", server_ca.cert_pem.bytes()),
        server_cert=write("server.pem", chain(server)),
        server_key=write("server.key", server.private_key_pem.bytes()),
        client_ca=write("client-ca.pem", client_ca.cert_pem.bytes()),
        client_cert=write("client.pem", chain(client)),
        client_key=write("client.key", client.private_key_pem.bytes()),
        rogue_cert=write("rogue.pem", chain(rogue)),
        rogue_key=write("rogue.key", rogue.private_key_pem.bytes()),
    )


async def started(pool: asyncpg.Pool, bus_root: Path, pki: Pki, *, mutual: bool) -> FeatureServer:
    overrides = {"tls_cert_path": str(pki.server_cert), "tls_key_path": str(pki.server_key)}
    if mutual:
        overrides["tls_client_ca_path"] = str(pki.client_ca)
    srv = create_server(make_settings(bus_root, **overrides), pool, "127.0.0.1:0",
                        health_address="127.0.0.1:0")
    await srv.start()
    return srv


@pytest.fixture
async def projected(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[asyncpg.Pool]:
    await project_once(pool, bus_root)  # records the policy: GetStatus has a stream
    yield pool


def credentials(ca: Path | None, cert: Path | None = None,
                key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca is None else ca.read_bytes(),
        private_key=None if key is None else key.read_bytes(),
        certificate_chain=None if cert is None else cert.read_bytes(),
    )


async def status_over(channel: grpc.aio.Channel) -> str:
    stub = pb_grpc.FeatureServiceStub(channel)
    resp = await stub.GetStatus(pb.GetStatusRequest(), timeout=5)
    return str(resp.status)


async def call_fails(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await status_over(channel)
    return err.value.code()


async def test_tls_call_succeeds_with_the_server_ca_and_fails_without_tls_or_with_another_ca(
    projected: asyncpg.Pool, bus_root: Path, pki: Pki
) -> None:
    srv = await started(projected, bus_root, pki, mutual=False)
    address = f"127.0.0.1:{srv.port}"
    try:
        assert srv.tls == "tls"
        async with grpc.aio.secure_channel(address, credentials(pki.server_ca)) as channel:
            assert await status_over(channel) == "OK"
        assert await call_fails(grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
        wrong_ca = grpc.aio.secure_channel(address, credentials(pki.client_ca))
        assert await call_fails(wrong_ca) == grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.stop(0)


async def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(
    projected: asyncpg.Pool, bus_root: Path, pki: Pki
) -> None:
    srv = await started(projected, bus_root, pki, mutual=True)
    address = f"127.0.0.1:{srv.port}"
    try:
        assert srv.tls == "mtls"
        good = credentials(pki.server_ca, pki.client_cert, pki.client_key)
        async with grpc.aio.secure_channel(address, good) as channel:
            assert await status_over(channel) == "OK"
        no_cert = grpc.aio.secure_channel(address, credentials(pki.server_ca))
        assert await call_fails(no_cert) == grpc.StatusCode.UNAVAILABLE
        rogue = grpc.aio.secure_channel(
            address, credentials(pki.server_ca, pki.rogue_cert, pki.rogue_key)
        )
        assert await call_fails(rogue) == grpc.StatusCode.UNAVAILABLE
        assert await call_fails(grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.stop(0)


async def test_plaintext_health_port_serves_health_only_while_the_main_port_needs_mtls(
    projected: asyncpg.Pool, bus_root: Path, pki: Pki
) -> None:
    srv = await started(projected, bus_root, pki, mutual=True)
    try:
        assert srv.health_port is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "ofp.v1.FeatureService", "liveness"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                           timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await status_over(channel)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await srv.stop(0)


def test_unreadable_certificate_file_is_a_configuration_error_naming_the_setting(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    settings = make_settings(bus_root, tls_cert_path=str(tmp_path / "missing.pem"),
                             tls_key_path=str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match="tls_cert_path"):
        create_server(settings, pool, "127.0.0.1:0")


async def test_cli_status_asks_get_status_over_mutual_tls(
    projected: asyncpg.Pool, bus_root: Path, pki: Pki, tmp_path: Path
) -> None:
    srv = await started(projected, bus_root, pki, mutual=True)
    tls = ["--tls-ca", str(pki.server_ca), "--tls-cert", str(pki.client_cert),
           "--tls-key", str(pki.client_key)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFP_")}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ofp_cli.main", "status", "--json",
            "--address", f"127.0.0.1:{srv.port}", *tls,
            env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        assert b'"state": "RED"' in out and b"\"NO_PARTITIONS\"" in out
    finally:
        await srv.stop(0)

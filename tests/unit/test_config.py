"""Settings: default -> YAML -> environment; strict keys; secrets masked (docs/contract.md 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ofp.config import ConfigError, load_settings, mask_dsn


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "ofp.yaml"
    cfg.write_text("batch_size: 10\nfile_bus_root: /from/file\nmax_keys: 50\n")
    s = load_settings(cfg, env={"OFP_BATCH_SIZE": "20", "AWS_REGION": "eu-west-1"})
    assert (s.batch_size, s.file_bus_root, s.max_keys, s.aws_region) == (
        20, "/from/file", 50, "eu-west-1"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_sise: 10\n", "unknown setting"),
        ("database_url: postgresql://u:p@h/d\n", "secret"),
        ("bus_kind: kafka\n", "bus_kind"),
        ("max_keys: 101\n", "max_keys"),
        ("batch_size: many\n", "batch_size"),
        ("retention_days: 0\n", "retention_days"),
        ("max_future_skew_s: -1\n", "max_future_skew_s"),
        ("tls_cert_path: /c.pem\n", "tls_cert_path and tls_key_path"),
        ("tls_client_ca_path: /ca.pem\n", "mutual TLS"),
        ("status_checkpoint_amber_s: 400\n", "status_checkpoint_amber_s"),
        ("status_watermark_amber_s: 0\n", "status_watermark_amber_s"),
        ("status_quarantine_amber: -1\n", "status_quarantine_amber"),
        ("health_port: 70000\n", "health_port"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "ofp.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, env={})


def test_the_database_url_never_prints() -> None:
    s = load_settings(None, env={"OFP_DATABASE_URL": "postgresql://ofp:hunter2@db:5432/ofp"})
    assert s.database_url == "postgresql://ofp:hunter2@db:5432/ofp"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert mask_dsn(s.database_url) == "postgresql://ofp:***@db:5432/ofp"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OFP_KINESIS_START_POSITION": "AT_TIMESTAMP"}, "kinesis_start_position"),
        ({"OFP_KINESIS_GET_RECORDS_LIMIT": "10001"}, "kinesis_get_records_limit"),
        ({"OFP_LEASE_TTL_S": "1"}, "lease_ttl_s"),
        ({"OFP_KINESIS_READ_TIMEOUT_MS": "0"}, "kinesis_read_timeout_ms"),
    ],
)
def test_bad_kinesis_and_lease_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env=env)


def test_kinesis_stream_defaults_to_the_topic_and_the_environment_names_it() -> None:
    s = load_settings(None, env={"OFP_BUS_KIND": "kinesis", "OFP_LEASE_TTL_S": "3"})
    assert (s.bus_stream("topic.a"), s.lease_ttl_s) == ("topic.a", 3)
    s = load_settings(None, env={"OFP_BUS_KIND": "kinesis", "OFP_KINESIS_STREAM_NAME": "ks"})
    assert s.bus_stream("topic.a") == "ks"
    assert load_settings(None, env={"OFP_KINESIS_STREAM_NAME": "ks"}).bus_stream("t") == "t"


def test_ladder_thresholds_and_tls_come_from_the_environment() -> None:
    s = load_settings(None, env={
        "OFP_STATUS_CHECKPOINT_AMBER_S": "30", "OFP_STATUS_CHECKPOINT_RED_S": "60",
        "OFP_STATUS_QUARANTINE_AMBER": "0", "OFP_TLS_CERT_PATH": "/tls/tls.crt",
        "OFP_TLS_KEY_PATH": "/tls/tls.key", "OFP_TLS_CLIENT_CA_PATH": "/tls/ca.crt",
        "OFP_HEALTH_PORT": "50052",
    })
    assert (s.status_checkpoint_amber_s, s.status_checkpoint_red_s) == (30, 60)
    assert s.status_quarantine_amber == 0 and s.health_port == 50052
    assert (s.tls_cert_path, s.tls_key_path, s.tls_client_ca_path) == (
        "/tls/tls.crt", "/tls/tls.key", "/tls/ca.crt"
    )


def test_grpc_reuseport_is_off_by_default_and_read_as_a_boolean() -> None:
    assert load_settings(None, env={}).grpc_reuseport is False
    assert load_settings(None, env={"OFP_GRPC_REUSEPORT": "true"}).grpc_reuseport is True
    assert load_settings(None, env={"OFP_GRPC_REUSEPORT": "0"}).grpc_reuseport is False
    with pytest.raises(ConfigError, match="grpc_reuseport"):
        load_settings(None, env={"OFP_GRPC_REUSEPORT": "maybe"})


def test_reads_in_flight_defaults_to_two_and_stays_within_the_pool() -> None:
    assert load_settings(None, env={}).db_reads_in_flight == 2
    assert load_settings(None, env={"OFP_DB_READS_IN_FLIGHT": "1"}).db_reads_in_flight == 1
    for bad in ({"OFP_DB_READS_IN_FLIGHT": "0"},
                {"OFP_DB_READS_IN_FLIGHT": "9", "OFP_DB_POOL_MAX": "8"}):
        with pytest.raises(ConfigError, match="db_reads_in_flight"):
            load_settings(None, env=bad)

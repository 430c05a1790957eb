"""Settings: default -> YAML -> environment; strict keys; secrets masked (SPEC 5)."""

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
        ("retention_days: 3\n", "retention_days"),
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

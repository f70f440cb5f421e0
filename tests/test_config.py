"""Settings: environment overrides, and production refuses placeholder secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from weijian.config import FsyncPolicy, load_settings


def test_environment_overrides_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIJIAN_INFLUX__URL", "http://influx.example:8086")
    monkeypatch.setenv("WEIJIAN_SPOOL__FSYNC", "interval")
    s = load_settings()
    assert s.influx.url == "http://influx.example:8086"
    assert s.spool.fsync is FsyncPolicy.INTERVAL


def test_yaml_file_is_read_and_unknown_keys_are_refused(tmp_path) -> None:
    path = tmp_path / "weijian.yaml"
    path.write_text("mqtt:\n  port: 2883\n")
    assert load_settings(path).mqtt.port == 2883
    path.write_text("mqtt:\n  prot: 2883\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(path)


@pytest.mark.parametrize("secret", ["changeme", "please-change-me-influx-token", "admin"])
def test_production_refuses_placeholder_secrets(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("WEIJIAN_ENVIRONMENT", "production")
    monkeypatch.setenv("WEIJIAN_INFLUX__TOKEN", secret)
    with pytest.raises(ValidationError, match=r"influx\.token is a placeholder"):
        load_settings()


@pytest.mark.parametrize(
    "setting", ["influx.password", "influx.token", "mqtt.password", "gateway.jwt_secret"]
)
def test_production_refuses_each_placeholder_secret(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("WEIJIAN_ENVIRONMENT", "production")
    monkeypatch.setenv("WEIJIAN_GATEWAY__JWT_SECRET", "a-real-secret-of-enough-length-0123")
    monkeypatch.setenv("WEIJIAN_" + setting.upper().replace(".", "__"), "please-change-me-x")
    with pytest.raises(ValidationError, match=rf"{setting.replace('.', '[.]')} is a placeholder"):
        load_settings()


def test_production_requires_a_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIJIAN_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="jwt_secret must be set"):
        load_settings()


def test_development_tolerates_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIJIAN_INFLUX__TOKEN", "changeme")
    assert load_settings().influx.token is not None


def test_mqtt_sample_settings_load(repo_root, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIJIAN_MQTT__PASSWORD", "from-the-environment")
    s = load_settings(repo_root / "collectors" / "mqtt" / "sample.yaml")
    assert s.mqtt.share_group == "collectors"
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "from-the-environment"
    assert s.spool.fsync is FsyncPolicy.ALWAYS

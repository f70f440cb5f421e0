"""Platform settings: one typed tree, read from a YAML file and ``WEIJIAN_*`` environment variables.

Environment variables use ``__`` between levels, e.g. ``WEIJIAN_INFLUX__URL`` or
``WEIJIAN_SPOOL__FSYNC=interval``. Settings are built when a command starts, never at import.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerting.notify.settings import NotifySettings
from gateway.settings import GatewaySettings

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "admin"}


class FsyncPolicy(StrEnum):
    """When a spooled reading counts as durable (and may be acknowledged to its device)."""

    ALWAYS = "always"  # fsync (group commit) before acknowledging: survives power loss
    INTERVAL = "interval"  # write() before acknowledging, fsync every interval: survives a crash
    NEVER = "never"  # leave it to the OS: survives a process crash only


class FullPolicy(StrEnum):
    """What the spool does when it reaches ``max_bytes``."""

    BLOCK = "block"  # refuse new readings (devices are not acknowledged and retry): no loss
    DROP_OLDEST = "drop_oldest"  # delete the oldest unsent segment, count what it held


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InfluxSettings(_Section):
    url: str = "http://127.0.0.1:8086"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(
        default=None, description="InfluxDB 2.x/3.x API token (sent as 'Authorization: Token')."
    )
    database: str = "weijian"
    tenant_databases: bool = Field(
        default=True, description="Also write each reading to its tenant's own database."
    )
    tenant_database_prefix: str = "weijian_t_"
    manage_schema: bool = Field(
        default=True, description="Create databases, retention policies and rollups on start."
    )
    raw_retention: str = "180d"
    rollup_5m_retention: str = "730d"
    rollup_1h_retention: str = "1825d"
    timeout_s: float = 10.0


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = "weijian-collector"
    password: SecretStr | None = None
    client_id: str = "weijian-collector"
    topic_prefix: str = "weijian/v1"
    share_group: str | None = Field(
        default=None, description="MQTT shared-subscription group, to spread load over instances."
    )
    ingest: bool | None = Field(
        default=None,
        description="Run the MQTT collector (store telemetry). Unset: yes, except in worker 0 of "
        "`serve --workers N` when it runs the alert engine's tap: it judges every reading and "
        "leaves storing them to the other workers, so alerts never wait behind an ingest "
        "backlog. true/false: always/never (under `serve --workers` this is worker 0's "
        "setting; the other workers always ingest). A process that stops ingesting ends its "
        "old shared-subscription session after storing what the broker kept for it.",
    )
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    session_expiry_s: int = 7 * 24 * 3600
    max_payload_bytes: int = 256 * 1024
    keepalive_s: int = 30


class SpoolSettings(_Section):
    directory: Path | None = Field(default=None, description="Default: <data_dir>/spool.")
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval_s: float = Field(default=0.2, gt=0, description="Period of 'interval' fsyncs.")
    max_bytes: int = 1 << 30
    segment_bytes: int = 16 << 20
    full_policy: FullPolicy = FullPolicy.BLOCK


class WriterSettings(_Section):
    batch_lines: int = Field(default=5000, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


class ValidationSettings(_Section):
    max_past_s: float = Field(default=30 * 86400, description="Oldest timestamp accepted.")
    max_future_s: float = Field(default=300, description="Tolerated device clock lead.")


class MetricsSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9464, description="0 disables the Prometheus endpoint.")
    log_interval_s: float = 60.0


class Hj212Settings(_Section):
    """The HJ 212-2017 station server (stations connect to it over TCP)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9212, ge=0, le=65535, description="0: any free port.")
    max_connections: int = Field(default=5000, gt=0)
    max_connections_per_peer: int = Field(
        default=64,
        gt=0,
        description="Connections open at once from one peer (IPv4 address or IPv6 /64); more are "
        "closed at accept, so one address cannot hold every slot. A data logger relaying many "
        "stations, or stations behind one NAT, may need dozens (docs/hj212.md).",
    )
    idle_timeout_s: float = Field(default=600.0, gt=0)
    # Wrong-password limits (collectors/hj212/guard.py; docs/hj212.md, "Password guessing").
    auth_max_failures: int = Field(
        default=5,
        ge=1,
        description="Distinct wrong PWs from one peer (IPv4 address or IPv6 /64) within "
        "auth_window_s before it is blocked: its packets are refused unchecked, its connections "
        "closed.",
    )
    auth_window_s: float = Field(
        default=600.0, gt=0, description="The window wrong PWs are counted in (per peer, per MN)."
    )
    auth_block_s: float = Field(
        default=60.0, gt=0, description="The first block; each further block doubles it ..."
    )
    auth_block_max_s: float = Field(
        default=3600.0,
        gt=0,
        description="... up to this. The doubling is forgotten this long after a block ends.",
    )
    auth_station_max_failures: int = Field(
        default=10,
        ge=1,
        description="Distinct wrong PWs for one MN within auth_window_s, from any peers, before "
        "the MN is locked against peers that have not authenticated it (its own peer keeps "
        "working).",
    )
    auth_trust_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="A peer that authenticated an MN stays exempt from blocks for that MN this "
        "long after its last correct PW (one wrong PW for it ends that).",
    )
    auth_max_tracked: int = Field(
        default=10_000,
        ge=1,
        description="Peers, MNs and trusted peers remembered, each (least recent dropped first).",
    )

    @model_validator(mode="after")
    def _block_max_not_below_block(self) -> Hj212Settings:
        if self.auth_block_max_s < self.auth_block_s:
            raise ValueError("hj212.auth_block_max_s must be at least hj212.auth_block_s")
        return self


class CoapSettings(_Section):
    """The CoAP telemetry resource (constrained devices POST to coap://host:port/t)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=5683, ge=0, le=65535, description="0: any free port.")
    max_payload_bytes: int = Field(default=128 * 1024, gt=0)


class ModbusPollSettings(_Section):
    """The Modbus poller (the registry's modbus_* devices)."""

    enabled: bool = True
    refresh_s: float = Field(default=5.0, gt=0, description="How often the device list is re-read.")
    max_concurrency: int = Field(default=512, gt=0)


class AlertingSettings(_Section):
    """The alert engine (alerting/engine.py; docs/alerting.md, "The engine")."""

    enabled: bool = Field(
        default=True,
        description="Run the detector in this process (registry mode; one process only, see "
        "docs/alerting.md on workers).",
    )
    tap: bool | None = Field(
        default=None,
        description="With a shared MQTT subscription (mqtt.share_group): true runs the detector "
        "in this process, fed all MQTT telemetry by a tap (its own unshared subscription); set "
        "it in exactly one process. None: `serve --workers N` picks worker 0, a process started "
        "with mqtt.share_group alone runs no detector. false: never here. No effect without a "
        "share group (the one process runs the detector).",
    )
    nodata_multiple: float = Field(
        default=3.0, ge=1, description="A device is silent after this many expected intervals."
    )
    nodata_min_silence_s: float = Field(
        default=60.0, ge=0, description="... and never before this long, whatever its interval."
    )
    tick_interval_s: float = Field(
        default=5.0, gt=0, description="How often silence, clock skew and records are checked."
    )
    startup_grace_s: float = Field(
        default=60.0, ge=0, description="No-data checks wait this long after a start."
    )
    clock_skew_s: float = Field(
        default=300.0, gt=0, description="A live device whose timestamps lag more is skewed."
    )
    clock_skew_for_s: float = Field(default=300.0, ge=0, description="... for this long.")
    warmup: bool = Field(
        default=True, description="Warm the anomaly detectors up from InfluxDB on start."
    )
    warmup_window_s: float = Field(
        default=6 * 3600.0, gt=0, description="Raw history read back (drift: hourly rollups)."
    )
    warmup_max_points: int = Field(
        default=500, ge=1, le=100_000, description="Readings read back per device, at most."
    )
    warmup_timeout_s: float = Field(default=10.0, gt=0, description="Start without it after.")
    queue_size: int = Field(
        default=100_000, ge=100, description="Transitions waiting to be persisted, at most."
    )
    context_refresh_s: float = Field(
        default=30.0,
        gt=0,
        description="Re-read sites, overrides and officers (changes that do not move the "
        "registry revision).",
    )


class Settings(BaseSettings):
    """Everything a Weijian process needs; the defaults are the embedded single-machine setup."""

    model_config = SettingsConfigDict(
        env_prefix="WEIJIAN_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    environment: str = Field(
        default="development", description="'production' refuses weak secrets."
    )
    data_dir: Path = Path(".weijian")
    devices_file: Path | None = Field(
        default=None, description="Device directory (YAML). Default: <data_dir>/devices.yaml."
    )
    influx: InfluxSettings = InfluxSettings()
    mqtt: MqttSettings = MqttSettings()
    spool: SpoolSettings = SpoolSettings()
    writer: WriterSettings = WriterSettings()
    validation: ValidationSettings = ValidationSettings()
    metrics: MetricsSettings = MetricsSettings()
    gateway: GatewaySettings = GatewaySettings()
    hj212: Hj212Settings = Hj212Settings()
    coap: CoapSettings = CoapSettings()
    modbus: ModbusPollSettings = ModbusPollSettings()
    alerting: AlertingSettings = AlertingSettings()
    notify: NotifySettings = NotifySettings()

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        for name, secret in (
            ("influx.password", self.influx.password),
            ("influx.token", self.influx.token),
            ("mqtt.password", self.mqtt.password),
            ("gateway.jwt_secret", self.gateway.jwt_secret),
        ):
            if secret is None:
                continue
            value = secret.get_secret_value().lower()
            if value in PLACEHOLDER_SECRETS or value.startswith("please-change-me"):
                raise ValueError(f"{name} is a placeholder; set a real secret in production")
        if self.gateway.enabled and self.gateway.jwt_secret is None:
            raise ValueError(
                "gateway.jwt_secret must be set in production (WEIJIAN_GATEWAY__JWT_SECRET)"
            )
        return self

    @property
    def spool_dir(self) -> Path:
        return self.spool.directory or self.data_dir / "spool"

    @property
    def registry_url(self) -> str:
        return self.gateway.registry_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def devices_path(self) -> Path:
        return self.devices_file or self.data_dir / "devices.yaml"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments (e.g. from a YAML file) win over the environment.
        return (init_settings, env_settings, file_secret_settings)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional YAML file, the environment and explicit overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read settings: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: settings must be a mapping, got {type(loaded).__name__}")
        data.update(loaded)
    data.update(overrides)
    return Settings(**data)

"""Gateway settings; embedded in the platform's settings as the ``gateway`` section."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    registry_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry. Default: SQLite at <data_dir>/registry.db.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="Signs staff tokens. Default (development only): generated once per data dir.",
    )
    jwt_ttl_s: int = Field(default=8 * 3600, gt=0)
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="Largest request body.")
    directory_poll_s: float = Field(default=1.0, gt=0)
    # What onboarding tells a device to connect to (the broker as devices see it).
    public_mqtt_host: str = "127.0.0.1"
    public_mqtt_port: int | None = None
    public_http_url: str | None = None
    public_coap_port: int = Field(default=5683, ge=1, le=65535)
    public_hj212_port: int = Field(default=9212, ge=1, le=65535)
    # Production: the broker's auth files in the volume shared with Mosquitto (docker-compose.yml).
    broker_passwd_file: Path | None = None
    broker_acl_file: Path | None = None
    broker_pidfile: Path | None = Field(
        default=None, description="Signal the broker directly; else its own watcher reloads."
    )

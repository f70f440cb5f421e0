"""Secrets the platform generates for itself in development (never in production)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from weijian.config import Settings


def jwt_secret(settings: Settings) -> str:
    """The configured JWT signing key, or one generated once per data directory (mode 0600)."""
    configured = settings.gateway.jwt_secret
    if configured is not None:
        return configured.get_secret_value()
    if settings.environment == "production":
        raise ValueError("gateway.jwt_secret must be set in production")
    path = Path(settings.data_dir) / "gateway.secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value

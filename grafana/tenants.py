"""Who a tenant is to Grafana and InfluxDB: names, databases, credentials (no I/O).

A tenant (a water company, a hospital) gets its own Grafana organisation whose data source can
read only the tenant's InfluxDB database (``weijian_t_<tenant>``, docs/schema.md). Isolation is
InfluxDB's authorisation, not a dashboard filter: even an organisation admin who writes their own
queries reaches nothing else.

The tenant's InfluxDB password is derived (HMAC-SHA256 of the tenant id under one sync secret)
rather than stored: ``weijian grafana sync`` can recompute it on every run, so a second run
changes nothing, and rotating the secret rotates every tenant's password at the next run.
Grafana never returns a data source's password, so the data source carries a fingerprint of the
credentials (``jsonData.weijianCredentials``: a truncated SHA-256, useless to anyone who sees it)
to tell whether they are current.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from protocols.reading import IDENTIFIER

DEFAULT_TENANT_DATABASE_PREFIX = "weijian_t_"  # weijian/config.py influx.tenant_database_prefix
INFLUX_USER_PREFIX = "grafana_t_"
VIEWER = "Viewer"
_ORG_ID = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\]\s*$")
_LOGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,189}$")


@dataclass(frozen=True, slots=True)
class Viewer:
    """A tenant's person who may look (Grafana role Viewer), nothing more."""

    login: str
    email: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if not _LOGIN.match(self.login):
            raise ValueError(f"viewer login {self.login!r} is not a valid Grafana login")


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """What the registry says about a tenant, as sync needs it.

    ``kinds``: the device kinds it has (its organisation gets those kinds' dashboards); ``None``
    for all of them.
    """

    id: str
    name: str
    kinds: frozenset[str] | None = None
    viewers: tuple[Viewer, ...] = ()

    def __post_init__(self) -> None:
        if not IDENTIFIER.fullmatch(self.id):
            raise ValueError(f"tenant id {self.id!r} is not an identifier (A-Z a-z 0-9 _ . -)")
        if not self.name.strip():
            raise ValueError(f"tenant {self.id!r} has no name")


def tenant_database(tenant: str, prefix: str = DEFAULT_TENANT_DATABASE_PREFIX) -> str:
    return prefix + tenant


def influx_user(tenant: str) -> str:
    """The tenant's read-only InfluxDB user (1.x) / v1 authorisation name (2.x)."""
    return INFLUX_USER_PREFIX + tenant


def org_name(spec: TenantSpec) -> str:
    """``<tenant name> [<tenant id>]``: readable, unique, and found again after a rename."""
    return f"{spec.name.strip()} [{spec.id}]"


def org_tenant(name: str) -> str | None:
    """The tenant id an organisation name was made for, or None (not ours)."""
    match = _ORG_ID.search(name)
    return match.group(1) if match else None


def derive_password(secret: str, tenant: str) -> str:
    """The tenant's InfluxDB password: 32 URL-safe characters, a function of secret and id."""
    if len(secret) < 16:
        raise ValueError("the sync secret must be at least 16 characters")
    digest = hmac.new(secret.encode(), f"weijian-grafana-influx:{tenant}".encode(), "sha256")
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")[:32]


def credentials_fingerprint(user: str, password: str) -> str:
    digest = hashlib.sha256(f"weijian-credentials:{user}:{password}".encode()).hexdigest()
    return "sha256:" + digest[:16]


def tenant_specs(
    tenants: Iterable[Any],
    devices: Iterable[Any] = (),
    users: Iterable[Any] = (),
) -> list[TenantSpec]:
    """Specs from registry rows (``Tenant``; ``Device`` with ``site.tenant_id``; ``User`` with
    ``role == "tenant_user"``) or from mappings with the same keys, sorted by tenant id."""

    def get(row: Any, key: str) -> Any:
        return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)

    kinds: dict[str, set[str]] = {}
    for device in devices:
        site = get(device, "site")
        tenant = get(device, "tenant_id") or get(device, "tenant") or get(site, "tenant_id")
        if isinstance(tenant, str):
            kinds.setdefault(tenant, set()).add(get(device, "kind"))
    viewers: dict[str, list[Viewer]] = {}
    for user in users:
        tenant = get(user, "tenant_id")
        if get(user, "role") == "tenant_user" and tenant and get(user, "active") is not False:
            viewers.setdefault(tenant, []).append(
                Viewer(
                    get(user, "username") or get(user, "login"),
                    get(user, "email") or "",
                    get(user, "display_name") or get(user, "name") or "",
                )
            )
    out = []
    for tenant in tenants:
        tid = get(tenant, "id")
        out.append(
            TenantSpec(
                id=tid,
                name=get(tenant, "name") or tid,
                kinds=frozenset(kinds[tid]) if tid in kinds else frozenset(),
                viewers=tuple(sorted(viewers.get(tid, []), key=lambda v: v.login)),
            )
        )
    return sorted(out, key=lambda s: s.id)

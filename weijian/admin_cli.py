"""``weijian registry|user|device|simulate``: the engineer's and administrator's commands.

They talk to the registry database and InfluxDB directly (no gateway needed), using the same
settings as the platform. Next to a running ``weijian run``, they find the embedded stack's
servers through ``<data_dir>/stack.json`` unless the environment names other ones.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from weijian.config import Settings

ROLES = ("admin", "city_admin", "county_admin", "tenant_user")


def with_local_stack(settings: Settings) -> Settings:
    """Point at the embedded stack of ``weijian run`` when the environment names no InfluxDB."""
    stack = Path(settings.data_dir) / "stack.json"
    if "WEIJIAN_INFLUX__URL" in os.environ or not stack.exists():
        return settings
    try:
        info = json.loads(stack.read_text())
        user, password = (
            (Path(settings.data_dir) / "influxdb" / "admin.credentials")
            .read_text()
            .strip()
            .split(":", 1)
        )
    except (OSError, ValueError):
        return settings
    data = settings.model_dump(mode="python")
    data["influx"].update(url=info["influx_url"], username=user, password=password)
    for key in ("password", "token"):
        secret = getattr(settings.mqtt, key, None)
        if secret is not None:
            data["mqtt"][key] = secret.get_secret_value()
    return Settings.model_validate(data)


def _open_registry(settings: Settings, *, migrate: bool = False):  # type: ignore[no-untyped-def]
    from gateway.registry.database import Registry

    return Registry.open(settings.registry_url, migrate=migrate)


def cmd_registry(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.registry.database import Registry

    if args.action == "migrate":
        registry = Registry.open(settings.registry_url, migrate=True)
        print(f"registry at schema {registry.schema_revision()} ({settings.registry_url})")
        registry.close()
        return 0
    registry = Registry(settings.registry_url)
    try:
        print(f"schema: {registry.schema_revision() or 'empty (run: weijian registry migrate)'}")
        registry.check_schema()
        print(f"device revision: {registry.revision()}")
    finally:
        registry.close()
    return 0


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.security import create_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        generated = False
    elif sys.stdin.isatty() and not args.generate:
        password = getpass.getpass(f"password for {args.username}: ")
        generated = False
    else:
        password = secrets.token_urlsafe(16)
        generated = True
    registry = _open_registry(settings, migrate=True)
    try:
        with registry.session() as session, session.begin():
            create_user(
                session,
                args.username,
                password,
                args.role,
                region_codes=tuple(args.region or ()),
                tenant_id=args.tenant,
                actor="cli:" + getpass.getuser(),
            )
    finally:
        registry.close()
    print(f"user {args.username!r} ({args.role}) created")
    if generated:
        print(f"password (shown once): {password}")
    return 0


async def _check(settings: Settings, device: str, probe: bool) -> dict[str, Any]:
    from gateway.onboarding_check import check_device
    from protocols.influx.client import InfluxClient

    registry = _open_registry(settings)
    try:
        async with InfluxClient.from_settings(settings.influx) as influx:
            report = await check_device(registry, influx, settings.influx.database, device)
        if probe and report.registered and (report.protocol or "").startswith("modbus"):
            report.probe = await _probe(registry, device)
        return report.to_dict()
    finally:
        registry.close()


async def _probe(registry: Any, device: str) -> dict[str, Any]:
    from gateway.modbus_targets import probe_device

    return await probe_device(registry, device)


def cmd_device_check(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(_check(with_local_stack(settings), args.device, args.probe))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(format_check(report))
    return 0 if report["verdict"] == "reporting" else 1


def format_check(report: dict[str, Any]) -> str:
    lines = [f"device {report['device']}: {report['verdict'].upper().replace('_', ' ')}"]
    if report["registered"]:
        lines.append(
            f"  registered: {report['kind']} ({report['profile']}) over {report['protocol']} at "
            f"{report['tenant']}/{report['site']} (region {report['region']}), "
            f"status {report['status']}, expected every {report['interval_s']:g} s"
        )
        lines.append(f"  credentials: {', '.join(report['credentials']) or 'none'}")
    if report.get("influx_error"):
        lines.append(f"  InfluxDB: {report['influx_error']}")
    if report.get("last_seen"):
        lines.append(f"  last reading: {report['last_seen']} ({report['age_s']:.0f} s ago)")
        for name, value in sorted(report["last_fields"].items()):
            lines.append(f"    {name:<28} {value}")
    elif report["registered"]:
        lines.append("  last reading: none stored")
    if report["rejections"]:
        lines.append("  recent rejections (newest first):")
        for r in report["rejections"]:
            more = f" (+{r['more_like_it']} more)" if r["more_like_it"] else ""
            lines.append(f"    {r['time']}  {r['protocol']:<6} {r['reason']}: {r['detail']}{more}")
    for advice in report["advice"]:
        lines.append(f"  → {advice}")
    if report.get("probe"):
        lines.append(report["probe"].get("text", ""))
    return "\n".join(lines)


def cmd_grafana_sync(args: argparse.Namespace, settings: Settings) -> int:
    """Tenant organisations, data sources, dashboards and viewers, from the registry."""
    from grafana_client import GrafanaApi
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from gateway.registry.models import Device, Tenant, User
    from grafana.influx_admin import InfluxV1
    from grafana.sync import sync
    from grafana.tenants import tenant_specs

    settings = with_local_stack(settings)
    secret = os.environ.get("WEIJIAN_GRAFANA_SYNC_SECRET", "")
    password = os.environ.get("GRAFANA_ADMIN_PASSWORD", "")
    if len(secret) < 16:
        raise ValueError(
            "set WEIJIAN_GRAFANA_SYNC_SECRET (16+ characters; tenant passwords derive from it)"
        )
    if not password and not args.dry_run:
        raise ValueError("set GRAFANA_ADMIN_PASSWORD (a Grafana server admin's password)")
    i = settings.influx
    # 1.x: sync creates the tenants' databases, read-only users and grants, as an InfluxDB
    # admin. 2.x has no InfluxQL user management: sync only pings and tries the tenants' own
    # logins (and prints the `influx` commands), so no admin credentials are needed there.
    influx = InfluxV1(
        i.url, i.username or "", i.password.get_secret_value() if i.password is not None else ""
    )
    if (i.username is None or i.password is None) and influx.version_kind() == "1.x":
        raise ValueError(
            "InfluxDB 1.x: admin credentials are needed (WEIJIAN_INFLUX__USERNAME/PASSWORD)"
        )
    registry = _open_registry(settings)
    try:
        with registry.session() as session:
            tenants = session.execute(select(Tenant)).scalars().all()
            devices = (
                session.execute(select(Device).options(selectinload(Device.site))).scalars().all()
            )
            users = session.execute(select(User)).scalars().all()
            specs = tenant_specs(tenants, devices, users)
    finally:
        registry.close()
    client = GrafanaApi.from_url(args.grafana_url, credential=(args.grafana_user, password))
    report = sync(
        client,
        influx,
        specs,
        secret=secret,
        influx_url=args.influx_url or i.url,
        database_prefix=i.tenant_database_prefix,
        dry_run=args.dry_run,
    )
    print(report.plan.describe())
    for user, initial in report.initial_passwords.items():
        print(f"new viewer {user}: initial password (shown once) {initial}")
    return 0


def add_parsers(sub: Any) -> None:
    registry = sub.add_parser("registry", help="the device registry's database")
    registry.add_argument("action", choices=["migrate", "status"])
    registry.add_argument("--data-dir")
    registry.set_defaults(handler=cmd_registry)

    user = sub.add_parser("user", help="staff accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser("create", help="create a staff user (e.g. the first admin)")
    create.add_argument("username")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--region", action="append", help="region code (repeatable)")
    create.add_argument("--tenant", help="the tenant of a tenant_user")
    create.add_argument("--password-stdin", action="store_true", help="read the password")
    create.add_argument("--generate", action="store_true", help="generate and print a password")
    create.add_argument("--data-dir")
    create.set_defaults(handler=cmd_user_create)

    device = sub.add_parser("device", help="devices")
    device_sub = device.add_subparsers(dest="device_command", required=True)
    check = device_sub.add_parser(
        "check", help="is the device registered, seen, recent — and if not, why"
    )
    check.add_argument("device")
    check.add_argument("--probe", action="store_true", help="Modbus: read its registers once")
    check.add_argument("--json", action="store_true")
    check.add_argument("--data-dir")
    check.set_defaults(handler=cmd_device_check)

    grafana = sub.add_parser("grafana", help="Grafana tenant organisations (docs/grafana.md)")
    grafana_sub = grafana.add_subparsers(dest="grafana_command", required=True)
    gsync = grafana_sub.add_parser(
        "sync", help="create/update each tenant's organisation, data source, dashboards, viewers"
    )
    gsync.add_argument("--grafana-url", default="http://127.0.0.1:3000")
    gsync.add_argument("--grafana-user", default="admin", help="password: GRAFANA_ADMIN_PASSWORD")
    gsync.add_argument("--influx-url", help="InfluxDB as Grafana reaches it (default: ours)")
    gsync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    gsync.add_argument("--data-dir")
    gsync.set_defaults(handler=cmd_grafana_sync)

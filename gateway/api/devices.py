"""Devices: registration (onboarding), changes, credentials, removal.

Every device change stamps ``device.revision`` with the next registry revision in the same
transaction (deletion leaves a :class:`DeviceTombstone`; issuing or revoking a credential bumps
the revision inside ``credentials``), so the collectors' directory and the ingest key cache,
which poll that one number, pick the change up; after commit the route calls
``ctx.devices_changed()`` so this process (directory, broker password/ACL files) follows at once.

Onboarding (``POST /devices``) issues the credentials the device's protocol needs and answers
them once, with a ``connect`` block saying what to configure on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, contains_eager

from gateway import audit
from gateway.api import CtxDep, PageDep, ProfilesDep, SessionDep, commit, paginate
from gateway.context import GatewayContext
from gateway.errors import ApiError, conflict, error_responses, invalid, problem
from gateway.registry import credentials
from gateway.registry.credentials import PROTOCOL_CREDENTIALS, IssuedSecret
from gateway.registry.database import bump_revision
from gateway.registry.models import Device, DeviceCredential, DeviceTombstone, Site
from gateway.schemas import (
    IDENTIFIER_PATTERN,
    PROFILE_PATTERN,
    REGION_PREFIX_PATTERN,
    ConnectInfo,
    CredentialInfo,
    CredentialKind,
    CredentialRotated,
    DeviceCreate,
    DeviceOnboarded,
    DeviceOut,
    DeviceStatus,
    DeviceUpdate,
    IssuedCredential,
    Kind,
    Page,
    Protocol,
    RevokeResult,
    check_device,
)
from gateway.security import (
    CurrentPrincipal,
    Principal,
    get_device,
    get_site,
    require_device_write,
    require_site_write,
    require_writer,
    scope_devices,
)
from protocols.mqtt_telemetry import telemetry_topic

router = APIRouter(prefix="/devices", tags=["devices"], responses=error_responses(401, 422))
DeviceId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]
DEFAULT_MQTT_PORT = 1883
DEFAULT_COAP_PORT = 5683


# ---- the operations (shared with the bulk import) ----------------------------------------------


def device_out(device: Device) -> DeviceOut:
    site = device.site
    return DeviceOut.model_validate(
        {
            **audit.snapshot(device),
            "tenant_id": site.tenant_id,
            "region_code": site.region_code,
            "created_at": device.created_at,
            "updated_at": device.updated_at,
        }
    )


def referenced_site(session: Session, principal: Principal, site_id: str) -> Site:
    """A site named in a request body: 422 if the caller cannot see it, 403 if it cannot write."""
    try:
        site = get_site(session, principal, site_id)
    except ApiError:
        raise invalid([problem("site_id", f"site {site_id!r} does not exist")]) from None
    require_site_write(principal, site)
    return site


def _mn_taken(session: Session, mn: str, device_id: str) -> bool:
    """HJ 212 stations are identified by their MN, so two devices cannot share one."""
    return (
        session.execute(
            select(Device.id).where(
                Device.protocol == "hj212",
                Device.id != device_id,
                Device.connection["mn"].as_string() == mn,
            )
        ).first()
        is not None
    )


def _checked(
    session: Session, device_id: str, values: dict[str, Any], profiles: Any
) -> dict[str, Any]:
    checked, problems = check_device(values, profiles)
    if checked is None:
        raise invalid(problems)
    mn = checked.connection.get("mn")
    if mn is not None and _mn_taken(session, mn, device_id):
        raise conflict(
            f"HJ 212 MN {mn!r} is already registered to another device",
            [problem("connection.mn", "already registered to another device")],
        )
    return {**values, "connection": checked.connection, "interval_s": checked.interval_s}


def create_device(
    session: Session,
    principal: Principal,
    data: DeviceCreate,
    profiles: Any,
    *,
    revision: int | None = None,
) -> Device:
    """Register a device (no credentials yet: see :func:`issue_credentials`)."""
    require_writer(principal)
    site = referenced_site(session, principal, data.site_id)
    if session.get(Device, data.id) is not None:
        raise conflict(f"device {data.id!r} already exists")
    values = _checked(session, data.id, data.model_dump(), profiles)
    stamp = revision if revision is not None else bump_revision(session)
    # No synchronize: tombstones are never loaded as objects, and scanning the identity map on
    # every row would make a 10,000-row import quadratic.
    session.execute(
        delete(DeviceTombstone).where(DeviceTombstone.device_id == data.id),
        execution_options={"synchronize_session": False},
    )
    device = Device(**values, revision=stamp)
    session.add(device)
    device.site = site
    session.flush()
    audit.record(session, principal, "create", "device", device.id, None, audit.snapshot(device))
    return device


def update_device(
    session: Session,
    principal: Principal,
    device: Device,
    changes: dict[str, Any],
    profiles: Any,
    *,
    revision: int | None = None,
) -> Device:
    """Apply ``changes`` (fields of :class:`DeviceUpdate`) to a device the caller may write."""
    require_device_write(principal, device)
    site = device.site
    if "site_id" in changes and changes["site_id"] != device.site_id:
        site = referenced_site(session, principal, changes["site_id"])
    current = {
        key: getattr(device, key)
        for key in ("kind", "profile", "protocol", "connection", "interval_s", "status")
    }
    merged = _checked(session, device.id, {**current, **changes}, profiles)
    merged.pop("site_id", None)
    before = audit.snapshot(device)
    for key, value in merged.items():
        setattr(device, key, value)
    device.site = site
    detail = ""
    if device.protocol != before["protocol"]:
        needed = set(PROTOCOL_CREDENTIALS[device.protocol])
        stale = [k for k in credentials.CREDENTIAL_KINDS if k not in needed]
        revoked = sum(credentials.revoke(session, device.id, kind) for kind in stale)
        if revoked:
            detail = f"protocol changed: {revoked} credential(s) of the old protocol revoked"
    device.revision = revision if revision is not None else bump_revision(session)
    session.flush()
    audit.record(
        session, principal, "update", "device", device.id, before, audit.snapshot(device), detail
    )
    return device


def issue_credentials(
    session: Session, principal: Principal, device: Device, kinds: Sequence[str] | None = None
) -> list[IssuedSecret]:
    """New secrets of ``kinds`` (default: what the device's protocol needs), audited sans secret."""
    kinds = PROTOCOL_CREDENTIALS[device.protocol] if kinds is None else kinds
    issued = [credentials.issue(session, device.id, kind) for kind in kinds]
    if issued:
        audit.record(
            session,
            principal,
            "issue_credentials",
            "device",
            device.id,
            None,
            {"credentials": [{"kind": i.kind, "key_id": i.key_id} for i in issued]},
        )
    return issued


def issued_out(issued: IssuedSecret) -> IssuedCredential:
    return IssuedCredential(
        kind=issued.kind, username=issued.username, secret=issued.secret, key_id=issued.key_id
    )


def connect_info(
    ctx: GatewayContext, device: Device, issued: Sequence[IssuedSecret] = ()
) -> ConnectInfo:
    """What to configure, per protocol; secrets only for credentials issued in this response."""
    settings = ctx.settings
    secret = {i.kind: i.secret for i in issued}
    site = device.site
    protocol = device.protocol
    if protocol == "mqtt":
        return ConnectInfo(
            protocol=protocol,
            host=settings.public_mqtt_host,
            port=settings.public_mqtt_port or DEFAULT_MQTT_PORT,
            topic=telemetry_topic(ctx.mqtt_topic_prefix, site.tenant_id, site.id, device.id),
            username=device.id,
            password=secret.get("mqtt"),
            instructions=(
                "Connect with MQTT 3.1.1 or 5 using this username and password and publish JSON "
                "readings at QoS 1 to the topic (docs/protocols.md); the broker lets this "
                "account publish to its own topic only."
            ),
        )
    if protocol == "http":
        key = secret.get("api_key")
        return ConnectInfo(
            protocol=protocol,
            url=f"{(settings.public_http_url or '').rstrip('/')}/ingest/v1/readings",
            authorization=f"Bearer {key}" if key else None,
            instructions=(
                'POST one JSON reading or {"readings": [...]} to the URL with this '
                "Authorization header; 200 means stored."
            ),
        )
    if protocol == "coap":
        token = secret.get("coap_token")
        host, port = settings.public_mqtt_host, settings.public_coap_port
        return ConnectInfo(
            protocol=protocol,
            host=host,
            port=port,
            url=f"coap://{host}:{port}/t?k={token or '<token>'}",
            token=token,
            instructions=(
                'POST one JSON (Content-Format 50) or CBOR (60) reading, or {"readings": [...]}, '
                "to the URL (the token is its Uri-Query k); 2.04 means stored (docs/coap.md)."
            ),
        )
    if protocol == "hj212":
        return ConnectInfo(
            protocol=protocol,
            host=settings.public_mqtt_host,
            port=settings.public_hj212_port,
            mn=device.connection.get("mn"),
            password=secret.get("hj212"),
            instructions=(
                "Configure the station's MN and PW as given and point its HJ 212-2017 data link "
                "(TCP) at this host and port; real-time data (CN 2011) is stored (docs/hj212.md)."
            ),
        )
    connection = device.connection
    where = connection.get("host") or connection.get("serial_port")
    port = connection.get("port")
    unit = connection.get("unit_id")
    return ConnectInfo(
        protocol=protocol,
        host=connection.get("host"),
        port=port,
        instructions=(
            f"Polled by the collector at {where}{f':{port}' if port else ''}"
            f"{f', unit {unit}' if unit is not None else ''} (unset values: the profile's "
            f"defaults). No credentials: make sure the collector can reach the device, then run "
            f"'weijian device check {device.id}'."
        ),
    )


# ---- routes ------------------------------------------------------------------------------------


@router.get("", response_model=Page[DeviceOut], summary="List devices in your scope")
def list_devices(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageDep,
    tenant: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    site: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    kind: Kind | None = None,
    protocol: Protocol | None = None,
    status: DeviceStatus | None = None,
    profile: Annotated[str | None, Query(pattern=PROFILE_PATTERN)] = None,
    region: Annotated[
        str | None, Query(pattern=REGION_PREFIX_PATTERN, description="Region code prefix")
    ] = None,
) -> Any:
    stmt = scope_devices(
        select(Device).join(Device.site).options(contains_eager(Device.site)), principal
    )
    for column, value in (
        (Site.tenant_id, tenant),
        (Device.site_id, site),
        (Device.kind, kind),
        (Device.protocol, protocol),
        (Device.status, status),
        (Device.profile, profile),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if region is not None:
        stmt = stmt.where(Site.region_code.startswith(region, autoescape=True))
    return paginate(session, stmt, page, device_out, [Device.id])


@router.post(
    "",
    response_model=DeviceOnboarded,
    status_code=201,
    responses=error_responses(403, 409),
    summary="Onboard a device: register it and issue its credentials (shown once)",
)
def post_device(
    body: DeviceCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    profiles: ProfilesDep,
) -> Any:
    device = create_device(session, principal, body, profiles)
    issued = issue_credentials(session, principal, device)
    commit(session)
    ctx.devices_changed()
    return DeviceOnboarded(
        device=device_out(device),
        credentials=[issued_out(i) for i in issued],
        connect=connect_info(ctx, device, issued),
    )


@router.get("/{device_id}", response_model=DeviceOut, responses=error_responses(404))
def read_device(device_id: DeviceId, principal: CurrentPrincipal, session: SessionDep) -> Any:
    return device_out(get_device(session, principal, device_id))


@router.patch(
    "/{device_id}",
    response_model=DeviceOut,
    responses=error_responses(403, 404, 409),
    summary="Change a device (status disabled takes it off the ingest path)",
)
def patch_device(
    device_id: DeviceId,
    body: DeviceUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    profiles: ProfilesDep,
) -> Any:
    device = get_device(session, principal, device_id, write=True)
    update_device(session, principal, device, body.changes(), profiles)
    commit(session)
    ctx.devices_changed()
    return device_out(device)


@router.delete(
    "/{device_id}",
    status_code=204,
    responses=error_responses(403, 404),
    summary="Delete a device and its credentials",
)
def delete_device(
    device_id: DeviceId, principal: CurrentPrincipal, session: SessionDep, ctx: CtxDep
) -> None:
    device = get_device(session, principal, device_id, write=True)
    audit.record(session, principal, "delete", "device", device.id, audit.snapshot(device), None)
    session.merge(DeviceTombstone(device_id=device.id, revision=bump_revision(session)))
    session.delete(device)
    commit(session)
    ctx.devices_changed()


@router.get(
    "/{device_id}/credentials",
    response_model=list[CredentialInfo],
    responses=error_responses(404),
    summary="The device's credentials, active and revoked (never the secrets)",
)
def list_credentials(device_id: DeviceId, principal: CurrentPrincipal, session: SessionDep) -> Any:
    device = get_device(session, principal, device_id)
    rows = session.execute(
        select(DeviceCredential)
        .where(DeviceCredential.device_id == device.id)
        .order_by(DeviceCredential.id)
    ).scalars()
    return [CredentialInfo.model_validate(row) for row in rows]


@router.post(
    "/{device_id}/credentials/{kind}",
    response_model=CredentialRotated,
    responses=error_responses(403, 404),
    summary="Rotate: issue a new secret of this kind (shown once); the old one stops working",
)
def rotate_credential(
    device_id: DeviceId,
    kind: CredentialKind,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
) -> Any:
    device = get_device(session, principal, device_id, write=True)
    needed = PROTOCOL_CREDENTIALS[device.protocol]
    if kind not in needed:
        uses = ", ".join(needed) or "no credentials"
        message = f"a {device.protocol} device uses {uses}, not {kind}"
        raise invalid([problem("kind", message, location="path")])
    (issued,) = issue_credentials(session, principal, device, [kind])
    commit(session)
    ctx.devices_changed()
    return CredentialRotated(
        credential=issued_out(issued), connect=connect_info(ctx, device, [issued])
    )


@router.delete(
    "/{device_id}/credentials",
    response_model=RevokeResult,
    responses=error_responses(403, 404),
    summary="Revoke the device's credentials (all, or one kind); effective without restart",
)
def revoke_credentials(
    device_id: DeviceId,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    kind: CredentialKind | None = None,
) -> Any:
    device = get_device(session, principal, device_id, write=True)
    count = credentials.revoke(session, device.id, kind)
    audit.record(
        session,
        principal,
        "revoke_credentials",
        "device",
        device.id,
        None,
        {"kind": kind or "all", "revoked": count},
    )
    commit(session)
    ctx.devices_changed()
    return RevokeResult(revoked=count)

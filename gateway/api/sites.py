"""Sites: where devices are installed, with the region code that decides who supervises them.

A site's region code is part of every device's identity on the ingest path (it tags each point
and routes alerts), so changing it bumps the revision of all the site's devices in the same
transaction. A site's tenant is immutable: moving a site between operators would silently
re-home its history in InfluxDB.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway import audit
from gateway.api import CtxDep, PageDep, SessionDep, commit, paginate
from gateway.errors import ApiError, conflict, error_responses, invalid, problem
from gateway.registry.database import bump_revision
from gateway.registry.models import Device, Site
from gateway.schemas import (
    IDENTIFIER_PATTERN,
    REGION_PREFIX_PATTERN,
    Page,
    SiteCreate,
    SiteOut,
    SiteUpdate,
    VenueType,
    coordinates_problem,
)
from gateway.security import (
    CurrentPrincipal,
    Principal,
    get_site,
    get_tenant,
    require_region_write,
    require_site_write,
    scope_sites,
)

router = APIRouter(prefix="/sites", tags=["sites"], responses=error_responses(401, 422))
SiteId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]


def create_site(session: Session, principal: Principal, data: SiteCreate) -> Site:
    require_region_write(principal, data.region_code)
    if session.get(Site, data.id) is not None:
        raise conflict(f"site {data.id!r} already exists")
    try:
        get_tenant(session, principal, data.tenant_id)
    except ApiError:
        raise invalid([problem("tenant_id", f"tenant {data.tenant_id!r} does not exist")]) from None
    site = Site(**data.model_dump())
    session.add(site)
    session.flush()
    audit.record(session, principal, "create", "site", site.id, None, audit.snapshot(site))
    return site


def update_site(
    session: Session,
    principal: Principal,
    site: Site,
    changes: dict[str, Any],
    *,
    revision: int | None = None,
) -> bool:
    """Apply ``changes`` to a site the caller may write; True if its devices were re-versioned.

    ``revision``: the device revision to stamp (default: a fresh one from the counter).
    """
    require_site_write(principal, site)
    if "tenant_id" in changes and changes.pop("tenant_id") != site.tenant_id:
        raise invalid(
            [problem("tenant_id", "a site's tenant cannot change; create a new site instead")]
        )
    new_region = changes.get("region_code", site.region_code)
    if new_region != site.region_code:
        require_region_write(principal, new_region)
    latitude = changes.get("latitude", site.latitude)
    longitude = changes.get("longitude", site.longitude)
    if message := coordinates_problem(latitude, longitude):
        raise invalid([problem("latitude", message)])
    before = audit.snapshot(site)
    for key, value in changes.items():
        setattr(site, key, value)
    moved = new_region != before["region_code"]
    if moved:
        has_devices = session.execute(
            select(func.count()).select_from(Device).where(Device.site_id == site.id)
        ).scalar_one()
        if has_devices:
            stamp = revision if revision is not None else bump_revision(session)
            session.execute(update(Device).where(Device.site_id == site.id).values(revision=stamp))
        moved = bool(has_devices)
    session.flush()
    audit.record(session, principal, "update", "site", site.id, before, audit.snapshot(site))
    return moved


@router.get("", response_model=Page[SiteOut], summary="List sites in your scope")
def list_sites(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageDep,
    tenant: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    region: Annotated[
        str | None, Query(pattern=REGION_PREFIX_PATTERN, description="Region code prefix")
    ] = None,
    venue_type: VenueType | None = None,
) -> Any:
    stmt = scope_sites(select(Site), principal)
    if tenant is not None:
        stmt = stmt.where(Site.tenant_id == tenant)
    if region is not None:
        stmt = stmt.where(Site.region_code.startswith(region, autoescape=True))
    if venue_type is not None:
        stmt = stmt.where(Site.venue_type == venue_type)
    return paginate(session, stmt, page, SiteOut.model_validate, [Site.id])


@router.post(
    "",
    response_model=SiteOut,
    status_code=201,
    responses=error_responses(403, 409),
    summary="Create a site (its region must be in your jurisdiction)",
)
def post_site(body: SiteCreate, principal: CurrentPrincipal, session: SessionDep) -> Any:
    site = create_site(session, principal, body)
    commit(session)
    return SiteOut.model_validate(site)


@router.get("/{site_id}", response_model=SiteOut, responses=error_responses(404))
def read_site(site_id: SiteId, principal: CurrentPrincipal, session: SessionDep) -> Any:
    return SiteOut.model_validate(get_site(session, principal, site_id))


@router.patch(
    "/{site_id}",
    response_model=SiteOut,
    responses=error_responses(403, 404),
    summary="Change a site (tenant_id is immutable)",
)
def patch_site(
    site_id: SiteId,
    body: SiteUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
) -> Any:
    site = get_site(session, principal, site_id, write=True)
    moved = update_site(session, principal, site, body.changes())
    commit(session)
    if moved:
        ctx.devices_changed()
    return SiteOut.model_validate(site)


@router.delete(
    "/{site_id}",
    status_code=204,
    responses=error_responses(403, 404, 409),
    summary="Delete a site without devices",
)
def delete_site(site_id: SiteId, principal: CurrentPrincipal, session: SessionDep) -> None:
    site = get_site(session, principal, site_id, write=True)
    devices = session.execute(
        select(func.count()).select_from(Device).where(Device.site_id == site.id)
    ).scalar_one()
    if devices:
        raise conflict(f"site {site.id!r} still has {devices} device(s); delete them first")
    audit.record(session, principal, "delete", "site", site.id, audit.snapshot(site), None)
    session.delete(site)
    commit(session)

"""Jurisdictions: a region code's supervision district and the officers alerts go to.

Admins maintain them; city and county admins read the ones in their scope (to see who their
alerts reach); tenant users have no access.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from gateway import audit
from gateway.api import PageDep, SessionDep, commit, paginate
from gateway.errors import conflict, error_responses
from gateway.registry.models import Jurisdiction
from gateway.schemas import (
    REGION_PATTERN,
    REGION_PREFIX_PATTERN,
    JurisdictionCreate,
    JurisdictionOut,
    JurisdictionUpdate,
    Page,
)
from gateway.security import AdminPrincipal, StaffPrincipal, get_jurisdiction, scope_jurisdictions

router = APIRouter(
    prefix="/jurisdictions", tags=["jurisdictions"], responses=error_responses(401, 403, 422)
)
RegionPath = Annotated[str, Path(pattern=REGION_PATTERN)]


@router.get("", response_model=Page[JurisdictionOut], summary="List jurisdictions in your scope")
def list_jurisdictions(
    principal: StaffPrincipal,
    session: SessionDep,
    page: PageDep,
    region: Annotated[
        str | None, Query(pattern=REGION_PREFIX_PATTERN, description="Region code prefix")
    ] = None,
) -> Any:
    stmt = scope_jurisdictions(select(Jurisdiction), principal)
    if region is not None:
        stmt = stmt.where(Jurisdiction.region_code.startswith(region, autoescape=True))
    return paginate(session, stmt, page, JurisdictionOut.model_validate, [Jurisdiction.region_code])


@router.post(
    "",
    response_model=JurisdictionOut,
    status_code=201,
    responses=error_responses(409),
    summary="Create a jurisdiction (admin)",
)
def post_jurisdiction(
    body: JurisdictionCreate, principal: AdminPrincipal, session: SessionDep
) -> Any:
    if session.get(Jurisdiction, body.region_code) is not None:
        raise conflict(f"jurisdiction {body.region_code} already exists")
    row = Jurisdiction(**body.model_dump())
    session.add(row)
    session.flush()
    audit.record(
        session, principal, "create", "jurisdiction", row.region_code, None, audit.snapshot(row)
    )
    commit(session)
    return JurisdictionOut.model_validate(row)


@router.get("/{region_code}", response_model=JurisdictionOut, responses=error_responses(404))
def read_jurisdiction(
    region_code: RegionPath, principal: StaffPrincipal, session: SessionDep
) -> Any:
    return JurisdictionOut.model_validate(get_jurisdiction(session, principal, region_code))


@router.patch(
    "/{region_code}",
    response_model=JurisdictionOut,
    responses=error_responses(404),
    summary="Change a jurisdiction (admin)",
)
def patch_jurisdiction(
    region_code: RegionPath,
    body: JurisdictionUpdate,
    principal: AdminPrincipal,
    session: SessionDep,
) -> Any:
    row = get_jurisdiction(session, principal, region_code)
    before = audit.snapshot(row)
    for key, value in body.changes().items():
        setattr(row, key, value)
    session.flush()
    audit.record(
        session, principal, "update", "jurisdiction", row.region_code, before, audit.snapshot(row)
    )
    commit(session)
    return JurisdictionOut.model_validate(row)


@router.delete(
    "/{region_code}",
    status_code=204,
    responses=error_responses(404),
    summary="Delete a jurisdiction (admin)",
)
def delete_jurisdiction(
    region_code: RegionPath, principal: AdminPrincipal, session: SessionDep
) -> None:
    row = get_jurisdiction(session, principal, region_code)
    audit.record(
        session, principal, "delete", "jurisdiction", row.region_code, audit.snapshot(row), None
    )
    session.delete(row)
    commit(session)

"""Tenants: the operators (water company, hospital, hotel group) that own sites.

Scope rules are in :mod:`gateway.security`. The ``create_/update_`` functions hold the checks
and the audit entry and leave committing to the caller, so the bulk import applies rows through
exactly the same code.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.api import PageDep, SessionDep, commit, paginate
from gateway.errors import conflict, error_responses
from gateway.registry.models import Site, Tenant, User
from gateway.schemas import IDENTIFIER_PATTERN, Page, TenantCreate, TenantOut, TenantUpdate
from gateway.security import (
    CurrentPrincipal,
    Principal,
    get_tenant,
    require_writer,
    scope_tenants,
)

router = APIRouter(prefix="/tenants", tags=["tenants"], responses=error_responses(401, 422))
TenantId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]


def create_tenant(session: Session, principal: Principal, data: TenantCreate) -> Tenant:
    require_writer(principal)
    if session.get(Tenant, data.id) is not None:
        raise conflict(f"tenant {data.id!r} already exists")
    tenant = Tenant(**data.model_dump())
    session.add(tenant)
    session.flush()
    audit.record(session, principal, "create", "tenant", tenant.id, None, audit.snapshot(tenant))
    return tenant


def update_tenant(
    session: Session, principal: Principal, tenant: Tenant, changes: dict[str, Any]
) -> Tenant:
    """Apply ``changes`` (fields of :class:`TenantUpdate`) to a tenant the caller may write."""
    before = audit.snapshot(tenant)
    for key, value in changes.items():
        setattr(tenant, key, value)
    session.flush()
    audit.record(session, principal, "update", "tenant", tenant.id, before, audit.snapshot(tenant))
    return tenant


@router.get("", response_model=Page[TenantOut], summary="List tenants")
def list_tenants(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageDep,
    category: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = None,
) -> Any:
    stmt = scope_tenants(select(Tenant), principal)
    if category is not None:
        stmt = stmt.where(Tenant.category == category)
    return paginate(session, stmt, page, TenantOut.model_validate, [Tenant.id])


@router.post(
    "",
    response_model=TenantOut,
    status_code=201,
    responses=error_responses(403, 409),
    summary="Create a tenant",
)
def post_tenant(body: TenantCreate, principal: CurrentPrincipal, session: SessionDep) -> Any:
    tenant = create_tenant(session, principal, body)
    commit(session)
    return TenantOut.model_validate(tenant)


@router.get("/{tenant_id}", response_model=TenantOut, responses=error_responses(404))
def read_tenant(tenant_id: TenantId, principal: CurrentPrincipal, session: SessionDep) -> Any:
    return TenantOut.model_validate(get_tenant(session, principal, tenant_id))


@router.patch("/{tenant_id}", response_model=TenantOut, responses=error_responses(403, 404))
def patch_tenant(
    tenant_id: TenantId, body: TenantUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Any:
    tenant = get_tenant(session, principal, tenant_id, write=True)
    update_tenant(session, principal, tenant, body.changes())
    commit(session)
    return TenantOut.model_validate(tenant)


@router.delete(
    "/{tenant_id}",
    status_code=204,
    responses=error_responses(403, 404, 409),
    summary="Delete a tenant without sites or users",
)
def delete_tenant(tenant_id: TenantId, principal: CurrentPrincipal, session: SessionDep) -> None:
    tenant = get_tenant(session, principal, tenant_id, write=True)
    sites = session.execute(
        select(func.count()).select_from(Site).where(Site.tenant_id == tenant.id)
    ).scalar_one()
    if sites:
        raise conflict(f"tenant {tenant.id!r} still has {sites} site(s); delete them first")
    users = session.execute(
        select(func.count()).select_from(User).where(User.tenant_id == tenant.id)
    ).scalar_one()
    if users:
        raise conflict(
            f"tenant {tenant.id!r} still has {users} user account(s); delete or reassign them first"
        )
    audit.record(session, principal, "delete", "tenant", tenant.id, audit.snapshot(tenant), None)
    session.delete(tenant)
    commit(session)

"""Reading the audit trail.

Admins see every entry. City and county admins see the entries they wrote themselves plus those
about the sites and devices currently in their scope (an entry about an object that has since
been deleted or moved out of their scope stays visible to admins and to its author only: the
trail records ids, and scope is decided by where an object is now). Tenant users: 403.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import and_, or_, select

from gateway.api import PageDep, SessionDep, paginate
from gateway.errors import error_responses, invalid, problem
from gateway.registry.models import AuditEntry, Device, Site
from gateway.schemas import PRINTABLE_PATTERN, AuditOut, Page
from gateway.security import StaffPrincipal, scope_devices, scope_sites

router = APIRouter(prefix="/audit", tags=["audit"], responses=error_responses(401, 403, 422))


@router.get("", response_model=Page[AuditOut], summary="The audit trail, newest first")
def list_audit(
    principal: StaffPrincipal,
    session: SessionDep,
    page: PageDep,
    entity: Annotated[str | None, Query(max_length=32, pattern=PRINTABLE_PATTERN)] = None,
    entity_id: Annotated[str | None, Query(max_length=128, pattern=PRINTABLE_PATTERN)] = None,
    actor: Annotated[str | None, Query(max_length=64, pattern=PRINTABLE_PATTERN)] = None,
    action: Annotated[str | None, Query(max_length=32, pattern=PRINTABLE_PATTERN)] = None,
    since: Annotated[datetime | None, Query(description="Inclusive, with a UTC offset")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive, with a UTC offset")] = None,
) -> Any:
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        try:
            value.astimezone(UTC)  # what the database layer will do; year 9999-12-31-05:00 can't
        except OverflowError:
            raise invalid([problem(name, "out of range", location="query")]) from None
        if value.tzinfo is None:
            raise invalid(
                [problem(name, "needs a UTC offset, e.g. 2025-01-01T00:00:00Z", location="query")]
            )
    stmt = select(AuditEntry)
    if not principal.is_admin:
        sites = scope_sites(select(Site.id), principal)
        devices = scope_devices(select(Device.id), principal)
        stmt = stmt.where(
            or_(
                AuditEntry.actor == principal.username,
                and_(AuditEntry.entity == "site", AuditEntry.entity_id.in_(sites)),
                and_(AuditEntry.entity == "device", AuditEntry.entity_id.in_(devices)),
            )
        )
    for column, value in (
        (AuditEntry.entity, entity),
        (AuditEntry.entity_id, entity_id),
        (AuditEntry.actor, actor),
        (AuditEntry.action, action),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.at < until)
    return paginate(session, stmt, page, AuditOut.model_validate, [AuditEntry.id.desc()])

"""Staff accounts (admin only): roles, jurisdictions, tenants, passwords, deactivation.

Role rules (see :func:`gateway.schemas.user_rule_problems`): an admin has neither region codes
nor tenant; a city admin has ≥1 city code (``xxxx00``); a county admin ≥1 county code; a tenant
user exactly one existing tenant. The last active admin cannot be demoted, deactivated or deleted,
so the registry never locks itself out. Deactivation takes effect on the user's next request.
A new password signs the user out: its JWTs issued before it are refused (also the caller's own,
when an admin changes its own password); its API tokens stay valid (gateway.security).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select

from gateway import audit
from gateway.api import PageDep, SessionDep, commit, paginate
from gateway.errors import conflict, error_responses, invalid, not_found, problem
from gateway.registry.models import Tenant, User
from gateway.schemas import (
    IDENTIFIER_PATTERN,
    Page,
    Role,
    UserCreate,
    UserOut,
    UserUpdate,
    user_rule_problems,
)
from gateway.security import (
    AdminPrincipal,
    count_active_admins,
    create_user,
    get_passwords,
    set_password,
)

router = APIRouter(prefix="/users", tags=["users"], responses=error_responses(401, 403, 422))
UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _user(session: Any, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise not_found("user", user_id)
    return user


@router.get("", response_model=Page[UserOut], summary="List staff users (admin)")
def list_users(
    principal: AdminPrincipal,
    session: SessionDep,
    page: PageDep,
    role: Role | None = None,
    active: bool | None = None,
    tenant: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
) -> Any:
    stmt = select(User)
    if role is not None:
        stmt = stmt.where(User.role == role)
    if active is not None:
        stmt = stmt.where(User.active.is_(active))
    if tenant is not None:
        stmt = stmt.where(User.tenant_id == tenant)
    return paginate(session, stmt, page, UserOut.model_validate, [User.id])


@router.post(
    "",
    response_model=UserOut,
    status_code=201,
    responses=error_responses(409),
    summary="Create a staff user (admin)",
)
def post_user(
    body: UserCreate, principal: AdminPrincipal, session: SessionDep, request: Request
) -> Any:
    if session.execute(select(User.id).where(User.username == body.username)).first():
        raise conflict(f"username {body.username!r} is taken")
    if body.tenant_id is not None and session.get(Tenant, body.tenant_id) is None:
        raise invalid([problem("tenant_id", f"tenant {body.tenant_id!r} does not exist")])
    user = create_user(
        session,
        body.username,
        body.password,
        body.role,
        body.region_codes,
        body.tenant_id,
        actor=principal.username,
        display_name=body.display_name,
        active=body.active,
        hasher=get_passwords(request),
    )
    commit(session)
    return UserOut.model_validate(user)


@router.get("/{user_id}", response_model=UserOut, responses=error_responses(404))
def read_user(user_id: UserId, principal: AdminPrincipal, session: SessionDep) -> Any:
    return UserOut.model_validate(_user(session, user_id))


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    responses=error_responses(404, 409),
    summary="Change a user: role, jurisdiction, tenant, password, active (admin)",
)
def patch_user(
    user_id: UserId,
    body: UserUpdate,
    principal: AdminPrincipal,
    session: SessionDep,
    request: Request,
) -> Any:
    user = _user(session, user_id)
    changes = body.changes()
    role = changes.get("role", user.role)
    codes = changes.get("region_codes", user.region_codes or [])
    tenant_id = changes.get("tenant_id", user.tenant_id)
    problems = user_rule_problems(role, codes, tenant_id)
    if problems:
        raise invalid([problem(field, why) for field, why in problems])
    if "tenant_id" in changes and tenant_id is not None and session.get(Tenant, tenant_id) is None:
        raise invalid([problem("tenant_id", f"tenant {tenant_id!r} does not exist")])
    stays_admin = role == "admin" and changes.get("active", user.active)
    last_admin = user.role == "admin" and user.active and not stays_admin
    if last_admin and count_active_admins(session, excluding=user.id) == 0:
        raise conflict("this is the last active admin; create another admin first")
    before = audit.snapshot(user)
    password = changes.pop("password", None)
    if password is not None:
        set_password(user, password, get_passwords(request))
    for key, value in changes.items():
        setattr(user, key, value)
    session.flush()
    audit.record(
        session,
        principal,
        "update",
        "user",
        user.id,
        before,
        audit.snapshot(user),
        "password changed" if password is not None else "",
    )
    commit(session)
    return UserOut.model_validate(user)


@router.delete(
    "/{user_id}",
    status_code=204,
    responses=error_responses(404, 409),
    summary="Delete a user and its API tokens (admin); prefer deactivating to keep the name",
)
def delete_user(user_id: UserId, principal: AdminPrincipal, session: SessionDep) -> None:
    user = _user(session, user_id)
    if user.id == principal.user_id:
        raise conflict("you cannot delete your own account")
    if user.role == "admin" and user.active and count_active_admins(session, user.id) == 0:
        raise conflict("this is the last active admin; create another admin first")
    audit.record(session, principal, "delete", "user", user.id, audit.snapshot(user), None)
    session.delete(user)
    commit(session)

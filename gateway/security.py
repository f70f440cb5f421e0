"""Staff authentication and the access rules, all in this one module.

**Authentication.** Staff log in with the OAuth2 password flow (``POST /auth/token``, form fields
``username`` and ``password``) and get an HS256 JWT signed with ``ctx.jwt_secret`` (claims
``sub`` = username, ``uid``, ``role``, ``iat``, ``exp``). Scripts use long-lived API tokens
(``wjt_<12 hex key id>_<secret>``, created at ``POST /auth/api-tokens``, shown once, stored as a
salted SHA-256: a 256-bit random secret needs no slow hash). Both are sent as
``Authorization: Bearer ...``. On every request the user row is read again: a deactivated or
deleted user is refused at once, and a changed role or jurisdiction applies at once (the role in
the JWT is informative only). Setting a password (:func:`set_password`) stamps the user's
``password_changed_at``; a JWT issued in an earlier second is refused from then on, so a password
change signs the user out everywhere. API tokens are separate credentials and survive it: each is
revoked on its own (``DELETE /auth/api-tokens/{id}``). Passwords are hashed with argon2id; an
unknown user costs the same hash as a wrong password, and both get the same 401 message.

**Roles and scope** (a site's scope is its 6-digit ``region_code``; a device is in scope iff its
site is):

==============  ===================================================================================
role            may
==============  ===================================================================================
admin           everything, including users and jurisdictions, and the whole audit trail
city_admin      sites/devices whose region code starts with the first 4 digits of one of its
                ``region_codes`` (city codes such as 330100 → 3301xx): read and write
county_admin    sites/devices whose region code equals one of its ``region_codes`` (county codes
                such as 330102): read and write
tenant_user     read only: its own tenant, that tenant's sites and devices — except that it may post
                its own sites' records (medical waste, disinfection: gateway/api/records.py)
==============  ===================================================================================

* Tenants: city and county admins read every tenant (an operator such as a hotel group spans
  counties, and a new site must be attachable to it) and may create tenants; they may change or
  delete a tenant only when every one of its sites is in their scope.
* Jurisdictions: admins write; city/county admins read those in their scope; tenant users: 403.
* Users: admin only (403 for everyone else). Audit: see :mod:`gateway.api.audit`.
* Every user manages its own API tokens; an admin may revoke anyone's.

**Refusals.** No or bad credentials → 401 with ``WWW-Authenticate: Bearer``. An object outside
the caller's scope is *not found* (404) for reads and writes alike, so existence never leaks. An
object the caller can see but not change (a tenant user, a tenant spanning other counties) → 403.
A role refused a whole resource (a tenant user on /users) → 403. Creating something in a region
outside one's scope → 403.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, Depends, Path, Request
from fastapi.security import HTTPBearer, OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, exists, false, func, or_, select
from sqlalchemy.orm import Session, joinedload

from gateway import audit
from gateway.api import CtxDep, PageDep, SessionDep, commit, paginate
from gateway.context import GatewayContext
from gateway.errors import error_responses, forbidden, not_found, unauthorized
from gateway.registry.credentials import hash_secret, verify_secret
from gateway.registry.models import ApiToken, Device, Jurisdiction, Site, Tenant, User, utcnow
from gateway.schemas import (
    USERNAME_PATTERN,
    ApiTokenCreate,
    ApiTokenIssued,
    ApiTokenOut,
    Me,
    Page,
    TokenOut,
    UserCreate,
)

log = logging.getLogger(__name__)

ADMIN, CITY_ADMIN, COUNTY_ADMIN, TENANT_USER = "admin", "city_admin", "county_admin", "tenant_user"
REGIONAL = frozenset({CITY_ADMIN, COUNTY_ADMIN})
STAFF_WRITERS = frozenset({ADMIN, CITY_ADMIN, COUNTY_ADMIN})
JWT_ALGORITHM = "HS256"
API_TOKEN_PREFIX = "wjt"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per token per minute
_REGION = re.compile(r"[0-9]{6}")
USERNAME = re.compile(USERNAME_PATTERN.strip("^$"))
_BAD_LOGIN = "incorrect username or password"
_PASSWORD_CHANGED = "token issued before the password was changed; sign in again"


# ---- the caller --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, as of this request's read of its user row."""

    user_id: int
    username: str
    role: str
    region_codes: tuple[str, ...] = ()
    tenant_id: str | None = None
    via: Literal["jwt", "api_token"] = "jwt"
    token_id: int | None = None

    @classmethod
    def of(
        cls, user: User, via: Literal["jwt", "api_token"] = "jwt", token_id: int | None = None
    ) -> Principal:
        codes = tuple(
            c for c in (user.region_codes or []) if isinstance(c, str) and _REGION.fullmatch(c)
        )
        return cls(user.id, user.username, user.role, codes, user.tenant_id, via, token_id)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_regional(self) -> bool:
        return self.role in REGIONAL

    @property
    def can_write(self) -> bool:
        return self.role in STAFF_WRITERS

    def region_prefixes(self) -> tuple[str, ...]:
        """City admins match by the 4-digit city prefix, county admins by the full code."""
        if self.role == CITY_ADMIN:
            return tuple(code[:4] for code in self.region_codes)
        if self.role == COUNTY_ADMIN:
            return self.region_codes
        return ()

    def covers_region(self, region_code: str) -> bool:
        """Whether a site in ``region_code`` is inside this caller's jurisdiction."""
        if self.is_admin:
            return True
        return any(region_code.startswith(p) for p in self.region_prefixes())

    def can_read_site(self, site: Site) -> bool:
        if self.role == TENANT_USER:
            return self.tenant_id is not None and site.tenant_id == self.tenant_id
        return self.covers_region(site.region_code)

    def can_write_site(self, site: Site) -> bool:
        return self.can_write and self.covers_region(site.region_code)

    def can_read_tenant(self, tenant_id: str) -> bool:
        return self.role != TENANT_USER or tenant_id == self.tenant_id


# ---- scope filters for queries -----------------------------------------------------------------


def region_clause(principal: Principal, column: Any) -> ColumnElement[bool] | None:
    """The region part of the scope over ``column`` (None: unrestricted)."""
    if principal.is_admin:
        return None
    if principal.role == CITY_ADMIN:
        conditions = [column.startswith(p, autoescape=True) for p in principal.region_prefixes()]
        return or_(*conditions) if conditions else false()
    if principal.role == COUNTY_ADMIN:
        return column.in_(principal.region_codes) if principal.region_codes else false()
    return false()


def site_clause(principal: Principal) -> ColumnElement[bool] | None:
    """WHERE clause over :class:`Site` selecting what the caller may read (None: everything)."""
    if principal.role == TENANT_USER:
        return Site.tenant_id == principal.tenant_id if principal.tenant_id else false()
    return region_clause(principal, Site.region_code)


def scope_sites(stmt: Select[Any], principal: Principal) -> Select[Any]:
    """Restrict a select that involves :class:`Site` to the caller's sites."""
    clause = site_clause(principal)
    return stmt if clause is None else stmt.where(clause)


def scope_devices(stmt: Select[Any], principal: Principal) -> Select[Any]:
    """Restrict a select over :class:`Device` to devices of the caller's sites (no join needed)."""
    clause = site_clause(principal)
    if clause is None:
        return stmt
    return stmt.where(Device.site_id.in_(select(Site.id).where(clause)))


def scope_tenants(stmt: Select[Any], principal: Principal) -> Select[Any]:
    if principal.role == TENANT_USER:
        return (
            stmt.where(Tenant.id == principal.tenant_id)
            if principal.tenant_id
            else stmt.where(false())
        )
    return stmt


def scope_jurisdictions(stmt: Select[Any], principal: Principal) -> Select[Any]:
    clause = region_clause(principal, Jurisdiction.region_code)
    return stmt if clause is None else stmt.where(clause)


# ---- single objects ----------------------------------------------------------------------------


def require_writer(principal: Principal) -> None:
    """Tenant users read only."""
    if not principal.can_write:
        raise forbidden(f"a {principal.role} has read-only access")


def require_region_write(principal: Principal, region_code: str) -> None:
    require_writer(principal)
    if not principal.covers_region(region_code):
        codes = ", ".join(principal.region_codes) or "none"
        raise forbidden(f"region {region_code} is outside your jurisdiction ({codes})")


def require_site_write(principal: Principal, site: Site) -> None:
    """For a site the caller can read: 403 unless it may change it."""
    require_writer(principal)
    if not principal.can_write_site(site):
        raise forbidden(f"site {site.id!r} is outside your jurisdiction")


def require_device_write(principal: Principal, device: Device) -> None:
    require_site_write(principal, device.site)


def require_tenant_write(session: Session, principal: Principal, tenant: Tenant) -> None:
    """Admins; city/county admins only if every site of the tenant is in their scope."""
    require_writer(principal)
    clause = site_clause(principal)
    if clause is None:
        return
    outside = session.execute(select(exists().where(Site.tenant_id == tenant.id, ~clause))).scalar()
    if outside:
        raise forbidden(f"tenant {tenant.id!r} has sites outside your jurisdiction")


def get_site(session: Session, principal: Principal, site_id: str, *, write: bool = False) -> Site:
    """The site if the caller can read it, else 404; with ``write``, 403 if it cannot change it."""
    site = session.get(Site, site_id)
    if site is None or not principal.can_read_site(site):
        raise not_found("site", site_id)
    if write:
        require_site_write(principal, site)
    return site


def get_device(
    session: Session, principal: Principal, device_id: str, *, write: bool = False
) -> Device:
    """The device (its site loaded) if the caller can read it, else 404; ``write`` as above."""
    device = session.execute(
        select(Device).options(joinedload(Device.site)).where(Device.id == device_id)
    ).scalar_one_or_none()
    if device is None or not principal.can_read_site(device.site):
        raise not_found("device", device_id)
    if write:
        require_device_write(principal, device)
    return device


def get_tenant(
    session: Session, principal: Principal, tenant_id: str, *, write: bool = False
) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or not principal.can_read_tenant(tenant_id):
        raise not_found("tenant", tenant_id)
    if write:
        require_tenant_write(session, principal, tenant)
    return tenant


def get_jurisdiction(session: Session, principal: Principal, region_code: str) -> Jurisdiction:
    row = session.get(Jurisdiction, region_code)
    if row is None or principal.role == TENANT_USER or not principal.covers_region(region_code):
        raise not_found("jurisdiction", region_code)
    return row


# ---- passwords ---------------------------------------------------------------------------------


class Passwords:
    """argon2id hashing (argon2-cffi defaults: RFC 9106 low-memory profile) for staff passwords."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, encoded: str | None, password: str) -> bool:
        """False for a wrong password, a broken hash, or no user (``encoded`` None) alike."""
        if encoded is None:
            # Spend the same time as for a real user, so timing does not reveal usernames.
            if self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
            encoded = self._dummy
            password = password + "\x00"  # never matches the dummy
        try:
            return self.hasher.verify(encoded, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(encoded)
        except (InvalidHashError, ValueError):
            return True


def get_passwords(request: Request) -> Passwords:
    return request.app.state.passwords


def set_password(
    user: User, password: str, passwords: Passwords, *, now: datetime | None = None
) -> None:
    """Store ``password``'s hash and stamp ``user.password_changed_at``; the caller commits.

    Every JWT of the user issued before that second is refused from the next request on
    (:func:`authenticate`); API tokens are not affected. Use this wherever a password is set or
    reset, never ``password_hash`` alone — except to rehash the *same* password with new argon2
    parameters at login, which must not sign the user out elsewhere.

    Why a timestamp and not a per-user token counter embedded in the JWT: the JWT already has
    ``iat``, so tokens keep their shape and nothing needs bumping besides the password itself,
    the check is the one already made against ``created_at`` (a reused user id), and the column
    says when the password was last set (the audit trail shows it too). Its cost: ``iat`` has
    whole-second resolution, so the comparison is at whole seconds in the user's favour — a
    token issued in the same second as the change is accepted, whether just after it (it must
    be: the user signed in again with the new password) or in the fraction of a second before.
    And it trusts the clocks of the gateway processes to agree within a second (all workers of
    one ``weijian serve`` share the host's clock).
    """
    user.password_hash = passwords.hash(password)
    user.password_changed_at = now or utcnow()


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    region_codes: Sequence[str] = (),
    tenant_id: str | None = None,
    *,
    actor: str = "cli",
    display_name: str = "",
    active: bool = True,
    hasher: PasswordHasher | Passwords | None = None,
) -> User:
    """Add a staff user (validated like the API does) and its audit entry; the caller commits.

    Raises ValueError with a readable message (bad role/region/tenant, taken username).
    """
    try:
        data = UserCreate(
            username=username,
            password=password,
            role=role,
            region_codes=list(region_codes),
            tenant_id=tenant_id,
            display_name=display_name,
            active=active,
        )
    except ValidationError as exc:
        messages = [
            f"{'.'.join(map(str, e['loc'])) or 'user'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise ValueError("; ".join(messages)) from None
    if session.execute(select(User.id).where(User.username == data.username)).first():
        raise ValueError(f"username {data.username!r} is taken")
    if data.tenant_id is not None and session.get(Tenant, data.tenant_id) is None:
        raise ValueError(f"tenant {data.tenant_id!r} does not exist")
    passwords = hasher if isinstance(hasher, Passwords) else Passwords(hasher)
    user = User(
        username=data.username,
        display_name=data.display_name,
        role=data.role,
        region_codes=list(data.region_codes),
        tenant_id=data.tenant_id,
        active=data.active,
    )
    set_password(user, data.password, passwords)
    session.add(user)
    session.flush()
    audit.record(session, actor, "create", "user", user.id, None, audit.snapshot(user))
    return user


# ---- tokens ------------------------------------------------------------------------------------


def issue_access_token(secret: str, user: User, ttl_s: int, *, now: datetime | None = None) -> str:
    """A JWT for ``user``; ``iat`` (whole seconds) dates it against ``password_changed_at``."""
    issued = now or datetime.now(UTC)
    claims = {
        "sub": user.username,
        "uid": user.id,
        "role": user.role,
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=ttl_s)).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def parse_api_token(presented: str) -> tuple[str, str] | None:
    """``wjt_<key id>_<secret>`` → (key id, whole token); None if not shaped like one."""
    parts = presented.split("_", 2)
    if (
        len(parts) != 3
        or parts[0] != API_TOKEN_PREFIX
        or re.fullmatch(r"[0-9a-f]{12}", parts[1]) is None
        or not parts[2]
    ):
        return None
    return parts[1], presented


def authenticate(session: Session, ctx: GatewayContext, token: str) -> Principal:
    """The principal a bearer token (JWT or API token) stands for; raises 401 otherwise."""
    if token.startswith(API_TOKEN_PREFIX + "_"):
        return _authenticate_api_token(session, token)
    try:
        claims = jwt.decode(
            token,
            ctx.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["exp", "iat", "sub", "uid"]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token expired; log in again") from None
    except jwt.InvalidTokenError:
        raise unauthorized("invalid token") from None
    uid = claims.get("uid")
    if not isinstance(uid, int) or isinstance(uid, bool) or not 0 < uid < 2**31:
        raise unauthorized("invalid token")
    user = session.get(User, uid)
    if user is None or not user.active or user.username != claims.get("sub"):
        raise unauthorized("this account is no longer active")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or iat < int(user.created_at.timestamp()):
        # Issued before this row existed: a deleted user's token must not fit a reused id.
        raise unauthorized("this account is no longer active")
    changed = user.password_changed_at
    if changed is not None and iat < int(changed.timestamp()):
        # Whole seconds, in the user's favour: see set_password. NULL: not recorded (pre-0004).
        raise unauthorized(_PASSWORD_CHANGED)
    return Principal.of(user)


def _authenticate_api_token(session: Session, presented: str) -> Principal:
    parsed = parse_api_token(presented)
    if parsed is None:
        raise unauthorized("invalid API token")
    key_id, whole = parsed
    row = session.execute(
        select(ApiToken).where(ApiToken.key_id == key_id, ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None or not verify_secret(whole, row.secret_hash):
        raise unauthorized("invalid or revoked API token")
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        raise unauthorized("this account is no longer active")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        commit(session)
    return Principal.of(user, "api_token", row.id)


# OpenAPI: the password flow, plus plain bearer for API tokens; both read the same header.
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/token",
    auto_error=False,
    scheme_name="password",
    description="Staff login (OAuth2 password flow) giving a JWT",
)
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="apiToken", description="An API token wjt_..., or a JWT"
)


def principal_dependency(
    session: SessionDep,
    ctx: CtxDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    _bearer: Annotated[Any, Depends(bearer_scheme)],
) -> Principal:
    """The authenticated caller of this request (401 with WWW-Authenticate: Bearer if none)."""
    if not token:
        raise unauthorized("authentication required: Authorization: Bearer <token>")
    return authenticate(session, ctx, token.strip())


CurrentPrincipal = Annotated[Principal, Depends(principal_dependency)]


def require_roles(*roles: str) -> Callable[[Principal], Principal]:
    """A dependency admitting only these roles (403 for the others)."""

    def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            raise forbidden(f"a {principal.role} may not use this resource")
        return principal

    return dependency


AdminPrincipal = Annotated[Principal, Depends(require_roles(ADMIN))]
StaffPrincipal = Annotated[Principal, Depends(require_roles(ADMIN, CITY_ADMIN, COUNTY_ADMIN))]


# ---- /auth routes ------------------------------------------------------------------------------

router = APIRouter(prefix="/auth", tags=["auth"])
PasswordsDep = Annotated[Passwords, Depends(get_passwords)]
TokenId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.post(
    "/token",
    response_model=TokenOut,
    responses=error_responses(401, 413, 422),
    summary="Log in (OAuth2 password flow): a JWT for the Authorization header",
)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    ctx: CtxDep,
    passwords: PasswordsDep,
) -> TokenOut:
    username = form.username if USERNAME.fullmatch(form.username) else None
    user = None
    if username is not None:
        user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    encoded = user.password_hash if user is not None and user.active else None
    if not passwords.verify(encoded, form.password) or user is None:
        raise unauthorized(_BAD_LOGIN)
    if passwords.needs_rehash(user.password_hash):
        # The same password with new parameters: not a change, other sessions stay signed in.
        user.password_hash = passwords.hash(form.password)
        commit(session)
    ttl = ctx.settings.jwt_ttl_s
    return TokenOut(access_token=issue_access_token(ctx.jwt_secret, user, ttl), expires_in=ttl)


@router.get("/me", response_model=Me, responses=error_responses(401))
def me(principal: CurrentPrincipal) -> Me:
    return Me(
        user_id=principal.user_id,
        username=principal.username,
        role=principal.role,
        region_codes=list(principal.region_codes),
        tenant_id=principal.tenant_id,
        via=principal.via,
    )


@router.post(
    "/api-tokens",
    response_model=ApiTokenIssued,
    status_code=201,
    responses=error_responses(401, 409, 422),
    summary="Create an API token for scripts; the token is shown in this response only",
)
def create_api_token(
    body: ApiTokenCreate, principal: CurrentPrincipal, session: SessionDep
) -> ApiTokenIssued:
    key_id = secrets.token_hex(6)
    token = f"{API_TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiToken(
        user_id=principal.user_id, name=body.name, key_id=key_id, secret_hash=hash_secret(token)
    )
    session.add(row)
    session.flush()
    audit.record(session, principal, "create", "api_token", row.id, None, audit.snapshot(row))
    commit(session)
    return ApiTokenIssued.model_validate(
        {**ApiTokenOut.model_validate(row).model_dump(), "token": token}
    )


@router.get(
    "/api-tokens",
    response_model=Page[ApiTokenOut],
    responses=error_responses(401, 422),
    summary="Your API tokens (an admin may pass all=true), without secrets",
)
def list_api_tokens(
    principal: CurrentPrincipal, session: SessionDep, page: PageDep, all: bool = False
) -> Any:
    stmt = select(ApiToken)
    if not (all and principal.is_admin):
        stmt = stmt.where(ApiToken.user_id == principal.user_id)
    return paginate(session, stmt, page, ApiTokenOut.model_validate, [ApiToken.id])


@router.delete(
    "/api-tokens/{token_id}",
    response_model=ApiTokenOut,
    responses=error_responses(401, 404, 422),
    summary="Revoke an API token (takes effect on the next request)",
)
def revoke_api_token(
    token_id: TokenId, principal: CurrentPrincipal, session: SessionDep
) -> ApiTokenOut:
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != principal.user_id and not principal.is_admin):
        raise not_found("API token", token_id)
    if row.revoked_at is None:
        before = audit.snapshot(row)
        row.revoked_at = utcnow()
        audit.record(session, principal, "revoke", "api_token", row.id, before, audit.snapshot(row))
        commit(session)
    return ApiTokenOut.model_validate(row)


def count_active_admins(session: Session, excluding: int | None = None) -> int:
    stmt = select(func.count()).select_from(User).where(User.role == ADMIN, User.active.is_(True))
    if excluding is not None:
        stmt = stmt.where(User.id != excluding)
    return int(session.execute(stmt).scalar_one())


__all__ = [
    "AdminPrincipal",
    "CurrentPrincipal",
    "Passwords",
    "Principal",
    "StaffPrincipal",
    "authenticate",
    "create_user",
    "get_device",
    "get_jurisdiction",
    "get_site",
    "get_tenant",
    "issue_access_token",
    "principal_dependency",
    "region_clause",
    "require_device_write",
    "require_region_write",
    "require_roles",
    "require_site_write",
    "require_tenant_write",
    "require_writer",
    "scope_devices",
    "scope_jurisdictions",
    "scope_sites",
    "scope_tenants",
    "set_password",
    "site_clause",
]

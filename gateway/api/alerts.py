"""Alerts: list and filter, one alert with its history, acknowledge, resolve, counts, high risk.

The rows are the alert engine's (alerting/store.py): every alert with its current state and its
transitions. Reading needs no engine; acknowledging and resolving go through the engine's book,
the single writer of an alert's state (``ctx.alerts``; 503 where this process runs none).

**Scope.** An alert belongs to the region and tenant it was raised in (alerts outlive sites and
devices, so scope is decided by the alert's own ``region_code`` and ``tenant_id``): admins see
all; city admins the alerts whose region starts with their cities' 4 digits; county admins those
of their counties; tenant users their tenant's, read only (403 on ack/resolve). An alert outside
the caller's scope is not found (404). Acknowledgements and resolutions are audited
(``entity`` ``alert``, actions ``acknowledge`` and ``resolve``).

**Time.** Filters take RFC 3339 times with an offset. Counts per day, week (Monday) and month
are cut at midnight China Standard Time (Asia/Shanghai, UTC+8, no daylight saving since 1991).
"""

from __future__ import annotations

import bisect
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Select, case, false, func, select
from sqlalchemy.orm import Session

from alerting.engine import EngineUnavailable
from alerting.lifecycle import AlertNotFound, LifecycleError
from gateway import audit
from gateway.api import CtxDep, PageDep, SessionDep, commit, paginate, query_time
from gateway.errors import ApiError, error_responses, invalid, not_found, problem
from gateway.registry.models import AlertRow, AlertTransitionRow, Site, Tenant
from gateway.schemas import (
    IDENTIFIER_PATTERN,
    PRINTABLE_PATTERN,
    REGION_PREFIX_PATTERN,
    Page,
)
from gateway.security import TENANT_USER, CurrentPrincipal, Principal, region_clause, require_writer

log = logging.getLogger(__name__)

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=error_responses(401, 422))

ALERT_ID_PATTERN = r"^[0-9a-f]{32}$"
AlertId = Annotated[str, Path(pattern=ALERT_ID_PATTERN, description="The alert's id (32 hex)")]
StateName = Literal["pending", "firing", "acknowledged", "resolved"]
SeverityName = Literal["info", "warning", "critical", "emergency"]
SEVERITIES: tuple[SeverityName, ...] = ("info", "warning", "critical", "emergency")
LEVEL = {name: i + 1 for i, name in enumerate(SEVERITIES)}  # alerting.model.Severity's values
# High-risk score: each alert fired in the period counts by its severity (documented).
WEIGHT = {1: 1, 2: 2, 3: 4, 4: 8}
CST = timezone(timedelta(hours=8), "Asia/Shanghai")
MAX_BUCKETS = 1000
DEFAULT_BUCKETS = {"day": 30, "week": 12, "month": 12}
OPEN_STATES = ("pending", "firing", "acknowledged")

# ---- schemas -------------------------------------------------------------------------------------


class AlertOut(BaseModel):
    """An alert's current state (its history: ``GET /alerts/{id}``)."""

    id: str
    device_id: str
    rule_id: str
    state: StateName
    severity: SeverityName
    severity_level: int = Field(description="1 info … 4 emergency (sorts)")
    tenant_id: str
    site_id: str
    region_code: str
    kind: str
    quantity: str | None
    message: str
    value: float | None
    limit: float | None
    standard: str | None
    started_at: datetime | None
    fired_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_comment: str | None
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="None: resolved by itself (condition cleared)")
    resolve_reason: str | None
    notified_at: datetime | None
    escalation_level: int
    labels: dict[str, Any]

    @classmethod
    def of(cls, row: AlertRow) -> AlertOut:
        level = int(row.severity)
        return cls(
            id=row.id,
            device_id=row.device_id,
            rule_id=row.rule_id,
            state=row.state,  # type: ignore[arg-type]
            severity=SEVERITIES[min(max(level, 1), 4) - 1],
            severity_level=level,
            tenant_id=row.tenant_id,
            site_id=row.site_id,
            region_code=row.region_code,
            kind=row.kind,
            quantity=row.quantity,
            message=row.message,
            value=row.value,
            limit=row.limit_value,
            standard=row.standard,
            started_at=row.started_at,
            fired_at=row.fired_at,
            acknowledged_at=row.acknowledged_at,
            acknowledged_by=row.acknowledged_by,
            ack_comment=row.ack_comment,
            resolved_at=row.resolved_at,
            resolved_by=row.resolved_by,
            resolve_reason=row.resolve_reason,
            notified_at=row.notified_at,
            escalation_level=row.escalation_level or 0,
            labels=dict(row.labels or {}),
        )


class TransitionOut(BaseModel):
    at: datetime
    from_state: StateName | None = Field(description="None: the alert was created")
    to_state: StateName
    severity: SeverityName
    actor: str | None = Field(description="The person (ack, manual resolve); None: the engine")
    comment: str | None
    value: float | None


class AlertDetail(AlertOut):
    transitions: list[TransitionOut]


def _text(value: str | None, *, required: bool) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if required and not value.strip():
        raise ValueError("must not be blank")
    return value


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=2000, description="What you will do")

    @field_validator("comment")
    @classmethod
    def _comment(cls, value: str | None) -> str | None:
        return _text(value, required=False)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Why it is closed by hand")

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        return _text(value, required=True) or ""


class CountBucket(BaseModel):
    start: datetime
    end: datetime
    count: int
    by_severity: dict[SeverityName, int]


class AlertCounts(BaseModel):
    period: Literal["day", "week", "month"]
    timezone: str = Field(description="Where day, week (Monday) and month boundaries are cut")
    since: datetime
    until: datetime
    total: int
    buckets: list[CountBucket]


class HighRiskEntry(BaseModel):
    rank: int
    tenant_id: str
    tenant_name: str | None
    site_id: str | None = Field(description="None when ranking tenants")
    site_name: str | None
    region_code: str | None
    score: int = Field(description="Σ weight(severity): info 1, warning 2, critical 4, emergency 8")
    alerts: int = Field(description="Alerts that fired in the period")
    still_open: int = Field(description="Of those, not resolved yet")
    by_severity: dict[SeverityName, int]


class HighRisk(BaseModel):
    by: Literal["site", "tenant"]
    since: datetime
    until: datetime
    items: list[HighRiskEntry]


# ---- helpers -------------------------------------------------------------------------------------


def scope_alerts(stmt: Select[Any], principal: Principal) -> Select[Any]:
    """The caller's alerts: by the alert's own tenant (tenant users) or region (staff)."""
    if principal.role == TENANT_USER:
        if not principal.tenant_id:
            return stmt.where(false())
        return stmt.where(AlertRow.tenant_id == principal.tenant_id)
    clause = region_clause(principal, AlertRow.region_code)
    return stmt if clause is None else stmt.where(clause)


def _filters(
    stmt: Select[Any],
    *,
    min_severity: SeverityName | None = None,
    region: str | None = None,
    tenant: str | None = None,
    site: str | None = None,
) -> Select[Any]:
    if min_severity is not None:
        stmt = stmt.where(AlertRow.severity >= LEVEL[min_severity])
    if region is not None:
        stmt = stmt.where(AlertRow.region_code.startswith(region, autoescape=True))
    if tenant is not None:
        stmt = stmt.where(AlertRow.tenant_id == tenant)
    if site is not None:
        stmt = stmt.where(AlertRow.site_id == site)
    return stmt


def _get_alert(session: Session, principal: Principal, alert_id: str) -> AlertRow:
    row = session.execute(
        scope_alerts(select(AlertRow).where(AlertRow.id == alert_id), principal)
    ).scalar_one_or_none()
    if row is None:
        raise not_found("alert", alert_id)
    return row


def _brief(row: AlertRow) -> dict[str, Any]:
    return {
        "state": row.state,
        "severity": row.severity,
        "device_id": row.device_id,
        "rule_id": row.rule_id,
        "acknowledged_by": row.acknowledged_by,
        "resolved_by": row.resolved_by,
    }


Tenant_ = Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)]
Region = Annotated[
    str | None, Query(pattern=REGION_PREFIX_PATTERN, description="Region code prefix")
]
Since = Annotated[datetime | None, Query(description="Inclusive, with a UTC offset")]
Until = Annotated[datetime | None, Query(description="Exclusive, with a UTC offset")]

# ---- reading -------------------------------------------------------------------------------------


@router.get("", response_model=Page[AlertOut], summary="List alerts in your scope, newest first")
def list_alerts(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageDep,
    state: Annotated[
        list[StateName] | None, Query(description="Repeat for several (default: all)")
    ] = None,
    min_severity: SeverityName | None = None,
    region: Region = None,
    tenant: Tenant_ = None,
    site: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    device: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    rule: Annotated[str | None, Query(max_length=128, pattern=PRINTABLE_PATTERN)] = None,
    since: Annotated[
        datetime | None, Query(description="started_at ≥ since (with an offset)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="started_at < until (with an offset)")
    ] = None,
) -> Any:
    since, until = query_time("since", since), query_time("until", until)
    stmt = scope_alerts(select(AlertRow), principal)
    stmt = _filters(stmt, min_severity=min_severity, region=region, tenant=tenant, site=site)
    if state:
        stmt = stmt.where(AlertRow.state.in_(sorted(set(state))))
    if device is not None:
        stmt = stmt.where(AlertRow.device_id == device)
    if rule is not None:
        stmt = stmt.where(AlertRow.rule_id == rule)
    if since is not None:
        stmt = stmt.where(AlertRow.started_at >= since)
    if until is not None:
        stmt = stmt.where(AlertRow.started_at < until)
    return paginate(
        session, stmt, page, AlertOut.of, [AlertRow.started_at.desc(), AlertRow.id.desc()]
    )


def _bucket_start(local: datetime, period: str) -> datetime:
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next(start: datetime, period: str) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _previous(start: datetime, period: str, n: int) -> datetime:
    if period == "day":
        return start - timedelta(days=n)
    if period == "week":
        return start - timedelta(days=7 * n)
    months = start.year * 12 + start.month - 1 - n
    return start.replace(year=months // 12, month=months % 12 + 1)


@router.get(
    "/counts",
    response_model=AlertCounts,
    summary="Alerts that fired per day, week or month (China Standard Time), in your scope",
)
def alert_counts(
    principal: CurrentPrincipal,
    session: SessionDep,
    period: Literal["day", "week", "month"] = "day",
    since: Annotated[
        datetime | None,
        Query(description="Default: 30 days, 12 weeks or 12 months back; rounded down"),
    ] = None,
    until: Annotated[datetime | None, Query(description="Exclusive; default now")] = None,
    min_severity: SeverityName | None = None,
    region: Region = None,
    tenant: Tenant_ = None,
    site: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
) -> Any:
    since, until = query_time("since", since), query_time("until", until)
    end = (until or datetime.now(UTC)).astimezone(CST)
    try:
        if since is None:
            first = _previous(_bucket_start(end, period), period, DEFAULT_BUCKETS[period] - 1)
        else:
            first = _bucket_start(since.astimezone(CST), period)
        if first >= end:
            raise invalid([problem("since", "must be before until", location="query")])
        if (end - first).days > MAX_BUCKETS * {"day": 1, "week": 7, "month": 31}[period]:
            raise invalid([problem("since", f"more than {MAX_BUCKETS} buckets", location="query")])
        starts = [first]
        while True:
            nxt = _next(starts[-1], period)
            if nxt >= end:
                break
            starts.append(nxt)
        ends = [*starts[1:], end]
    except (OverflowError, ValueError):
        raise invalid([problem("since", "out of range", location="query")]) from None
    if len(starts) > MAX_BUCKETS:
        raise invalid([problem("since", f"more than {MAX_BUCKETS} buckets", location="query")])
    stmt = scope_alerts(
        select(AlertRow.fired_at, AlertRow.severity).where(
            AlertRow.fired_at.is_not(None), AlertRow.fired_at >= first, AlertRow.fired_at < end
        ),
        principal,
    )
    stmt = _filters(stmt, min_severity=min_severity, region=region, tenant=tenant, site=site)
    counts = [dict.fromkeys(SEVERITIES, 0) for _ in starts]
    stamps = [s.timestamp() for s in starts]
    total = 0
    for fired_at, severity in session.execute(stmt):
        i = bisect.bisect_right(stamps, fired_at.timestamp()) - 1
        if 0 <= i < len(counts):
            counts[i][SEVERITIES[min(max(int(severity), 1), 4) - 1]] += 1
            total += 1
    return AlertCounts(
        period=period,
        timezone="Asia/Shanghai",
        since=first,
        until=end,
        total=total,
        buckets=[
            CountBucket(start=s, end=e, count=sum(c.values()), by_severity=c)  # type: ignore[arg-type]
            for s, e, c in zip(starts, ends, counts, strict=True)
        ],
    )


@router.get(
    "/high-risk",
    response_model=HighRisk,
    summary="Institutions ranked by the alerts that fired in a period, weighted by severity",
)
def high_risk(
    principal: CurrentPrincipal,
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="Inclusive; default 30 days ago")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
    by: Annotated[
        Literal["site", "tenant"], Query(description="Rank sites or tenants (operators)")
    ] = "site",
    region: Region = None,
    min_severity: SeverityName | None = None,
) -> Any:
    since, until = query_time("since", since), query_time("until", until)
    end = until or datetime.now(UTC)
    try:
        start = since or end - timedelta(days=30)
    except OverflowError:
        raise invalid([problem("until", "out of range", location="query")]) from None
    if start >= end:
        raise invalid([problem("since", "must be before until", location="query")])
    group = [AlertRow.tenant_id] if by == "tenant" else [AlertRow.tenant_id, AlertRow.site_id]
    still_open = func.sum(case((AlertRow.state.in_(OPEN_STATES), 1), else_=0))
    stmt = scope_alerts(
        select(
            *group,
            AlertRow.severity,
            func.count(),
            still_open,
            func.max(AlertRow.region_code),
        )
        .where(AlertRow.fired_at.is_not(None), AlertRow.fired_at >= start, AlertRow.fired_at < end)
        .group_by(*group, AlertRow.severity),
        principal,
    )
    stmt = _filters(stmt, min_severity=min_severity, region=region)
    entries: dict[tuple[str, str | None], dict[str, Any]] = {}
    for row in session.execute(stmt):
        tenant_id = row[0]
        site_id = row[1] if by == "site" else None
        severity, count, opened, region_code = row[-4], row[-3], row[-2], row[-1]
        entry = entries.setdefault(
            (tenant_id, site_id),
            {
                "tenant_id": tenant_id,
                "site_id": site_id,
                "region_code": region_code if by == "site" else None,
                "score": 0,
                "alerts": 0,
                "still_open": 0,
                "by_severity": dict.fromkeys(SEVERITIES, 0),
            },
        )
        level = min(max(int(severity), 1), 4)
        entry["score"] += WEIGHT[level] * int(count)
        entry["alerts"] += int(count)
        entry["still_open"] += int(opened or 0)
        entry["by_severity"][SEVERITIES[level - 1]] += int(count)
    ranked = sorted(
        entries.values(),
        key=lambda e: (-e["score"], -e["alerts"], e["tenant_id"], e["site_id"] or ""),
    )[:limit]
    tenant_ids = {e["tenant_id"] for e in ranked}
    site_ids = {e["site_id"] for e in ranked if e["site_id"]}
    tenants = dict(
        session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(tenant_ids))).all()
    )
    sites = dict(session.execute(select(Site.id, Site.name).where(Site.id.in_(site_ids))).all())
    return HighRisk(
        by=by,
        since=start,
        until=end,
        items=[
            HighRiskEntry(
                rank=i + 1,
                tenant_name=tenants.get(e["tenant_id"]),
                site_name=sites.get(e["site_id"]) if e["site_id"] else None,
                **e,
            )
            for i, e in enumerate(ranked)
        ],
    )


@router.get(
    "/{alert_id}",
    response_model=AlertDetail,
    responses=error_responses(404),
    summary="One alert with its transitions, oldest first",
)
def read_alert(alert_id: AlertId, principal: CurrentPrincipal, session: SessionDep) -> Any:
    row = _get_alert(session, principal, alert_id)
    transitions = session.execute(
        select(AlertTransitionRow)
        .where(AlertTransitionRow.alert_id == row.id)
        .order_by(AlertTransitionRow.id)
    ).scalars()
    return AlertDetail(
        **AlertOut.of(row).model_dump(),
        transitions=[
            TransitionOut(
                at=t.at,
                from_state=t.from_state,  # type: ignore[arg-type]
                to_state=t.to_state,  # type: ignore[arg-type]
                severity=SEVERITIES[min(max(int(t.severity), 1), 4) - 1],
                actor=t.actor,
                comment=t.comment,
                value=t.value,
            )
            for t in transitions
        ],
    )


# ---- people's actions ----------------------------------------------------------------------------


def _act(
    session: Session,
    principal: Principal,
    ctx: Any,
    alert_id: str,
    action: Literal["acknowledge", "resolve"],
    text: str | None,
) -> AlertOut:
    row = _get_alert(session, principal, alert_id)
    require_writer(principal)
    if row.state == "resolved":
        raise ApiError(409, "conflict", f"alert {alert_id} is already resolved")
    engine = ctx.alerts
    if engine is None:
        raise ApiError(
            503,
            "unavailable",
            "this gateway's process does not run the alert engine; try again where it runs",
        )
    before = _brief(row)
    session.rollback()  # end the read snapshot: the engine's writer commits the change
    try:
        if action == "acknowledge":
            engine.acknowledge(alert_id, principal.username, text)
        else:
            engine.resolve(alert_id, principal.username, text or "")
    except LifecycleError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except AlertNotFound as exc:
        raise ApiError(409, "conflict", f"{exc} (the detector does not hold it open)") from None
    except EngineUnavailable as exc:
        raise ApiError(503, "unavailable", str(exc)) from None
    session.refresh(row)
    audit.record(
        session, principal, action, "alert", alert_id, before, _brief(row), detail=text or ""
    )
    commit(session)
    return AlertOut.of(row)


@router.post(
    "/{alert_id}/ack",
    response_model=AlertOut,
    responses=error_responses(403, 404, 409, 503),
    summary="Acknowledge a firing alert (staff in scope; audited)",
)
def acknowledge_alert(
    alert_id: AlertId,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    body: AckBody | None = None,
) -> Any:
    return _act(session, principal, ctx, alert_id, "acknowledge", body.comment if body else None)


@router.post(
    "/{alert_id}/resolve",
    response_model=AlertOut,
    responses=error_responses(403, 404, 409, 503),
    summary="Resolve an alert by hand, with a reason (staff in scope; audited)",
)
def resolve_alert(
    alert_id: AlertId,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    body: ResolveBody,
) -> Any:
    return _act(session, principal, ctx, alert_id, "resolve", body.reason)

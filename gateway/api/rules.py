"""Threshold rules and their per-site overrides: what the standards say, and what a site changed.

The rules are data (alerting/data/rules/*.yaml), read-only here. A supervisor may change one rule
for one site — a stricter limit for a hospital's tap, a longer ``for`` at a plant whose probe is
known to be noisy, a rule switched off where it does not apply — with a reason that is shown
beside the limit in every alert it raises. An override is validated exactly like a rule file
(``RuleSet.apply``: a clear value on the wrong side of the limit is refused, naming the site and
the rule) and audited with before/after in the same transaction (entity ``rule_override``).

Who: anyone signed in may read the rules; a site's overrides and effective rules are readable by
whoever may read the site; writing takes a staff writer whose jurisdiction covers the site
(tenant users may not change the limits they are judged by). The alert engine picks a change up
at once (the registry-change hook) and keeps each series' state: an alert already pending or
firing is judged by the new limit from the next reading on.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from alerting.rules import (
    Override,
    Rule,
    RuleError,
    RuleSet,
    delete_override,
    load_rules,
    save_override,
    site_overrides,
)
from gateway.api import CtxDep, SessionDep, commit
from gateway.context import GatewayContext
from gateway.errors import error_responses, invalid, not_found, problem
from gateway.registry.models import RuleOverride
from gateway.schemas import IDENTIFIER_PATTERN
from gateway.security import CurrentPrincipal, get_site

router = APIRouter(tags=["rules"], responses=error_responses(401, 422))

RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,127}$"
SiteId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]
RuleId = Annotated[str, Path(pattern=RULE_ID_PATTERN, description="e.g. dw.turbidity.high")]
REASON_PATTERN = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"  # printable, not blank
SeverityName = Annotated[str, Field(pattern=r"^(info|warning|critical|emergency)$")]


class RuleOut(BaseModel):
    """One side of one limit, as the rule files (and a site's override) set it."""

    id: str
    quantity: str
    unit: str | None
    kinds: list[str]
    venue_types: list[str] | None = Field(description="None: any venue")
    comparator: str
    value: float
    clear_value: float
    for_s: float
    clear_for_s: float
    severity: str
    enabled: bool
    standard: str
    clause: str
    confidence: str = Field(description="A read in the standard's text, B secondary, C unverified")
    needs_verification: bool
    source: str = Field(description="The rule file")
    override_reason: str | None = Field(description="Set when a site's override changed the rule")

    @classmethod
    def of(cls, rule: Rule) -> RuleOut:
        return cls(
            id=rule.id,
            quantity=rule.quantity,
            unit=rule.unit,
            kinds=sorted(rule.kinds),
            venue_types=sorted(rule.venue_types) if rule.venue_types is not None else None,
            comparator=rule.comparator,
            value=rule.value,
            clear_value=rule.clear_value,
            for_s=rule.for_s,
            clear_for_s=rule.clear_for_s,
            severity=rule.severity.name.lower(),
            enabled=rule.enabled,
            standard=rule.standard,
            clause=rule.clause,
            confidence=rule.confidence,
            needs_verification=rule.needs_verification,
            source=rule.source,
            override_reason=rule.override_reason,
        )


class OverrideIn(BaseModel):
    """What to change; a field left out keeps the rule file's setting. ``reason`` is required."""

    model_config = ConfigDict(extra="forbid")

    value: float | None = Field(default=None, allow_inf_nan=False, description="The new limit")
    clear_value: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Where the condition clears (default: moves with the limit)",
    )
    for_s: float | None = Field(default=None, ge=0, le=30 * 86400, allow_inf_nan=False)
    clear_for_s: float | None = Field(default=None, ge=0, le=30 * 86400, allow_inf_nan=False)
    severity: SeverityName | None = None
    enabled: bool | None = None
    reason: str = Field(min_length=1, max_length=500, pattern=REASON_PATTERN)


class OverrideOut(BaseModel):
    site_id: str
    rule_id: str
    value: float | None
    clear_value: float | None
    for_s: float | None
    clear_for_s: float | None
    severity: str | None
    enabled: bool | None
    reason: str
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: RuleOverride) -> OverrideOut:
        return cls(
            site_id=row.site_id,
            rule_id=row.rule_id,
            value=row.value,
            clear_value=row.clear_value,
            for_s=row.for_s,
            clear_for_s=row.clear_for_s,
            severity=row.severity,
            enabled=row.enabled,
            reason=row.reason,
            created_by=row.created_by,
            created_at=row.created_at,
        )


@cache
def _default_rules() -> RuleSet:
    return load_rules()


def ruleset(ctx: GatewayContext) -> RuleSet:
    """The engine's own rules when this process runs it (one source), else the shipped files."""
    core = getattr(ctx.alerts, "core", None)
    rules = getattr(core, "ruleset", None)
    return rules if isinstance(rules, RuleSet) else _default_rules()


def _rules_changed(ctx: GatewayContext) -> None:
    # The registry-change hook refreshes the alert engine's contexts (and the device directory).
    ctx.devices_changed()


@router.get("/rules", response_model=list[RuleOut], summary="The threshold rules (the standards)")
def list_rules(
    principal: CurrentPrincipal,
    ctx: CtxDep,
    kind: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    quantity: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
) -> Any:
    return [
        RuleOut.of(rule)
        for rule in ruleset(ctx)
        if (kind is None or kind in rule.kinds) and (quantity is None or rule.quantity == quantity)
    ]


@router.get(
    "/sites/{site_id}/rules",
    response_model=list[RuleOut],
    responses=error_responses(404),
    summary="The rules that judge this site's devices, its overrides applied",
)
def site_rules(
    site_id: SiteId,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    kind: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
) -> Any:
    site = get_site(session, principal, site_id)
    rules = ruleset(ctx)
    overrides = {o.rule_id: o for o in site_overrides(session, site.id)}
    kinds = sorted({k for rule in rules for k in rule.kinds}) if kind is None else [kind]
    seen: dict[str, Rule] = {}
    for k in kinds:
        for rule in rules.for_device(k, site.venue_type, site.attributes or {}):
            if rule.id in seen:
                continue
            override = overrides.get(rule.id)
            seen[rule.id] = rules.apply(rule, override) if override is not None else rule
    return [RuleOut.of(rule) for rule in sorted(seen.values(), key=lambda r: r.id)]


@router.get(
    "/sites/{site_id}/rule-overrides",
    response_model=list[OverrideOut],
    responses=error_responses(404),
    summary="A site's overrides",
)
def list_overrides(site_id: SiteId, principal: CurrentPrincipal, session: SessionDep) -> Any:
    site = get_site(session, principal, site_id)
    rows = session.execute(
        select(RuleOverride).where(RuleOverride.site_id == site.id).order_by(RuleOverride.rule_id)
    ).scalars()
    return [OverrideOut.of(row) for row in rows]


@router.put(
    "/sites/{site_id}/rule-overrides/{rule_id}",
    response_model=OverrideOut,
    responses={**error_responses(403, 404), 201: {"description": "Created"}},
    summary="Create (201) or replace (200) a site's override of one rule; audited",
)
def put_override(
    site_id: SiteId,
    rule_id: RuleId,
    body: OverrideIn,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    response: Response,
) -> Any:
    site = get_site(session, principal, site_id, write=True)
    rules = ruleset(ctx)
    if rules.get(rule_id) is None:
        raise not_found("rule", rule_id)
    existed = (
        session.execute(
            select(RuleOverride.id).where(
                RuleOverride.site_id == site.id, RuleOverride.rule_id == rule_id
            )
        ).first()
        is not None
    )
    override = Override(
        site_id=site.id,
        rule_id=rule_id,
        value=body.value,
        clear_value=body.clear_value,
        clear_for=body.clear_for_s,
        **{"for": body.for_s},
        severity=body.severity,
        enabled=body.enabled,
        reason=body.reason,
    )
    try:
        row = save_override(session, rules, override, actor=principal.username)
    except RuleError as exc:
        raise invalid([problem(None, message) for message in exc.problems]) from None
    commit(session)
    _rules_changed(ctx)
    response.status_code = 200 if existed else 201
    return OverrideOut.of(row)


@router.delete(
    "/sites/{site_id}/rule-overrides/{rule_id}",
    status_code=204,
    responses=error_responses(403, 404),
    summary="Remove a site's override (the rule file's setting applies again); audited",
)
def remove_override(
    site_id: SiteId,
    rule_id: RuleId,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    reason: Annotated[str, Query(min_length=1, max_length=500, pattern=REASON_PATTERN)],
) -> None:
    site = get_site(session, principal, site_id, write=True)
    if not delete_override(session, site.id, rule_id, actor=principal.username, reason=reason):
        raise not_found("override of rule", rule_id)
    commit(session)
    _rules_changed(ctx)

"""Records sites declare: medical waste sealed, collected, handed over; disinfections done.

What the records monitor (alerting/domain/records.py, rules in alerting/data/records.yaml)
judges: a bag collected into the temporary store must be handed over within 48 h, a site's daily
disinfection record is due every 24 h, and so on. Every record is stored (``record_events``)
before anything else happens, and the registry is the alert engine's feed: the engine reads the
new rows (by id, every ``alerting.tick_interval_s``) wherever it runs -- this process, another
worker, another host -- and replays the recent ones at its start. The gateway only nudges an
engine running in this process to read at once (``ctx.alerts.poll_records``); no engine running
anywhere does not fail the request: the record is kept, and judged once one runs.

**Who posts.** Staff with write access to the site (admin; city and county admins in their
region) and — the one exception to "tenant users read only" — tenant users, for the sites of
their own tenant: these records are the institution's own declarations. Devices and systems (a
hospital's medical-waste scanner) post to ``/ingest/v1/records`` with a device API key, for that
device's site only. A site the caller cannot see is "does not exist" (``422``), like every site
named in a body; a device naming another site than its own gets ``403``. Staff posts are audited
(``entity`` ``record``, action ``create``); the row itself says who posted (``source``
``user``/``device``, ``posted_by``) and when it arrived.

**Idempotent.** A record is identified by (site, record type, ``at``, ``ref``): posting it again
(a client retrying after a timeout) answers ``200`` with the row already stored and changes
nothing — no second row, no second event to the engine; a new record answers ``201``. A batch
(``/batch``, up to :data:`MAX_BATCH` records) is validated whole: any problem refuses all of it
with one detail per problem (``records.<i>.<field>``); it answers ``201`` if it stored at least
one new record, ``200`` if every one was already there.

**Validation.** ``record_type`` one the rules name (the error lists them); ``at`` with a UTC
offset, at most :data:`MAX_FUTURE_S` ahead of the gateway's clock and at most :data:`MAX_AGE_S`
old; ``ref`` (a bag's or batch's code) printable, 1–64 characters, surrounding spaces dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alerting.domain.records import default_record_rules
from gateway import audit
from gateway.api import CtxDep, PageDep, SessionDep, paginate, query_time
from gateway.context import GatewayContext
from gateway.errors import (
    ApiError,
    error_responses,
    forbidden,
    invalid,
    problem,
    unauthorized,
)
from gateway.registry.models import Device, RecordEventRow, Site, utcnow
from gateway.schemas import (
    IDENTIFIER_PATTERN,
    PRINTABLE_PATTERN,
    REGION_PREFIX_PATTERN,
    Identifier,
    Page,
)
from gateway.security import TENANT_USER, CurrentPrincipal, Principal, get_site, site_clause

log = logging.getLogger(__name__)

router = APIRouter(tags=["records"], responses=error_responses(401, 413, 422))

RECORD_TYPES: tuple[str, ...] = default_record_rules().record_types()
RecordType = Literal[RECORD_TYPES]  # type: ignore[valid-type]
MAX_FUTURE_S = 300.0  # a record may be stamped at most 5 minutes ahead (clocks differ)
MAX_AGE_S = 30 * 86400.0  # and at most 30 days back (older declarations are paperwork)
MAX_BATCH = 500

# ---- schemas -------------------------------------------------------------------------------------


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable text (no control, format or separator characters)")
    return value


Ref = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_printable),
]


def _in_window(value: datetime) -> datetime:
    try:
        age = time.time() - value.timestamp()
        at = value.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        raise ValueError("out of range") from None
    if age < -MAX_FUTURE_S:
        raise ValueError(f"is more than {MAX_FUTURE_S / 60:g} minutes in the future")
    if age > MAX_AGE_S:
        raise ValueError(f"is more than {MAX_AGE_S / 86400:g} days old")
    return at


At = Annotated[
    AwareDatetime,
    AfterValidator(_in_window),
    Field(
        description=(
            "When it happened, RFC 3339 with a UTC offset; at most 5 minutes ahead, 30 days back"
        )
    ),
]
_TYPE_DESCRIPTION = "What the record declares (a type alerting/data/records.yaml names)"
_REF_DESCRIPTION = "The bag's or batch's code: a follow-up record with the same code clears it"


class RecordIn(BaseModel):
    """One record, posted by staff."""

    model_config = ConfigDict(extra="forbid")

    site_id: Identifier
    record_type: RecordType = Field(description=_TYPE_DESCRIPTION)
    at: At
    ref: Ref | None = Field(default=None, description=_REF_DESCRIPTION)


class RecordBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[RecordIn] = Field(min_length=1, max_length=MAX_BATCH)


class DeviceRecordIn(BaseModel):
    """One record, posted by a device: for its own site (``site_id`` may be left out)."""

    model_config = ConfigDict(extra="forbid")

    site_id: Identifier | None = Field(default=None, description="The device's site, if given")
    record_type: RecordType = Field(description=_TYPE_DESCRIPTION)
    at: At
    ref: Ref | None = Field(default=None, description=_REF_DESCRIPTION)


class DeviceRecordBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[DeviceRecordIn] = Field(min_length=1, max_length=MAX_BATCH)


class RecordOut(BaseModel):
    id: int
    site_id: str
    record_type: str
    at: datetime
    ref: str | None = Field(description="None: the record carries no code")
    source: Literal["user", "device"]
    posted_by: str = Field(description="The user's name or the device's id")
    received_at: datetime

    @classmethod
    def of(cls, row: RecordEventRow) -> RecordOut:
        return cls(
            id=row.id,
            site_id=row.site_id,
            record_type=row.record_type,
            at=row.at,
            ref=row.ref or None,
            source=row.source,  # type: ignore[arg-type]
            posted_by=row.posted_by,
            received_at=row.received_at,
        )


class RecordBatchOut(BaseModel):
    created: int = Field(description="New records stored (and read by the alert engine)")
    existing: int = Field(description="Records that were already stored (retries): unchanged")
    records: list[RecordOut] = Field(description="Every record of the batch, in its order")


_ONE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RecordOut, "description": "Already stored (a retry): the stored record"},
}
_BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RecordBatchOut, "description": "Every record was already stored"},
}

# ---- storing -------------------------------------------------------------------------------------


def _may_post(principal: Principal, site: Site) -> bool:
    """Writers in scope, and tenant users for their own tenant's sites (the one exception)."""
    if principal.role == TENANT_USER:
        return principal.can_read_site(site)
    return principal.can_write_site(site)


def _store(
    session: Session, site_id: str, item: RecordIn | DeviceRecordIn, source: str, posted_by: str
) -> tuple[RecordEventRow, bool]:
    """The row for this record: the one already stored, or a new one (flushed); True if new."""
    at, ref = item.at.astimezone(UTC), item.ref or ""
    existing = session.execute(
        select(RecordEventRow).where(
            RecordEventRow.site_id == site_id,
            RecordEventRow.record_type == item.record_type,
            RecordEventRow.at == at,
            RecordEventRow.ref == ref,
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing, False
    row = RecordEventRow(
        site_id=site_id,
        record_type=item.record_type,
        at=at,
        ref=ref,
        source=source,
        posted_by=posted_by[:64],
        received_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, True


def _save(
    session: Session,
    items: Sequence[tuple[str, RecordIn | DeviceRecordIn]],
    source: str,
    posted_by: str,
    principal: Principal | None,
) -> list[tuple[RecordEventRow, bool]]:
    """Store (site, record) pairs in one transaction, auditing staff posts; a concurrent post of
    the same record (the unique constraint) makes it retry once, finding that one stored."""
    for attempt in (1, 2):
        try:
            saved = [_store(session, site, item, source, posted_by) for site, item in items]
            if principal is not None:
                for row, created in saved:
                    if created:
                        audit.record(
                            session, principal, "create", "record", row.id, None, _brief(row)
                        )
            session.commit()
            return saved
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _brief(row: RecordEventRow) -> dict[str, Any]:
    return {
        "site_id": row.site_id,
        "record_type": row.record_type,
        "at": row.at,
        "ref": row.ref or None,
        "source": row.source,
    }


def _nudge(ctx: GatewayContext) -> None:
    """New records are committed: an engine in this process reads them now, not at its next poll
    (it reads them from the registry, as an engine elsewhere does; nothing is handed over)."""
    engine = ctx.alerts
    if engine is None:
        return
    try:
        engine.poll_records()
    except Exception:  # the records are stored and the engine's poll finds them anyway
        log.exception("records: cannot ask the alert engine to read the new records now")


def _answer(
    ctx: GatewayContext, response: Response, saved: list[tuple[RecordEventRow, bool]]
) -> list[tuple[RecordEventRow, bool]]:
    if any(created for _, created in saved):
        _nudge(ctx)
    response.status_code = 201 if any(created for _, created in saved) else 200
    return saved


def _batch(saved: list[tuple[RecordEventRow, bool]]) -> RecordBatchOut:
    created = sum(1 for _, new in saved if new)
    return RecordBatchOut(
        created=created,
        existing=len(saved) - created,
        records=[RecordOut.of(row) for row, _ in saved],
    )


# ---- staff ---------------------------------------------------------------------------------------


def _staff_sites(
    session: Session, principal: Principal, items: Sequence[RecordIn], prefix: str
) -> list[tuple[str, RecordIn]]:
    """Check every record's site for this caller; all problems at once (422/403)."""
    problems: list[dict[str, Any]] = []
    refused: list[str] = []
    sites: dict[str, Site | None] = {}
    for i, item in enumerate(items):
        if item.site_id not in sites:
            try:
                sites[item.site_id] = get_site(session, principal, item.site_id)
            except ApiError:
                sites[item.site_id] = None
        site = sites[item.site_id]
        field = f"{prefix}site_id"
        if site is None:
            problems.append(problem(field.format(i), f"site {item.site_id!r} does not exist"))
        elif not _may_post(principal, site):
            refused.append(item.site_id)
    if problems:
        raise invalid(problems)
    if refused:
        raise forbidden(f"a {principal.role} may not post records for site {refused[0]!r}")
    return [(item.site_id, item) for item in items]


@router.post(
    "/records",
    response_model=RecordOut,
    status_code=201,
    responses={**_ONE_RESPONSES, **error_responses(403, 503)},
    summary="Post a record (staff in scope; tenant users for their own sites); idempotent",
)
def post_record(
    body: RecordIn,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    response: Response,
) -> Any:
    items = _staff_sites(session, principal, [body], "")
    saved = _save(session, items, "user", principal.username, principal)
    return RecordOut.of(_answer(ctx, response, saved)[0][0])


@router.post(
    "/records/batch",
    response_model=RecordBatchOut,
    status_code=201,
    responses={**_BATCH_RESPONSES, **error_responses(403, 503)},
    summary=f"Post up to {MAX_BATCH} records: all stored, or none (every problem listed)",
)
def post_records(
    body: RecordBatchIn,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    response: Response,
) -> Any:
    items = _staff_sites(session, principal, body.records, "records.{}.")
    saved = _save(session, items, "user", principal.username, principal)
    return _batch(_answer(ctx, response, saved))


# ---- devices -------------------------------------------------------------------------------------


def _device(request: Request, session: Session) -> Device:
    """The device whose API key authorises this request (as ``POST /ingest/v1/readings``)."""
    ctx: GatewayContext = request.app.state.ctx
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    device_id = None
    if scheme.lower() == "bearer" and presented.strip():
        device_id = ctx.device_keys.device_for(presented.strip(), "api_key")
    device = session.get(Device, device_id) if device_id is not None else None
    if device is None:
        raise unauthorized("a valid device API key is required")
    if device.status != "active":
        raise forbidden(f"device {device.id!r} is {device.status}")
    return device


def _device_sites(
    device: Device, items: Sequence[DeviceRecordIn], prefix: str
) -> list[tuple[str, DeviceRecordIn]]:
    others = [
        problem(prefix.format(i) + "site_id", f"not the site of device {device.id!r}")
        for i, item in enumerate(items)
        if item.site_id is not None and item.site_id != device.site_id
    ]
    if others:
        raise ApiError(
            403,
            "forbidden",
            f"device {device.id!r} may post records for its own site only",
            others,
        )
    return [(device.site_id, item) for item in items]


@router.post(
    "/ingest/v1/records",
    response_model=RecordOut,
    status_code=201,
    responses={**_ONE_RESPONSES, **error_responses(403, 503)},
    summary="Post a record as the authenticated device (API key), for its site; idempotent",
    tags=["ingest"],
)
def ingest_record(
    body: DeviceRecordIn, request: Request, session: SessionDep, ctx: CtxDep, response: Response
) -> Any:
    device = _device(request, session)
    items = _device_sites(device, [body], "")
    saved = _save(session, items, "device", device.id, None)
    return RecordOut.of(_answer(ctx, response, saved)[0][0])


@router.post(
    "/ingest/v1/records/batch",
    response_model=RecordBatchOut,
    status_code=201,
    responses={**_BATCH_RESPONSES, **error_responses(403, 503)},
    summary=f"Post up to {MAX_BATCH} records as the authenticated device: all or none",
    tags=["ingest"],
)
def ingest_records(
    body: DeviceRecordBatchIn,
    request: Request,
    session: SessionDep,
    ctx: CtxDep,
    response: Response,
) -> Any:
    device = _device(request, session)
    items = _device_sites(device, body.records, "records.{}.")
    saved = _save(session, items, "device", device.id, None)
    return _batch(_answer(ctx, response, saved))


# ---- reading -------------------------------------------------------------------------------------


@router.get(
    "/records",
    response_model=Page[RecordOut],
    summary="List the records of the sites in your scope, newest first",
)
def list_records(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageDep,
    site: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    tenant: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    region: Annotated[
        str | None, Query(pattern=REGION_PREFIX_PATTERN, description="Region code prefix")
    ] = None,
    record_type: RecordType | None = None,
    ref: Annotated[
        str | None, Query(min_length=1, max_length=64, pattern=PRINTABLE_PATTERN)
    ] = None,
    source: Literal["user", "device"] | None = None,
    since: Annotated[datetime | None, Query(description="at ≥ since (with an offset)")] = None,
    until: Annotated[datetime | None, Query(description="at < until (with an offset)")] = None,
) -> Any:
    since, until = query_time("since", since), query_time("until", until)
    stmt = select(RecordEventRow).join(Site, Site.id == RecordEventRow.site_id)
    clause = site_clause(principal)
    if clause is not None:
        stmt = stmt.where(clause)
    if site is not None:
        stmt = stmt.where(RecordEventRow.site_id == site)
    if tenant is not None:
        stmt = stmt.where(Site.tenant_id == tenant)
    if region is not None:
        stmt = stmt.where(Site.region_code.startswith(region, autoescape=True))
    if record_type is not None:
        stmt = stmt.where(RecordEventRow.record_type == record_type)
    if ref is not None:
        stmt = stmt.where(RecordEventRow.ref == ref.strip())
    if source is not None:
        stmt = stmt.where(RecordEventRow.source == source)
    if since is not None:
        stmt = stmt.where(RecordEventRow.at >= since)
    if until is not None:
        stmt = stmt.where(RecordEventRow.at < until)
    return paginate(
        session, stmt, page, RecordOut.of, [RecordEventRow.at.desc(), RecordEventRow.id.desc()]
    )

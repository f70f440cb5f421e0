"""Bulk import of tenants, sites and devices from CSV, YAML or JSON: all rows or none.

Every row goes through the same schemas, scope rules and checks as the single-object routes,
because it is applied with the same functions, inside one transaction and one savepoint per row:
a row that fails is rolled back to its savepoint and reported, the others go on, so a later row
may refer to a tenant or site created by an earlier row of the same file. When every row has been
tried, the transaction is committed only if nothing failed and this is not a dry run; otherwise
it is rolled back and the report lists every problem, row by row. Credentials of the devices an
import creates are issued only when it is applied (and shown once, in the response).

Rows: CSV line numbers (the header is line 1), or 1-based positions in YAML/JSON lists.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.api import CtxDep, ProfilesDep, SessionDep, commit
from gateway.api.devices import create_device, issue_credentials, update_device
from gateway.api.sites import create_site, update_site
from gateway.api.tenants import create_tenant, update_tenant
from gateway.errors import ApiError, ErrorResponse, error_body, error_responses
from gateway.registry.database import bump_revision
from gateway.registry.models import Device, RegistryState, Site, Tenant
from gateway.schemas import (
    DeviceCreate,
    ImportProblem,
    ImportReport,
    IssuedDeviceCredential,
    ResourceSummary,
    SiteCreate,
    TenantCreate,
)
from gateway.security import (
    CurrentPrincipal,
    Principal,
    get_device,
    get_site,
    get_tenant,
    require_writer,
)

router = APIRouter(tags=["import"])

MAX_ROWS = 10_000
RESOURCES = ("tenants", "sites", "devices")  # dependency order
CREATE_MODELS: dict[str, type[BaseModel]] = {
    "tenants": TenantCreate,
    "sites": SiteCreate,
    "devices": DeviceCreate,
}
ROW_MODELS = {"tenants": Tenant, "sites": Site, "devices": Device}
NESTED = {"sites": "attributes", "devices": "connection"}  # dict-valued column per resource
# YAML reads 330102 as a number; these are strings everywhere (codes never start with 0).
STRING_FIELDS = frozenset(
    {"id", "tenant_id", "site_id", "region_code", "name", "address", "contact", "profile", "mn"}
)
CSV_TYPES = ("text/csv", "application/csv")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
JSON_TYPES = ("application/json",)

Row = tuple[int, Any]  # (row number, raw row)


class _Report:
    def __init__(self) -> None:
        self.problems: list[ImportProblem] = []
        self.summary = {r: ResourceSummary() for r in RESOURCES}

    def add(self, resource: str, row: int, ident: Any, field: str | None, message: str) -> None:
        self.problems.append(
            ImportProblem(
                resource=resource,
                row=row,
                # Only scalars: str() of a YAML alias bomb would expand it.
                id=str(ident)[:64] if isinstance(ident, str | int) else None,
                field=field,
                message=message,
            )
        )


def _bad_request(status: int, message: str) -> ApiError:
    codes = {413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_failed"}
    return ApiError(status, codes[status], message)


# ---- parsing -----------------------------------------------------------------------------------


def parse_csv(text: str, resource: str, report: _Report) -> list[Row]:
    """Rows of a CSV file as dicts; ``connection.host`` columns nest, empty cells are absent."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise _bad_request(422, f"CSV line 1: {exc}") from None
    names = [h.strip() for h in header]
    fields = set(CREATE_MODELS[resource].model_fields)
    nested = NESTED.get(resource)
    for name in names:
        head, _, sub = name.partition(".")
        if not name or (sub and head != nested) or (not sub and name not in fields):
            allowed = sorted(fields | ({f"{nested}.<key>"} if nested else set()))
            report.add(
                resource,
                1,
                None,
                name or None,
                f"unknown column {name!r} for {resource}; allowed: {', '.join(allowed)}",
            )
    if len(set(names)) != len(names):
        report.add(resource, 1, None, None, "a column appears twice in the header")
    if report.problems:
        return []
    rows: list[Row] = []
    line = reader.line_num
    try:
        for cells in reader:
            start, line = line + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(rows) >= MAX_ROWS:
                raise _bad_request(413, f"more than {MAX_ROWS} rows in one import")
            if len(cells) > len(names):
                report.add(
                    resource,
                    start,
                    cells[0] if cells else None,
                    None,
                    f"{len(cells)} cells for {len(names)} columns",
                )
                continue
            rows.append((start, _csv_row(names, cells, nested)))
    except csv.Error as exc:
        raise _bad_request(422, f"CSV line {reader.line_num}: {exc}") from None
    return rows


def _csv_row(names: list[str], cells: list[str], nested: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, cell in zip(names, cells, strict=False):
        value = cell.strip()
        if not value:
            continue
        head, _, sub = name.partition(".")
        if sub:
            inner = row.setdefault(head, {})
            if isinstance(inner, dict):
                inner[sub] = _scalar(value) if head == "attributes" else value
        elif name == nested:
            try:
                row[name] = json.loads(value)
            except ValueError:
                row[name] = value  # reported by validation: not an object
        else:
            row[name] = value
    return row


def _scalar(value: str) -> Any:
    """A typed attribute cell: true/false/numbers/null as JSON, anything else as text."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, bool | int | float | str) or parsed is None else value


def parse_document(doc: Any, resource: str | None) -> dict[str, list[Row]]:
    """``{tenants: [...], sites: [...], devices: [...]}`` (or a list with ``?resource=``)."""
    if isinstance(doc, list) and resource is not None:
        doc = {resource: doc}
    if not isinstance(doc, dict):
        raise _bad_request(422, "expected a mapping with tenants, sites and/or devices lists")
    unknown = [str(k) for k in doc if k not in RESOURCES]
    if unknown:
        raise _bad_request(
            422, f"unknown section(s) {', '.join(unknown)}; expected {', '.join(RESOURCES)}"
        )
    out: dict[str, list[Row]] = {}
    total = 0
    for name in RESOURCES:
        items = doc.get(name) or []
        if not isinstance(items, list):
            raise _bad_request(422, f"{name} must be a list")
        total += len(items)
        if total > MAX_ROWS:
            raise _bad_request(413, f"more than {MAX_ROWS} rows in one import")
        out[name] = [(i, _stringify(item)) for i, item in enumerate(items, start=1)]
    return out


def _stringify(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    out = {}
    for key, value in item.items():
        if isinstance(value, dict) and key == "connection":
            value = _stringify(value)
        elif key in STRING_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        out[key] = value
    return out


def parse_body(
    body: bytes, content_type: str, resource: str | None, report: _Report
) -> dict[str, list[Row]]:
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad_request(422, "the body is not UTF-8 text") from None
    if media in CSV_TYPES:
        if resource is None:
            raise _bad_request(422, "a CSV import needs ?resource=tenants|sites|devices")
        return {resource: parse_csv(text, resource, report)}
    if media in YAML_TYPES or media in JSON_TYPES:
        try:
            doc = json.loads(text) if media in JSON_TYPES else yaml.safe_load(text)
        except (ValueError, RecursionError, yaml.YAMLError) as exc:
            raise _bad_request(422, f"cannot parse the body: {str(exc)[:300]}") from None
        return parse_document(doc, resource)
    raise _bad_request(
        415, f"content type {media or 'none'!r}: send text/csv, application/yaml or JSON"
    )


# ---- applying ----------------------------------------------------------------------------------


class _Importer:
    def __init__(
        self,
        session: Session,
        principal: Principal,
        profiles: Any,
        mode: str,
        report: _Report,
    ) -> None:
        self.session = session
        self.principal = principal
        self.profiles = profiles
        self.mode = mode
        self.report = report
        self.revision: int | None = None
        self.created_devices: list[Device] = []
        self.devices_touched = False
        self.existing: dict[str, set[str]] = {}

    def run(self, rows: dict[str, list[Row]]) -> None:
        # SQLite: a write first makes the driver open the transaction, so that releasing a
        # savepoint never commits it. The revision is taken once, outside any savepoint.
        if rows.get("devices") or rows.get("sites"):
            self.revision = bump_revision(self.session)
        else:
            self.session.execute(
                update(RegistryState)
                .where(RegistryState.id == 1)
                .values(revision=RegistryState.revision)
            )
        for resource in RESOURCES:
            self.existing[resource] = self._existing(resource, rows.get(resource, []))
            seen: dict[str, int] = {}
            for number, raw in rows.get(resource, []):
                self.summary(resource).rows += 1
                if not self._row(resource, number, raw, seen):
                    self.summary(resource).failed += 1

    def _existing(self, resource: str, rows: list[Row]) -> set[str]:
        """Which ids of these rows exist already: one query per 500 rows, not one per row."""
        model = ROW_MODELS[resource]
        wanted = [r["id"] for _, r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)]
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.update(
                self.session.execute(select(model.id).where(model.id.in_(chunk))).scalars()
            )
        return found

    def summary(self, resource: str) -> ResourceSummary:
        return self.report.summary[resource]

    def _row(self, resource: str, number: int, raw: Any, seen: dict[str, int]) -> bool:
        ident = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(raw, dict):
            self.report.add(resource, number, None, None, "a row must be a mapping of fields")
            return False
        try:
            data = CREATE_MODELS[resource].model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or None
                message = str(err["msg"]).removeprefix("Value error, ")
                self.report.add(resource, number, ident, field, message)
            return False
        ident = data.id  # type: ignore[attr-defined]
        if ident in seen:
            message = f"duplicate id: row {seen[ident]} has it too"
            self.report.add(resource, number, ident, "id", message)
            return False
        seen[ident] = number
        exists = ident in self.existing.get(resource, ())
        if exists and self.mode == "create":
            self.report.add(
                resource,
                number,
                ident,
                "id",
                "already exists (use mode=upsert to update existing rows)",
            )
            return False
        try:
            with self.session.begin_nested():
                if exists:
                    self._update(resource, ident, data)
                    self.summary(resource).updated += 1
                else:
                    self._create(resource, data)
                    self.summary(resource).created += 1
        except ApiError as err:
            if err.status == 404 and exists:
                self.report.add(resource, number, ident, "id", "this id is already in use")
            elif err.details:
                for d in err.details:
                    self.report.add(resource, number, ident, d.get("field"), str(d["message"]))
            else:
                self.report.add(resource, number, ident, None, err.message)
            return False
        except IntegrityError:
            self.report.add(resource, number, ident, None, "conflicts with existing data")
            return False
        return True

    def _create(self, resource: str, data: Any) -> None:
        if resource == "tenants":
            create_tenant(self.session, self.principal, data)
        elif resource == "sites":
            create_site(self.session, self.principal, data)
        else:
            device = create_device(
                self.session, self.principal, data, self.profiles, revision=self.revision
            )
            self.created_devices.append(device)
            self.devices_touched = True

    def _update(self, resource: str, ident: str, data: BaseModel) -> None:
        changes = data.model_dump(include=data.model_fields_set - {"id"})
        session, principal = self.session, self.principal
        if resource == "tenants":
            tenant = get_tenant(session, principal, ident, write=True)
            update_tenant(session, principal, tenant, changes)
        elif resource == "sites":
            site = get_site(session, principal, ident, write=True)
            if update_site(session, principal, site, changes, revision=self.revision):
                self.devices_touched = True
        else:
            device = get_device(session, principal, ident, write=True)
            update_device(
                session, principal, device, changes, self.profiles, revision=self.revision
            )
            self.devices_touched = True


async def read_body(request: Request) -> bytes:
    """The raw body (the size limit middleware has already bounded it)."""
    return await request.body()


def _schema_ref(name: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "tenants": _schema_ref("TenantCreate"),
                        "sites": _schema_ref("SiteCreate"),
                        "devices": _schema_ref("DeviceCreate"),
                    },
                }
            },
        },
    }
}


@router.post(
    "/import",
    response_model=ImportReport,
    responses={
        **error_responses(401, 403, 413, 415),
        422: {
            "model": ErrorResponse,
            "description": (
                "Not applied: the error body, with one detail per problem row "
                "({resource, row, id, field, message}); or a body that cannot be parsed"
            ),
        },
    },
    openapi_extra=_OPENAPI_BODY,
    summary="Bulk import (CSV, YAML, JSON): every problem reported row by row; all rows or none",
)
def post_import(
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: CtxDep,
    profiles: ProfilesDep,
    body: Annotated[bytes, Depends(read_body)],
    content_type: Annotated[str, Header()] = "",
    resource: Annotated[
        Literal["tenants", "sites", "devices"] | None,
        Query(description="Required for CSV (one resource per file)"),
    ] = None,
    dry_run: Annotated[bool, Query(description="Validate only; change nothing")] = False,
    mode: Annotated[
        Literal["create", "upsert"],
        Query(description="upsert: update rows whose id exists (each row is a full record)"),
    ] = "create",
) -> Any:
    require_writer(principal)
    report = _Report()
    rows = parse_body(body, content_type, resource, report)
    importer = _Importer(session, principal, profiles, mode, report)
    if not report.problems:
        importer.run(rows)
    ok = not report.problems
    issued: list[IssuedDeviceCredential] = []
    if not ok or dry_run:
        session.rollback()
    else:
        for device in importer.created_devices:
            for secret in issue_credentials(session, principal, device):
                issued.append(
                    IssuedDeviceCredential(
                        device=device.id,
                        kind=secret.kind,
                        username=secret.username,
                        secret=secret.secret,
                        key_id=secret.key_id,
                    )
                )
        commit(session)
        if importer.devices_touched:
            ctx.devices_changed()
    result = ImportReport(
        ok=ok,
        dry_run=dry_run,
        mode=mode,
        applied=ok and not dry_run,
        problems=report.problems,
        summary=report.summary,
        credentials=issued,
    )
    if not ok and not dry_run:
        count = len(report.problems)
        body_ = error_body(
            "validation_failed",
            f"{count} problem(s) in the import; nothing was changed",
            [p.model_dump() for p in report.problems],
        )
        return JSONResponse(body_, status_code=422)
    return result

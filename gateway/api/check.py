"""``GET /devices/{id}/check``: the onboarding check (gateway.onboarding_check) over the API.

Scoped like every device read: a device outside the caller's scope is "not found". An admin may
also check an id that is not registered, to see what was refused under it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from gateway.errors import ApiError, error_responses
from gateway.onboarding_check import check_device
from gateway.schemas import IDENTIFIER_PATTERN
from gateway.security import CurrentPrincipal, get_device

router = APIRouter(prefix="/devices", tags=["devices"])
DeviceId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]  # anchored: the whole id


def _visible(request: Request, principal: Any, device_id: str) -> None:
    ctx = request.app.state.ctx
    with ctx.registry.session() as session:
        try:
            get_device(session, principal, device_id)
        except ApiError as exc:
            if not (exc.status == 404 and principal.is_admin):
                raise


@router.get(
    "/{device_id}/check",
    responses=error_responses(401, 404, 422),
    summary="Is the device registered, seen and recent — and if not, why (onboarding check)",
)
async def device_check(
    request: Request,
    device_id: DeviceId,
    principal: CurrentPrincipal,
    probe: Annotated[bool, Query(description="Modbus: read its registers once")] = False,
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    await asyncio.to_thread(_visible, request, principal, device_id)
    report = await check_device(ctx.registry, ctx.influx, ctx.influx_database, device_id)
    if probe and report.registered and (report.protocol or "").startswith("modbus"):
        from gateway.modbus_targets import probe_device

        report.probe = await probe_device(ctx.registry, device_id)
    return report.to_dict()

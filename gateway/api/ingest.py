"""HTTP ingest: a device posts one reading or a batch, authenticated by its API key.

Same contract as MQTT (docs/protocols.md): the JSON reading document, the same validation and
rejection reasons, and the answer only once the accepted readings are durable in the spool —
``200`` then means "stored or will be", whatever happens to InfluxDB afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from collectors.spool import SpoolFull
from gateway.errors import error_responses
from protocols.json_readings import decode_readings
from protocols.reading import Rejection

PROTOCOL = "http"
ACK_TIMEOUT_S = 30.0

router = APIRouter(prefix="/ingest/v1", tags=["ingest"])


class RejectedReading(BaseModel):
    index: int
    reason: str
    detail: str


class IngestResult(BaseModel):
    accepted: int
    rejected: list[RejectedReading]


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": []}},
        status_code=status,
        headers=headers or None,
    )


@router.post(
    "/readings",
    response_model=IngestResult,
    responses=error_responses(401, 413, 422, 503),
    summary="Post one reading or {'readings': [...]} as the authenticated device",
)
async def post_readings(request: Request) -> Any:
    ctx = request.app.state.ctx
    keys = ctx.device_keys
    ingestor = ctx.ingestor
    auth = request.headers.get("authorization", "")
    scheme, _, presented = auth.partition(" ")
    device_id = None
    if scheme.lower() == "bearer" and presented:
        device_id = await asyncio.to_thread(keys.device_for, presented.strip(), "api_key")
    if device_id is None:
        return _error(
            401,
            "unauthorized",
            "a valid device API key is required",
            **{"WWW-Authenticate": "Bearer"},
        )
    if ingestor is None:
        return _error(
            503, "unavailable", "this gateway does not ingest readings", **{"Retry-After": "30"}
        )
    body = await request.body()
    try:
        info = ingestor.identify(PROTOCOL, device_id)
        raw = decode_readings(body)
    except Rejection as rejection:
        ingestor.count_rejection(PROTOCOL, device_id, rejection)
        return JSONResponse(
            {
                "error": {
                    "code": rejection.reason.value,
                    "message": rejection.detail,
                    "details": [],
                }
            },
            status_code=422,
        )
    try:
        outcome = ingestor.submit(PROTOCOL, info, raw)
    except SpoolFull:
        return _error(
            503, "spool_full", "the platform is saturated; retry later", **{"Retry-After": "5"}
        )
    rejected = [
        RejectedReading(index=i, reason=r.reason.value, detail=r.detail)
        for i, r in outcome.rejected
    ]
    if outcome.durable is None:
        return JSONResponse(
            {
                "error": {
                    "code": "all_rejected",
                    "message": f"none of the {len(raw)} reading(s) could be accepted",
                    "details": [r.model_dump() for r in rejected],
                }
            },
            status_code=422,
        )
    await asyncio.wait_for(asyncio.shield(outcome.durable), ACK_TIMEOUT_S)
    return IngestResult(accepted=outcome.accepted, rejected=rejected)

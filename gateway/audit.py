"""The audit trail: who changed what, when, with the row before and after.

An entry is written in the same transaction as the change it describes, so the trail can never
claim a change that was rolled back nor miss one that was committed. Snapshots are plain JSON
of the row's columns; hashes of passwords and secrets are left out (they would let anyone who
reads the trail attack them offline), and so is anything else named like a secret.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from gateway.registry.models import AuditEntry, utcnow

# Columns never copied into the trail.
SECRET_COLUMNS = frozenset({"password_hash", "secret_hash", "password", "secret", "token"})


class _Named(Protocol):
    username: str


def snapshot(obj: Any) -> dict[str, Any]:
    """The row's column values as JSON-safe data, without secrets or their hashes."""
    mapper = inspect(obj).mapper
    out: dict[str, Any] = {}
    for attr in mapper.column_attrs:
        if attr.key in SECRET_COLUMNS:
            continue
        out[attr.key] = _jsonable(getattr(obj, attr.key))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {
            str(k): _jsonable(v) for k, v in value.items() if str(k).lower() not in SECRET_COLUMNS
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def record(
    session: Session,
    actor: str | _Named,
    action: str,
    entity: str,
    entity_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    detail: str = "",
) -> AuditEntry:
    """Add an entry to the caller's transaction (committed or rolled back with the change)."""
    name = actor if isinstance(actor, str) else actor.username
    entry = AuditEntry(
        at=utcnow(),
        actor=name[:64],
        action=action[:32],
        entity=entity[:32],
        entity_id=str(entity_id)[:128],
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        detail=detail,
    )
    session.add(entry)
    return entry

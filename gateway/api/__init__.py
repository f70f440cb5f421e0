"""What every router shares: the context, a session per request, the profiles, pagination.

Routes are plain ``def`` functions: SQLAlchemy is synchronous, and FastAPI runs them (and these
dependencies) in its thread pool. A route commits its own session, explicitly, once its change
and the change's audit entry are in; the session is closed (rolled back if uncommitted) when the
request ends. This module imports no router, so routers and :mod:`gateway.security` can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.context import GatewayContext
from gateway.errors import conflict, invalid, problem

T = TypeVar("T")
MAX_OFFSET = 2**31 - 1  # SQLite integers overflow far above; nobody pages that far


def get_ctx(request: Request) -> GatewayContext:
    return request.app.state.ctx


def get_session(ctx: Annotated[GatewayContext, Depends(get_ctx)]) -> Iterator[Session]:
    """One session per request (shared by the principal check and the route)."""
    with ctx.registry.session() as session:
        yield session


def get_profiles(request: Request) -> Any:
    """The device profile set (``protocols.profiles.ProfileSet``) the app was built with."""
    return request.app.state.profiles


CtxDep = Annotated[GatewayContext, Depends(get_ctx)]
SessionDep = Annotated[Session, Depends(get_session)]
ProfilesDep = Annotated[Any, Depends(get_profiles)]


class Pagination:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip")] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset


PageDep = Annotated[Pagination, Depends()]


def paginate(
    session: Session,
    stmt: Select[Any],
    page: Pagination,
    convert: Callable[[Any], T],
    order_by: Sequence[Any] = (),
) -> dict[str, Any]:
    """``{"items", "total", "limit", "offset"}`` for a select of ORM rows (one entity)."""
    total = session.execute(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = session.execute(stmt.order_by(*order_by).limit(page.limit).offset(page.offset))
    return {
        "items": [convert(row) for row in rows.scalars().unique().all()],
        "total": int(total.scalar_one()),
        "limit": page.limit,
        "offset": page.offset,
    }


def commit(session: Session) -> None:
    """Commit; a constraint violation (a race with another writer) is a 409, not a 500."""
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise conflict("the change conflicts with a concurrent change; retry") from exc


_CST = timezone(timedelta(hours=8), "Asia/Shanghai")  # where day/week/month counts are cut


def query_time(name: str, value: datetime | None) -> datetime | None:
    """A time filter from the query string, in UTC: it must carry an offset, and be in range in
    UTC and in China Standard Time (the alert counts bucket by CST days); 422 otherwise."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise invalid(
            [problem(name, "needs a UTC offset, e.g. 2025-01-01T00:00:00+08:00", location="query")]
        )
    try:
        value.astimezone(_CST)
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise invalid([problem(name, "out of range", location="query")]) from None

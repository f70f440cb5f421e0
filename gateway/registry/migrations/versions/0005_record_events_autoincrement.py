"""record_events: ids never handed out twice on SQLite (the alert engine's feed is by id)

The alert engine reads new records from ``record_events`` by id (``id >`` the last it has seen,
alerting/engine.py, "records feed"). SQLite gives a new row one more than the largest id *still
in the table*, so after the newest records were deleted (their site deleted) it would hand their
ids out again, and the engine would never see those rows. ``AUTOINCREMENT`` makes SQLite keep
the highest id ever used (``sqlite_sequence``). On SQLite the table is copied (batch mode, the
same columns, indexes and constraints); nothing references it, so dropping the old copy cascades
nothing. PostgreSQL's sequence never reuses an id: nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "record_events",
        recreate="always",
        table_kwargs={"sqlite_autoincrement": autoincrement},
    ):
        pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)

"""The Alembic migrations and the models describe the same schema, both ways."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from gateway.registry.database import alembic_config, sqlite_url
from gateway.registry.models import Base


def test_upgrade_to_head_matches_the_models_and_downgrade_empties(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "m.db")
    config = alembic_config(url)
    command.upgrade(config, "head")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            head = ScriptDirectory.from_config(config).get_current_head()
            assert context.get_current_revision() == head

        command.downgrade(config, "base")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
            assert MigrationContext.configure(connection).get_current_revision() is None

        command.upgrade(config, "head")  # and back up again
        with engine.connect() as connection:
            assert set(Base.metadata.tables) <= set(inspect(connection).get_table_names())
    finally:
        engine.dispose()

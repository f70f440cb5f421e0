"""The registry database: an engine per URL, migrations on open, and the device revision counter.

SQLite (a file under the data directory) is the embedded default; PostgreSQL works by URL
(``postgresql+psycopg://...``). Schema changes go through Alembic only, so a registry opened by a
newer release is upgraded in place and an older release refuses a newer schema loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.registry.models import RegistryState

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class RegistryError(RuntimeError):
    """The registry database cannot be used (unreachable, or a schema this release doesn't know)."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class Registry:
    """Owns the engine and hands out sessions; ``open()`` migrates to the latest schema."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            # The gateway answers from a thread pool; SQLite's own locking keeps this safe.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, echo: bool = False) -> Registry:
        registry = cls(url, echo=echo)
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if migrate:
            registry.migrate()
        else:
            registry.check_schema()
        return registry

    def migrate(self) -> None:
        config = alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        with self.session() as session, session.begin():
            if session.get(RegistryState, 1) is None:
                session.add(RegistryState(id=1, revision=0))

    def schema_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def check_schema(self) -> None:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        current = self.schema_revision()
        if current != head:
            raise RegistryError(
                f"registry schema is at {current!r}, this release needs {head!r}: "
                "run 'weijian registry migrate'"
            )

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def revision(self) -> int:
        with self.engine.connect() as connection:
            value = connection.execute(
                select(RegistryState.revision).where(RegistryState.id == 1)
            ).scalar()
        return int(value or 0)

    def close(self) -> None:
        self.engine.dispose()


def bump_revision(session: Session) -> int:
    """The next device revision, inside the caller's transaction (row-locked on PostgreSQL)."""
    session.execute(
        update(RegistryState)
        .where(RegistryState.id == 1)
        .values(revision=RegistryState.revision + 1),
        # No ORM object of this table is ever loaded: skip scanning the session for them.
        execution_options={"synchronize_session": False},
    )
    value = session.execute(select(RegistryState.revision).where(RegistryState.id == 1)).scalar()
    return int(value or 0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (collectors) never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()

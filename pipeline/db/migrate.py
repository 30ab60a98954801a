"""Schema versions, owned by Alembic: upgrade, current and head revisions."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database to `revision`; return (before, after). A no-op when current."""
    before = current_revision(engine)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return before, current_revision(engine)


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Migrate the database down to `revision` ('base' empties it); return (before, after)."""
    before = current_revision(engine)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
    return before, current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def missing_table(error: BaseException) -> str | None:
    """The table a database error says does not exist (SQLite's "no such table", Postgres'
    UndefinedTable), else None: the database was never migrated, or is behind the code."""
    text = str(getattr(error, "orig", None) or error)
    for marker, end in (("no such table: ", None), ('relation "', '"')):
        if marker in text:
            name = text.split(marker, 1)[1]
            return (name.split(end, 1)[0] if end else name.split()[0]).strip()
    return None

"""`python -m pipeline db upgrade|current`: the database's schema revision."""

from __future__ import annotations

from typing import Any

from pipeline.settings import Settings


def upgrade(settings: Settings, revision: str = "head") -> dict[str, Any]:
    """Migrate the database to `revision`; the revisions before and after."""
    from pipeline.db.engine import opened
    from pipeline.db.migrate import upgrade as migrate

    with opened(settings.db_url) as engine:
        before, after = migrate(engine, revision)
    return {"database": settings.masked_db_url, "before": before, "after": after}


def current(settings: Settings) -> dict[str, Any]:
    """The database's revision and the code's head revision."""
    from pipeline.db.engine import opened
    from pipeline.db.migrate import current_revision, head_revision

    with opened(settings.db_url) as engine:
        revision = current_revision(engine)
    return {"database": settings.masked_db_url, "revision": revision, "head": head_revision()}

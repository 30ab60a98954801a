"""Alembic environment: runs on the connection handed over by pipeline.db.migrate.

Run from the `alembic` command line (repo root alembic.ini), it connects to the
configured CRYPTOBOTS_DB_URL instead.
"""

from alembic import context

from pipeline.db.schema import metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit(
        "offline (--sql) migrations are not supported; run `python -m pipeline db upgrade`"
    )

connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from pipeline.db.engine import create_engine
    from pipeline.settings import load_settings

    with create_engine(load_settings().db_url).connect() as conn:
        _run(conn)

"""Storage: SQLAlchemy 2 Core tables, Alembic migrations, bulk upsert.

`pipeline.db.schema` is the contract (table names are used by every stage);
`pipeline.db.engine` connects, `pipeline.db.migrate` owns the schema version,
`pipeline.db.upsert` writes candles in bulk.
"""

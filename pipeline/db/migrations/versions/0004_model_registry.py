"""Model registry: versions, aliases (the champion), promotion events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(80), nullable=False, comment="model name (one per market)"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False, comment="content-addressed ONNX"),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("opset", sa.Integer, nullable=False),
        sa.Column("feature_spec", sa.JSON, nullable=False),
        sa.Column("action_map", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=True),
        sa.Column("training_run", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, comment="candidate or archived"),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("name", "version", name="pk_model_versions"),
        comment="every registered ONNX policy",
    )
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False, comment="bumped by every move"),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("name", "alias", name="pk_model_aliases"),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_model_aliases_name_model_versions",
        ),
        comment="named pointers to versions; 'champion' is what serving trades",
    )
    op.create_table(
        "promotion_events",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False, comment="promote or rollback"),
        sa.Column("who", sa.String(120), nullable=False),
        sa.Column("at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("gates", sa.JSON, nullable=True),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_promotion_events"),
        comment="audit of every alias move",
    )
    op.create_index("ix_promotion_events_name_at", "promotion_events", ["name", "at"])


def downgrade() -> None:
    op.drop_index("ix_promotion_events_name_at", table_name="promotion_events")
    op.drop_table("promotion_events")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")

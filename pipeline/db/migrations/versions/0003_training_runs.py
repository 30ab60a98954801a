"""Training runs: what was trained, on which data, with which settings, and how it did.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("market", sa.String(80), nullable=False, comment="exchange:BASE/QUOTE:tf"),
        sa.Column(
            "status", sa.String(16), nullable=False, comment="running, trained, evaluated or failed"
        ),
        sa.Column("params", sa.JSON, nullable=False, comment="every hyperparameter"),
        sa.Column("feature_spec", sa.JSON, nullable=True, comment="FeatureSpec with statistics"),
        sa.Column("action_map", sa.JSON, nullable=True, comment="action index -> position"),
        sa.Column("train_start", Timestamp, nullable=False),
        sa.Column("train_end", Timestamp, nullable=False, comment="exclusive"),
        sa.Column("valid_start", Timestamp, nullable=False),
        sa.Column("valid_end", Timestamp, nullable=False, comment="exclusive"),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("device", sa.String(160), nullable=True, comment="what TensorFlow trained on"),
        sa.Column("env_steps", sa.BigInteger, nullable=True),
        sa.Column("updates", sa.BigInteger, nullable=True),
        sa.Column("train_seconds", sa.Float, nullable=True),
        sa.Column("metrics", sa.JSON, nullable=True, comment="validation metrics of the policy"),
        sa.Column("baselines", sa.JSON, nullable=True, comment="baseline metrics, same window"),
        sa.Column("artifacts", sa.JSON, nullable=True, comment="name -> URI"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("code_version", sa.String(64), nullable=True),
        sa.Column("orchestrator_run", sa.String(250), nullable=True, comment="Airflow run id"),
        sa.Column("started_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
        comment="one row per trained agent: lineage of every model",
    )
    op.create_index("ix_training_runs_market_started", "training_runs", ["market", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_training_runs_market_started", table_name="training_runs")
    op.drop_table("training_runs")

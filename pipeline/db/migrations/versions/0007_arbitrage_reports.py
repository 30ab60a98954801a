"""Arbitrage reports: the daily study of each triangle and venue group.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "arbitrage_reports",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False, comment="triangle or cross"),
        sa.Column("group_name", sa.String(250), nullable=False, comment="the studied markets"),
        sa.Column("interval_start", Timestamp, nullable=False, comment="first candle open studied"),
        sa.Column("interval_end", Timestamp, nullable=False, comment="exclusive"),
        sa.Column("stats", sa.JSON, nullable=False, comment="the study's result for the group"),
        sa.Column("plot_path", sa.Text, nullable=True, comment="PNG under var_dir"),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_arbitrage_reports"),
        sa.UniqueConstraint(
            "kind", "group_name", "interval_start", name="uq_arbitrage_reports_group_interval"
        ),
        comment="the arbitrage_report DAG's daily study of each triangle and venue group",
    )
    op.create_index("ix_arbitrage_reports_interval_start", "arbitrage_reports", ["interval_start"])


def downgrade() -> None:
    op.drop_index("ix_arbitrage_reports_interval_start", table_name="arbitrage_reports")
    op.drop_table("arbitrage_reports")

"""Quarantine is a set: one row per (market, raw row, reason), so re-runs add nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ohlcv_quarantine") as batch:
        batch.add_column(
            sa.Column(
                "fingerprint",
                sa.String(64),
                nullable=False,
                server_default="",
                comment="sha256 of market, raw row and reason",
            )
        )
        batch.create_unique_constraint("uq_ohlcv_quarantine_fingerprint", ["fingerprint"])


def downgrade() -> None:
    with op.batch_alter_table("ohlcv_quarantine") as batch:
        batch.drop_constraint("uq_ohlcv_quarantine_fingerprint", type_="unique")
        batch.drop_column("fingerprint")

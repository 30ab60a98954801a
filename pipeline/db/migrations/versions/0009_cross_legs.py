"""Cross-exchange trades: each arbitrage leg names the venue it was sent to, and each
trade how long a one-sided fill left it exposed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("arb_opportunities") as batch:
        batch.add_column(
            sa.Column(
                "exposure_seconds",
                sa.Float(precision=53).with_variant(sa.Double(), "postgresql"),
                nullable=True,
                comment="cross trades: legs answered -> exposure closed",
            )
        )
    with op.batch_alter_table("arb_legs") as batch:
        batch.add_column(
            sa.Column(
                "venue",
                sa.String(32),
                nullable=True,
                comment="exchange the leg went to; None: its opportunity's exchange",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("arb_legs") as batch:
        batch.drop_column("venue")
    with op.batch_alter_table("arb_opportunities") as batch:
        batch.drop_column("exposure_seconds")

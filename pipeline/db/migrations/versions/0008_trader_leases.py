"""Trader leases: one active trader per market, fenced.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trader_leases",
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("market", sa.String(80), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False, comment="host:pid:nonce of the trader"),
        sa.Column("token", sa.BigInteger, nullable=False, comment="fencing token, +1 per takeover"),
        sa.Column("expires_at", sa.BigInteger, nullable=False, comment="ms; renewed while alive"),
        sa.Column("acquired_at", sa.BigInteger, nullable=False, comment="ms of the last takeover"),
        sa.PrimaryKeyConstraint("account", "market", name="pk_trader_leases"),
        comment="which trader may trade each market: every order write checks its token",
    )


def downgrade() -> None:
    op.drop_table("trader_leases")

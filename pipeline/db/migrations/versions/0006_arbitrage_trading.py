"""Arbitrage trading: opportunities, legs, fills, and the paper account's balances.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Price = sa.Float(precision=53).with_variant(sa.Double(), "postgresql")
TABLES = ("arb_balances", "arb_fills", "arb_legs", "arb_opportunities")


def upgrade() -> None:
    op.create_table(
        "arb_opportunities",
        sa.Column("id", sa.String(32), nullable=False, comment="sha256 of account, cycle, time"),
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("home", sa.String(16), nullable=False),
        sa.Column(
            "cycle", sa.JSON, nullable=False, comment="[[symbol, side, source, target], ...]"
        ),
        sa.Column("detected_ms", sa.BigInteger, nullable=False, comment="books seen, ms UTC"),
        sa.Column("edge_bps", Price, nullable=False, comment="top-of-book edge after fees"),
        sa.Column("expected_start", Price, nullable=False, comment="home put in"),
        sa.Column("expected_end", Price, nullable=False, comment="home expected back"),
        sa.Column("expected_bps", Price, nullable=False),
        sa.Column(
            "status",
            sa.String(16),
            nullable=False,
            comment="executing, unwinding, done (cycle completed) or unwound (a leg failed)",
        ),
        sa.Column("realized_start", Price, nullable=True, comment="home actually spent"),
        sa.Column("realized_end", Price, nullable=True, comment="home actually received"),
        sa.Column("realized_profit", Price, nullable=True),
        sa.Column("failed_leg", sa.Integer, nullable=True, comment="the leg that failed, if any"),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column(
            "latency_ms", Price, nullable=True, comment="books seen -> first leg handed over"
        ),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_arb_opportunities_account_status", "account", "status"),
        comment="every arbitrage cycle started: expected vs realized",
    )
    op.create_table(
        "arb_legs",
        sa.Column("client_order_id", sa.String(40), nullable=False),
        sa.Column("opportunity_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, comment="0.. the cycle's legs, 10.. unwinds"),
        sa.Column("kind", sa.String(8), nullable=False, comment="cycle or unwind"),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("type", sa.String(8), nullable=False, comment="limit (IOC) or market"),
        sa.Column("source", sa.String(16), nullable=False, comment="currency paid"),
        sa.Column("target", sa.String(16), nullable=False, comment="currency received"),
        sa.Column("amount", Price, nullable=False, comment="base amount asked"),
        sa.Column("price", Price, nullable=True, comment="limit price; None for market"),
        sa.Column(
            "status",
            sa.String(16),
            nullable=False,
            comment="pending (written, maybe sent), filled, partial, expired, rejected",
        ),
        sa.Column("filled", Price, nullable=False, server_default="0"),
        sa.Column("cost", Price, nullable=False, server_default="0", comment="quote amount"),
        sa.Column("fee", Price, nullable=False, server_default="0"),
        sa.Column("fee_currency", sa.String(16), nullable=True),
        sa.Column("spent", Price, nullable=False, server_default="0", comment="source paid"),
        sa.Column("received", Price, nullable=False, server_default="0", comment="target, net"),
        sa.Column("exchange_order_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("client_order_id"),
        sa.UniqueConstraint("opportunity_id", "seq", name="uq_arb_legs_seq"),
        comment="every leg and unwind order, written before it is sent",
    )
    op.create_table(
        "arb_fills",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("client_order_id", sa.String(40), nullable=False),
        sa.Column("trade_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("price", Price, nullable=False),
        sa.Column("amount", Price, nullable=False),
        sa.Column("fee", Price, nullable=False),
        sa.Column("fee_currency", sa.String(16), nullable=True),
        sa.UniqueConstraint("client_order_id", "trade_id", name="uq_arb_fills_trade"),
        comment="executions of arbitrage legs",
    )
    op.create_table(
        "arb_balances",
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Price, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("account", "exchange", "asset"),
        comment="the paper arbitrage account's balances (live balances are the exchange's)",
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)

"""The trader's state: decisions, orders, fills, positions, equity, risk events.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Price = sa.Float(precision=53).with_variant(sa.Double(), "postgresql")
TABLES = ("risk_events", "equity", "positions", "fills", "orders", "decisions")


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("market", sa.String(80), nullable=False),
        sa.Column("candle_ts", sa.BigInteger, nullable=False, comment="open time of the candle"),
        sa.Column("model_name", sa.String(80), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("inputs_sha256", sa.String(64), nullable=False, comment="of the float32 obs"),
        sa.Column("outputs", sa.JSON, nullable=False, comment="q_values or logits"),
        sa.Column("action", sa.Integer, nullable=False),
        sa.Column("target", Price, nullable=False, comment="target position, fraction of equity"),
        sa.Column("price", Price, nullable=False, comment="close of the candle"),
        sa.Column("latency_ms", Price, nullable=False, comment="candle available -> broker"),
        sa.Column("outcome", sa.String(16), nullable=False, comment="order, hold or denied"),
        sa.Column("reason", sa.Text, nullable=True, comment="why denied or held"),
        sa.Column("client_order_id", sa.String(40), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("account", "market", "candle_ts", name="uq_decisions_candle"),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        comment="one decision per market and candle, whatever it led to",
    )

    op.create_table(
        "orders",
        sa.Column("client_order_id", sa.String(40), nullable=False),
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("market", sa.String(80), nullable=False),
        sa.Column("decision_id", sa.BigInteger, nullable=True),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("type", sa.String(12), nullable=False),
        sa.Column("amount", Price, nullable=False),
        sa.Column("price", Price, nullable=True, comment="limit price; None for market orders"),
        sa.Column(
            "status",
            sa.String(16),
            nullable=False,
            comment="pending (persisted, maybe not sent), open, filled, partial, canceled, "
            "rejected, expired",
        ),
        sa.Column("exchange_order_id", sa.String(64), nullable=True),
        sa.Column("filled", Price, nullable=False, server_default="0"),
        sa.Column("average", Price, nullable=True),
        sa.Column("fee", Price, nullable=False, server_default="0"),
        sa.Column("fee_currency", sa.String(16), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("client_order_id", name="pk_orders"),
        sa.Index("ix_orders_account_status", "account", "status"),
        comment="every order, written before it is sent; the client order id is deterministic",
    )

    op.create_table(
        "fills",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("client_order_id", sa.String(40), nullable=False),
        sa.Column("trade_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("price", Price, nullable=False),
        sa.Column("amount", Price, nullable=False),
        sa.Column("fee", Price, nullable=False),
        sa.Column("fee_currency", sa.String(16), nullable=True),
        sa.UniqueConstraint("client_order_id", "trade_id", name="uq_fills_trade"),
        sa.PrimaryKeyConstraint("id", name="pk_fills"),
        comment="executions; a fill is applied to the position exactly once",
    )

    op.create_table(
        "positions",
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("market", sa.String(80), nullable=False),
        sa.Column("base", Price, nullable=False, comment="amount held (negative = short)"),
        sa.Column("quote", Price, nullable=False, comment="cash of this market's sub-account"),
        sa.Column("target", Price, nullable=False, comment="last target, fraction of equity"),
        sa.Column(
            "borrowed", Price, nullable=False, server_default="0", comment="short: base owed"
        ),
        sa.Column(
            "carried_to", sa.BigInteger, nullable=True, comment="borrow fees charged up to (ms)"
        ),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("account", "market", name="pk_positions"),
        comment="the position and cash of each market the trader trades",
    )

    op.create_table(
        "equity",
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("market", sa.String(80), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False, comment="candle open time"),
        sa.Column("equity", Price, nullable=False, comment="quote + base x price"),
        sa.Column("base", Price, nullable=False),
        sa.Column("quote", Price, nullable=False),
        sa.Column("price", Price, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("account", "market", "ts", name="pk_equity"),
        comment="one equity point per market and decision candle",
    )

    op.create_table(
        "risk_events",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("account", sa.String(8), nullable=False),
        sa.Column("market", sa.String(80), nullable=True, comment="None: the whole trader"),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_risk_events"),
        comment="every transition of the risk gate (ACTIVE, REDUCING, HALTED)",
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)

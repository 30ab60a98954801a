"""Market data: ohlcv, ohlcv_quarantine, ohlcv_gaps.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Price = sa.Float(precision=53).with_variant(sa.Double(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _market(nullable: bool) -> list[sa.Column]:
    return [
        sa.Column("exchange", sa.String(32), nullable=nullable),
        sa.Column("symbol", sa.String(32), nullable=nullable),
        sa.Column("timeframe", sa.String(8), nullable=nullable),
    ]


def _prices(nullable: bool) -> list[sa.Column]:
    return [
        sa.Column(name, Price, nullable=nullable)
        for name in ("open", "high", "low", "close", "volume")
    ]


def upgrade() -> None:
    op.create_table(
        "ohlcv",
        *_market(nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False, comment="candle open, ms since epoch UTC"),
        *_prices(nullable=False),
        sa.Column("ingested_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "ts", name="pk_ohlcv"),
        comment="closed candles, validated; one row per market and open time",
    )
    op.create_table(
        "ohlcv_quarantine",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        *_market(nullable=True),
        sa.Column("ts", sa.BigInteger, nullable=True),
        *_prices(nullable=True),
        sa.Column("raw", sa.Text, nullable=True, comment="the row as received, JSON"),
        sa.Column("reason", sa.Text, nullable=False, comment="which check failed and why"),
        sa.Column("run_id", sa.String(250), nullable=True, comment="ingest run that saw it"),
        sa.Column("quarantined_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_ohlcv_quarantine"),
        comment="rows that failed validation, kept with the reason; never read by training",
    )
    op.create_index(
        "ix_ohlcv_quarantine_market_ts",
        "ohlcv_quarantine",
        ["exchange", "symbol", "timeframe", "ts"],
    )
    op.create_table(
        "ohlcv_gaps",
        *_market(nullable=False),
        sa.Column("start_ts", sa.BigInteger, nullable=False, comment="first missing candle open"),
        sa.Column(
            "end_ts", sa.BigInteger, nullable=False, comment="open after the last missing one"
        ),
        sa.Column("missing", sa.Integer, nullable=False, comment="number of absent candles"),
        sa.Column("detected_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint(
            "exchange", "symbol", "timeframe", "start_ts", name="pk_ohlcv_gaps"
        ),
        sa.CheckConstraint("end_ts > start_ts", name="ck_ohlcv_gaps_end_after_start"),
        comment="candles the exchange confirmed absent after re-requests (real gaps)",
    )


def downgrade() -> None:
    op.drop_table("ohlcv_gaps")
    op.drop_index("ix_ohlcv_quarantine_market_ts", table_name="ohlcv_quarantine")
    op.drop_table("ohlcv_quarantine")
    op.drop_table("ohlcv")

"""The arbitrage trader's state: opportunities, legs (written before they are sent),
fills, and the paper account's balances.

Every change a leg makes (its status, its fills, the paper balances) is one
transaction, so a crash leaves each leg either pending (maybe sent: reconciliation asks
the exchange) or settled, never half applied. A leg written with a `fence` (the
trader's lease: holder and token per market) is written only while that lease still
holds, in the same transaction: a trader whose lease was taken over sends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import arb_balances, arb_fills, arb_legs, arb_opportunities
from serving.kernel.execution import Execution, fill_rows
from serving.kernel.lease import require_lease

Fence = tuple[str, str, dict[str, int]]  # (lease account, holder, token per market)

OPEN_STATUSES = ("executing", "unwinding")
SETTLED = ("filled", "partial", "expired", "rejected", "canceled")


def leg_flows(side: str, execution: Execution) -> tuple[float, float]:
    """(spent in the leg's source currency, received in its target currency, net of fee).

    A buy pays quote and receives base; a sell the reverse. The fee is taken from the
    asset it is charged in; a fee in a third asset (BNB) changes neither.
    """
    fee_base = execution.fee if execution.fee_asset == "base" else 0.0
    fee_quote = execution.fee if execution.fee_asset == "quote" else 0.0
    if side == "buy":
        return execution.cost + fee_quote, execution.filled - fee_base
    return execution.filled + fee_base, execution.cost - fee_quote


def open_opportunity(
    engine: Engine,
    opportunity: Mapping[str, Any],
    first_leg: Mapping[str, Any],
    *,
    durable: bool = True,
    fence: Fence | None = None,
    more_legs: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write a detected opportunity and its first leg (pending) in one transaction, with
    `more_legs` sent at the same time (a cross trade's second leg).

    `durable=False` (paper) lets Postgres acknowledge the commit before its WAL reaches
    the disk: a crash of the trader loses nothing, a crash of the database server may
    lose the last fraction of a second of paper cycles. Live writes always wait."""
    with engine.begin() as conn:
        if not durable and conn.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
        if fence is not None:
            require_lease(conn, *fence)
        conn.execute(sa.insert(arb_opportunities), [dict(opportunity)])
        legs = [{**leg, "status": "pending"} for leg in (first_leg, *more_legs)]
        conn.execute(sa.insert(arb_legs), legs)


def add_leg(engine: Engine, leg: Mapping[str, Any], fence: Fence | None = None) -> None:
    """Write a leg before it is sent (status pending); LeaseLost, writing nothing, when
    `fence` no longer holds."""
    with engine.begin() as conn:
        if fence is not None:
            require_lease(conn, *fence)
        conn.execute(sa.insert(arb_legs), [{**leg, "status": "pending"}])


def settle_leg(
    engine: Engine,
    leg: Mapping[str, Any],
    execution: Execution,
    *,
    paper: tuple[str, str] | None = None,
) -> tuple[float, float]:
    """Apply what the exchange (or the paper broker) says about a leg, once.

    Returns (spent, received). With `paper=(account, exchange)` the paper balances move
    by the same amounts in the same transaction.
    """
    spent, received = leg_flows(leg["side"], execution)
    status = execution.status
    if status == "expired" and execution.filled > 0:
        status = "partial"
    with engine.begin() as conn:
        current = conn.execute(
            sa.select(arb_legs.c.status).where(arb_legs.c.client_order_id == leg["client_order_id"])
        ).scalar_one()
        if current != "pending":
            raise RuntimeError(f"leg {leg['client_order_id']} is already {current}")
        conn.execute(
            sa.update(arb_legs)
            .where(arb_legs.c.client_order_id == leg["client_order_id"])
            .values(
                status=status,
                filled=execution.filled,
                cost=execution.cost,
                fee=execution.fee,
                fee_currency=execution.fee_asset,
                spent=spent,
                received=received,
                exchange_order_id=execution.exchange_order_id,
                error=execution.error,
                updated_at=sa.func.now(),
            )
        )
        rows = fill_rows(leg["client_order_id"], execution.fills)
        if rows:
            conn.execute(sa.insert(arb_fills), rows)
        if paper is not None and (spent or received):
            _move_balance(conn, *paper, leg["source"], -spent)
            _move_balance(conn, *paper, leg["target"], received)
    return spent, received


def finish_opportunity(engine: Engine, opportunity_id: str, **values: Any) -> None:
    """Set an opportunity's outcome (status, realized figures, failed leg, reason)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(arb_opportunities)
            .where(arb_opportunities.c.id == opportunity_id)
            .values(**values, updated_at=sa.func.now())
        )


def open_opportunities(engine: Engine, account: str, exchange: str) -> list[dict[str, Any]]:
    """Opportunities still executing or unwinding, oldest first, each with its legs."""
    with engine.connect() as conn:
        opportunities = [
            dict(row._mapping)
            for row in conn.execute(
                sa.select(arb_opportunities)
                .where(
                    arb_opportunities.c.account == account,
                    arb_opportunities.c.exchange == exchange,
                    arb_opportunities.c.status.in_(OPEN_STATUSES),
                )
                .order_by(arb_opportunities.c.detected_ms)
            )
        ]
        for opportunity in opportunities:
            opportunity["legs"] = _legs(conn, opportunity["id"])
    return opportunities


def legs_of(engine: Engine, opportunity_id: str) -> list[dict[str, Any]]:
    """An opportunity's legs and unwinds in the order they were sent."""
    with engine.connect() as conn:
        return _legs(conn, opportunity_id)


def _legs(conn: Connection, opportunity_id: str) -> list[dict[str, Any]]:
    return [
        dict(row._mapping)
        for row in conn.execute(
            sa.select(arb_legs)
            .where(arb_legs.c.opportunity_id == opportunity_id)
            .order_by(arb_legs.c.seq)
        )
    ]


def history(engine: Engine, account: str, exchange: str, since_ms: int) -> list[dict[str, Any]]:
    """Opportunities detected since `since_ms`: detection time, status, realized profit."""
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                sa.select(
                    arb_opportunities.c.detected_ms,
                    arb_opportunities.c.status,
                    arb_opportunities.c.realized_profit,
                ).where(
                    arb_opportunities.c.account == account,
                    arb_opportunities.c.exchange == exchange,
                    arb_opportunities.c.detected_ms >= since_ms,
                )
            )
        ]


def paper_balances(
    engine: Engine, account: str, exchange: str, initial: Mapping[str, float]
) -> dict[str, float]:
    """The paper account's balances, seeded with `initial` the first time."""
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(arb_balances.c.asset, arb_balances.c.amount).where(
                arb_balances.c.account == account, arb_balances.c.exchange == exchange
            )
        ).all()
        if not rows:
            seeded = [
                {"account": account, "exchange": exchange, "asset": asset, "amount": amount}
                for asset, amount in initial.items()
            ]
            if seeded:
                conn.execute(sa.insert(arb_balances), seeded)
            return dict(initial)
    return {asset: float(amount) for asset, amount in rows}


def _move_balance(conn: Connection, account: str, exchange: str, asset: str, delta: float) -> None:
    key = (
        (arb_balances.c.account == account)
        & (arb_balances.c.exchange == exchange)
        & (arb_balances.c.asset == asset)
    )
    changed = conn.execute(
        sa.update(arb_balances)
        .where(key)
        .values(amount=arb_balances.c.amount + delta, updated_at=sa.func.now())
    ).rowcount
    if not changed:
        conn.execute(
            sa.insert(arb_balances),
            [{"account": account, "exchange": exchange, "asset": asset, "amount": delta}],
        )


def as_utc(moment: datetime) -> datetime:
    """A stored timestamp with its zone (SQLite keeps UTC without one)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

"""The model trader's positions and orders in the database.

Every write that changes money is one transaction. An order row is written before
the order is sent (status `pending`), so a crash leaves a trace to reconcile; a
fill changes the position exactly once, because positions move by the change of an
order's cumulative filled amount, recorded in the same transaction. Decisions are
written by `serving.model.decision_store`, equity points by `serving.model.equity_store`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import fills, orders, positions
from serving.kernel.execution import Execution, Fill, fill_rows
from serving.kernel.lease import require_lease

OPEN_STATUSES = ("pending", "open", "partial")
Fence = tuple[str, int]  # (lease holder, fencing token) that must still hold the market
FINAL_STATUSES = ("filled", "canceled", "rejected", "expired")


@dataclass(frozen=True)
class Position:
    """A market's sub-account: base held (negative = short), quote cash, last target."""

    base: float
    quote: float
    target: float
    borrowed: float = 0.0

    def equity(self, price: float) -> float:
        """Quote value at `price`."""
        return self.quote + self.base * price


def ensure_position(
    engine: Engine, account: str, market: str, cash: float, base: float = 0.0
) -> Position:
    """The stored position, created with `base` and `cash` the first time."""
    with engine.begin() as conn:
        found = _position(conn, account, market)
        if found is not None:
            return found
        conn.execute(
            sa.insert(positions).values(
                account=account, market=market, base=base, quote=cash, target=0.0
            )
        )
    return Position(base, cash, 0.0)


def set_balances(engine: Engine, account: str, market: str, base: float, quote: float) -> None:
    """Overwrite a position's balances with the exchange's (reconciliation)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(positions)
            .where(positions.c.account == account, positions.c.market == market)
            .values(base=base, quote=quote, borrowed=max(-base, 0.0), updated_at=sa.func.now())
        )


def charge_borrow(engine: Engine, account: str, market: str, upto_ts: int, fee: float) -> bool:
    """Charge `fee` quote of borrow interest up to candle `upto_ts`, once: a repeat for
    the same or an earlier candle changes nothing. True when charged."""
    return _carry(engine, account, market, upto_ts, quote=positions.c.quote - fee)


def charge_interest(
    engine: Engine, account: str, market: str, upto_ts: int, base_interest: float
) -> bool:
    """Charge `base_interest` (a live margin loan's interest, owed in the base asset) up
    to the exchange's interest time `upto_ts`, once: a repeat changes nothing."""
    return _carry(
        engine,
        account,
        market,
        upto_ts,
        base=positions.c.base - base_interest,
        borrowed=positions.c.borrowed + base_interest,
    )


def _carry(engine: Engine, account: str, market: str, upto_ts: int, **values: Any) -> bool:
    """Apply a borrow cost's `values` to the position and move its `carried_to` to
    `upto_ts`, unless it was carried that far already. True when applied."""
    with engine.begin() as conn:
        done = conn.execute(
            sa.update(positions)
            .where(
                positions.c.account == account,
                positions.c.market == market,
                sa.or_(positions.c.carried_to.is_(None), positions.c.carried_to < upto_ts),
            )
            .values(**values, carried_to=upto_ts, updated_at=sa.func.now())
        )
    return done.rowcount == 1


def carried_to(engine: Engine, account: str, market: str) -> int | None:
    """Up to when (ms) borrow costs are in the position's books."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(positions.c.carried_to).where(
                positions.c.account == account, positions.c.market == market
            )
        ).scalar()


def set_carried(engine: Engine, account: str, market: str, upto_ts: int) -> None:
    """Mark borrow costs up to `upto_ts` as in the books (reconciliation took them)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(positions)
            .where(positions.c.account == account, positions.c.market == market)
            .values(carried_to=upto_ts)
        )


def get_position(engine: Engine, account: str, market: str) -> Position | None:
    """The stored position of a market."""
    with engine.connect() as conn:
        return _position(conn, account, market)


def _position(conn: Connection, account: str, market: str) -> Position | None:
    row = conn.execute(
        sa.select(positions.c.base, positions.c.quote, positions.c.target, positions.c.borrowed)
        .where(positions.c.account == account, positions.c.market == market)
        .with_for_update()
    ).first()
    return None if row is None else Position(*map(float, row))


def check_fence(conn: Connection, account: str, market: str, fence: Fence | None) -> None:
    """LeaseLost unless `fence` still holds the market's lease (locked until commit)."""
    if fence is not None:
        require_lease(conn, account, fence[0], {market: fence[1]})


def moved(position: Position, side: str, execution: Execution) -> Position:
    """The position after the whole execution of a new order (what record_decision wrote)."""
    base, quote = changes(side, execution)
    new_base = position.base + base
    return Position(new_base, position.quote + quote, position.target, max(-new_base, 0.0))


def changes(side: str, execution: Execution) -> tuple[float, float]:
    """(base, quote) change of the account from a whole execution of a new order."""
    sign = 1.0 if side == "buy" else -1.0
    base = sign * execution.filled - (execution.fee if execution.fee_asset == "base" else 0.0)
    quote = -sign * execution.cost - (execution.fee if execution.fee_asset == "quote" else 0.0)
    return base, quote


def _insert_fills(conn: Connection, client_order_id: str, new: Iterable[Fill]) -> None:
    rows = fill_rows(client_order_id, new)
    if rows:
        conn.execute(sa.insert(fills), rows)


def record_order(engine: Engine, order: dict[str, Any], fence: Fence | None = None) -> None:
    """Write an order that no decision made (an operator's flatten) as `pending`; with a
    `fence`, only while that lease holds the market (else LeaseLost)."""
    with engine.begin() as conn:
        check_fence(conn, order["account"], order["market"], fence)
        conn.execute(sa.insert(orders).values(**order, status="pending", filled=0.0, fee=0.0))


def apply_execution(engine: Engine, client_order_id: str, execution: Execution) -> Position:
    """Bring an order, its fills and its market's position up to `execution`; idempotent."""
    with engine.begin() as conn:
        return _apply(conn, client_order_id, execution)


def _apply(conn: Connection, client_order_id: str, execution: Execution) -> Position:
    order = (
        conn.execute(
            sa.select(orders).where(orders.c.client_order_id == client_order_id).with_for_update()
        )
        .mappings()
        .one()
    )
    position = _position(conn, order["account"], order["market"])
    assert position is not None, f"no position row for {order['market']}"
    sign = 1.0 if order["side"] == "buy" else -1.0
    filled = execution.filled - order["filled"]
    cost = execution.cost - (order["average"] or 0.0) * order["filled"]
    fee = execution.fee - order["fee"]
    base = position.base + sign * filled - (fee if execution.fee_asset == "base" else 0.0)
    quote = position.quote - sign * cost - (fee if execution.fee_asset == "quote" else 0.0)
    if filled or fee:
        conn.execute(
            sa.update(positions)
            .where(positions.c.account == order["account"], positions.c.market == order["market"])
            .values(base=base, quote=quote, borrowed=max(-base, 0.0), updated_at=sa.func.now())
        )
    conn.execute(
        sa.update(orders)
        .where(orders.c.client_order_id == client_order_id)
        .values(
            status=execution.status,
            filled=execution.filled,
            average=execution.average,
            fee=execution.fee,
            fee_currency=execution.fee_asset or order["fee_currency"],
            exchange_order_id=execution.exchange_order_id or order["exchange_order_id"],
            error=execution.error,
            updated_at=sa.func.now(),
        )
    )
    known = set(
        conn.execute(
            sa.select(fills.c.trade_id).where(fills.c.client_order_id == client_order_id)
        ).scalars()
    )
    _insert_fills(conn, client_order_id, [f for f in execution.fills if f.trade_id not in known])
    return Position(base, quote, position.target, max(-base, 0.0))


def open_orders(engine: Engine, account: str) -> list[dict[str, Any]]:
    """Orders not known to be final (pending ones may or may not have been sent)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(orders)
            .where(orders.c.account == account, orders.c.status.in_(OPEN_STATUSES))
            .order_by(orders.c.created_at)
        ).mappings()
        return [dict(r) for r in rows]

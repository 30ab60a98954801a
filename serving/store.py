"""The trader's state in the database: decisions, orders, fills, positions, equity and
risk transitions.

Every write that changes money is one transaction. An order row is written before
the order is sent (status `pending`), so a crash leaves a trace to reconcile; a
fill changes the position exactly once, because positions move by the change of an
order's cumulative filled amount, recorded in the same transaction.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import (
    decisions,
    equity,
    fills,
    orders,
    positions,
    risk_events,
)
from serving.lease import LeaseLost, require_lease
from serving.risk import RESUMED_REASON
from serving.watch import WATCH_REASON

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


@dataclass(frozen=True)
class Mark:
    """A market's equity point at candle `ts`: its position valued at `price`."""

    ts: int
    position: Position
    price: float


@dataclass(frozen=True)
class Fill:
    """One execution of an order."""

    trade_id: str
    ts: int
    price: float
    amount: float
    fee: float
    fee_currency: str | None


@dataclass(frozen=True)
class Execution:
    """What the broker (or the exchange) says about an order, cumulatively: amounts
    filled, their quote cost and the fee, charged in the base or the quote asset."""

    status: str
    filled: float
    cost: float
    fee: float = 0.0
    fee_asset: Literal["base", "quote"] | None = None
    exchange_order_id: str | None = None
    fills: tuple[Fill, ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def average(self) -> float | None:
        """Average fill price, None when nothing filled."""
        return self.cost / self.filled if self.filled else None


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
    with engine.begin() as conn:
        done = conn.execute(
            sa.update(positions)
            .where(
                positions.c.account == account,
                positions.c.market == market,
                sa.or_(positions.c.carried_to.is_(None), positions.c.carried_to < upto_ts),
            )
            .values(quote=positions.c.quote - fee, carried_to=upto_ts, updated_at=sa.func.now())
        )
    return done.rowcount == 1


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


def last_decided_candle(engine: Engine, account: str, market: str) -> int | None:
    """Open time of the newest decided candle of a market."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(decisions.c.candle_ts)).where(
                decisions.c.account == account, decisions.c.market == market
            )
        ).scalar()


class DecisionWriter:
    """Writes decisions, each with its order, fills, position change and equity point,
    atomically.

    On Postgres it keeps one connection of its own in autocommit and sends each
    decision as a single statement of data-modifying CTEs: one round trip, where a
    pooled transaction costs four (pre-ping, BEGIN, the insert, COMMIT). A connection
    error drops that connection; the next write opens a fresh one. SQLite (embedded,
    one writer at a time) takes the plain Core path in a transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._conn: Connection | None = None

    def record(
        self,
        decision: dict[str, Any],
        order: dict[str, Any] | None = None,
        execution: Execution | None = None,
        *,
        durable: bool = True,
        fence: Fence | None = None,
        mark: Mark | None = None,
    ) -> int:
        """Write a decision, its order (if any) and, for paper fills known at once, the
        execution; returns the decision id. With a `fence` (holder, token) nothing is
        written unless that lease still holds the market: LeaseLost. With a `mark`, the
        market's equity point after the decision goes in the same transaction (what
        `record_equity` writes: a point already there for that candle is kept).

        A live order is written `pending` before it is sent, durably. A paper decision
        (`durable=False`) commits without waiting for the WAL flush on Postgres: only a
        crash of the database server itself could lose its last few, and a lost paper
        decision is simply taken again; the trader's own crash loses nothing either way.
        """
        values = _order_values(order, execution)
        fill_rows = (
            _fill_rows(order["client_order_id"], execution.fills) if values and execution else []
        )
        base_change, quote_change = (
            _changes(order["side"], execution) if order and execution else (0.0, 0.0)
        )
        moves = bool(decision["outcome"] in ("order", "hold") or base_change or quote_change)
        if not self.postgres:
            return _record_core(
                self.engine,
                decision,
                values,
                fill_rows,
                moves,
                base_change,
                quote_change,
                fence,
                mark,
            )
        params = {
            **decision,
            "outputs": json.dumps(decision["outputs"]),
            "base_change": base_change,
            "quote_change": quote_change,
            "new_target": decision["target"] if decision["outcome"] in ("order", "hold") else None,
            "moves": moves,
        }
        if values:
            params |= {f"o_{k}": values.get(k) for k in _ORDER_COLUMNS}
            params["fills"] = json.dumps(fill_rows)
        if fence is not None:
            params |= {"lease_holder": fence[0], "lease_token": fence[1]}
        if mark is not None:
            params |= _mark_values(mark, prefix="e_")
        statement = _PG_STATEMENTS[(bool(values), durable, fence is not None, mark is not None)]
        if self._conn is None or self._conn.closed:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            made = self._conn.execute(statement, params).scalar()
        except sa.exc.DBAPIError as error:
            if error.connection_invalidated or isinstance(error, sa.exc.OperationalError):
                self.close()
            raise
        if made is None:
            raise _lost(decision, fence)
        return int(made)

    def close(self) -> None:
        """Give the connection back (a later write opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):  # already gone with the server
                conn.close()


def record_decision(
    engine: Engine,
    decision: dict[str, Any],
    order: dict[str, Any] | None = None,
    execution: Execution | None = None,
    *,
    durable: bool = True,
    fence: Fence | None = None,
    mark: Mark | None = None,
) -> int:
    """`DecisionWriter.record` once, on a connection of its own (tests, tools)."""
    writer = DecisionWriter(engine)
    try:
        return writer.record(decision, order, execution, durable=durable, fence=fence, mark=mark)
    finally:
        writer.close()


def _record_core(
    engine: Engine,
    decision: dict[str, Any],
    values: dict[str, Any],
    fill_rows: list[dict[str, Any]],
    moves: bool,
    base_change: float,
    quote_change: float,
    fence: Fence | None,
    mark: Mark | None,
) -> int:
    with engine.begin() as conn:
        _check_fence(conn, decision["account"], decision["market"], fence)
        decision_id = conn.execute(
            sa.insert(decisions).values(**decision).returning(decisions.c.id)
        ).scalar_one()
        if values:
            conn.execute(sa.insert(orders).values(**values, decision_id=decision_id))
        if fill_rows:
            conn.execute(sa.insert(fills), fill_rows)
        if moves:
            conn.execute(_position_update(decision, base_change, quote_change, postgres=False))
        if mark is not None:
            _record_equity(conn, decision["account"], decision["market"], mark)
    return int(decision_id)


_DECISION_COLUMNS = (
    "account", "market", "candle_ts", "model_name", "model_version", "inputs_sha256",
    "outputs", "action", "target", "price", "latency_ms", "outcome", "reason",
    "client_order_id",
)  # fmt: skip
_ORDER_COLUMNS = (
    "client_order_id", "account", "market", "side", "type", "amount", "price", "status",
    "filled", "average", "fee", "fee_currency", "exchange_order_id", "error",
)  # fmt: skip
_MADE = (
    "WITH made AS (INSERT INTO decisions ({columns}) SELECT {values} WHERE {{fence}} "
    "RETURNING id), "
    "moved AS (UPDATE positions SET base = base + :base_change, "
    "quote = quote + :quote_change, target = COALESCE(:new_target, target), "
    "borrowed = GREATEST(-(base + :base_change), 0), updated_at = now() "
    "WHERE account = :account AND market = :market AND :moves AND EXISTS (SELECT 1 FROM made))"
).format(
    columns=", ".join(_DECISION_COLUMNS),
    values=", ".join(
        "CAST(:outputs AS JSON)" if c == "outputs" else f":{c}" for c in _DECISION_COLUMNS
    ),
)
_ORDERED = (
    ", ordered AS (INSERT INTO orders ({columns}, decision_id) SELECT {values}, id FROM made)"
).format(columns=", ".join(_ORDER_COLUMNS), values=", ".join(f":o_{c}" for c in _ORDER_COLUMNS))
_FILLED = (
    ", filled AS (INSERT INTO fills ({columns}) SELECT {columns} FROM "
    "json_to_recordset(CAST(:fills AS JSON)) AS f(client_order_id text, trade_id text, "
    "ts bigint, price float8, amount float8, fee float8, fee_currency text) "
    "WHERE EXISTS (SELECT 1 FROM made))"
).format(columns="client_order_id, trade_id, ts, price, amount, fee, fee_currency")
_EQUITY_COLUMNS = ("ts", "equity", "base", "quote", "price")
_MARKED = (
    ", marked AS (INSERT INTO equity (account, market, {columns}) SELECT :account, :market, "
    "{values} WHERE EXISTS (SELECT 1 FROM made) ON CONFLICT DO NOTHING)"
).format(columns=", ".join(_EQUITY_COLUMNS), values=", ".join(f":e_{c}" for c in _EQUITY_COLUMNS))
# the lease row is read FOR SHARE: a takeover waits until this write is committed (and
# then its reconciliation sees it), or this write sees the takeover and writes nothing
_FENCE = (
    "EXISTS (SELECT 1 FROM trader_leases WHERE account = :account AND market = :market "
    "AND holder = :lease_holder AND token = :lease_token FOR SHARE)"
)
_PG_STATEMENTS = {
    # in autocommit, the statements of one query string are one implicit transaction,
    # so SET LOCAL covers exactly the decision's write
    (with_order, durable, fenced, marked): sa.text(
        ("" if durable else "SET LOCAL synchronous_commit TO OFF; ")
        + _MADE.format(fence=_FENCE if fenced else "TRUE")
        + (_ORDERED + _FILLED if with_order else "")
        + (_MARKED if marked else "")
        + " SELECT id FROM made"
    )
    for with_order in (False, True)
    for durable in (False, True)
    for fenced in (False, True)
    for marked in (False, True)
}


def _check_fence(conn: Connection, account: str, market: str, fence: Fence | None) -> None:
    """LeaseLost unless `fence` still holds the market's lease (locked until commit)."""
    if fence is not None:
        require_lease(conn, account, fence[0], {market: fence[1]})


def _lost(decision: dict[str, Any], fence: Fence | None) -> LeaseLost:
    return LeaseLost(
        f"{decision['market']} ({decision['account']}): this trader's lease (token "
        f"{fence[1] if fence else '?'}) was taken over by another trader: nothing written, "
        "nothing sent"
    )


def _order_values(order: dict[str, Any] | None, execution: Execution | None) -> dict[str, Any]:
    """The orders row of a new order: `pending`, or final when executed at once (paper)."""
    if order is None:
        return {}
    if execution is None:
        return {**order, "status": "pending", "filled": 0.0, "fee": 0.0}
    return {
        **order,
        "status": execution.status,
        "filled": execution.filled,
        "average": execution.average,
        "fee": execution.fee,
        "fee_currency": execution.fee_asset,
        "exchange_order_id": execution.exchange_order_id,
        "error": execution.error,
    }


def _position_update(
    decision: dict[str, Any], base_change: float, quote_change: float, *, postgres: bool
) -> sa.Update:
    """Move the position by the fills (relative, so it needs no read) and set the target
    of an order or a hold."""
    target = decision["target"] if decision["outcome"] in ("order", "hold") else None
    new_base = positions.c.base + base_change
    return (
        sa.update(positions)
        .where(
            positions.c.account == decision["account"],
            positions.c.market == decision["market"],
        )
        .values(
            base=new_base,
            quote=positions.c.quote + quote_change,
            target=positions.c.target if target is None else target,
            borrowed=(sa.func.greatest if postgres else sa.func.max)(-new_base, 0.0),
            updated_at=sa.func.now(),
        )
    )


def moved(position: Position, side: str, execution: Execution) -> Position:
    """The position after the whole execution of a new order (what record_decision wrote)."""
    base, quote = _changes(side, execution)
    new_base = position.base + base
    return Position(new_base, position.quote + quote, position.target, max(-new_base, 0.0))


def _changes(side: str, execution: Execution) -> tuple[float, float]:
    """(base, quote) change of the account from a whole execution of a new order."""
    sign = 1.0 if side == "buy" else -1.0
    base = sign * execution.filled - (execution.fee if execution.fee_asset == "base" else 0.0)
    quote = -sign * execution.cost - (execution.fee if execution.fee_asset == "quote" else 0.0)
    return base, quote


def _insert_fills(conn: Connection, client_order_id: str, new: Iterable[Fill]) -> None:
    rows = _fill_rows(client_order_id, new)
    if rows:
        conn.execute(sa.insert(fills), rows)


def _fill_rows(client_order_id: str, new: Iterable[Fill]) -> list[dict[str, Any]]:
    return [
        {
            "client_order_id": client_order_id,
            "trade_id": f.trade_id,
            "ts": f.ts,
            "price": f.price,
            "amount": f.amount,
            "fee": f.fee,
            "fee_currency": f.fee_currency,
        }
        for f in new
    ]


def record_order(engine: Engine, order: dict[str, Any], fence: Fence | None = None) -> None:
    """Write an order that no decision made (an operator's flatten) as `pending`; with a
    `fence`, only while that lease holds the market (else LeaseLost)."""
    with engine.begin() as conn:
        _check_fence(conn, order["account"], order["market"], fence)
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


def record_equity(
    engine: Engine, account: str, market: str, ts: int, position: Position, price: float
) -> None:
    """One equity point per market and candle (a repeat of the same candle is ignored)."""
    with engine.begin() as conn:
        _record_equity(conn, account, market, Mark(ts, position, price))


def _record_equity(conn: Connection, account: str, market: str, mark: Mark) -> None:
    exists = conn.execute(
        sa.select(equity.c.ts).where(
            equity.c.account == account, equity.c.market == market, equity.c.ts == mark.ts
        )
    ).first()
    if exists is None:
        conn.execute(sa.insert(equity).values(account=account, market=market, **_mark_values(mark)))


def _mark_values(mark: Mark, prefix: str = "") -> dict[str, Any]:
    """The equity row's values of an equity point (keys prefixed with `prefix`)."""
    position = mark.position
    return {
        f"{prefix}ts": mark.ts,
        f"{prefix}equity": position.equity(mark.price),
        f"{prefix}base": position.base,
        f"{prefix}quote": position.quote,
        f"{prefix}price": mark.price,
    }


def equity_since_version(
    engine: Engine,
    account: str,
    market: str,
    name: str,
    version: int,
    since: datetime | None = None,
) -> list[float]:
    """Equity points of `market` since `version` of `name` most recently took over its
    decisions: the point before its first decision, then one per decision. With `since`
    (an operator's resume after a watch breach, see `watch_resumed_at`), the record
    starts at the last point before it instead."""
    with engine.connect() as conn:
        other = conn.execute(
            sa.select(sa.func.max(decisions.c.candle_ts)).where(
                decisions.c.account == account,
                decisions.c.market == market,
                sa.or_(decisions.c.model_name != name, decisions.c.model_version != version),
            )
        ).scalar()
        first = conn.execute(
            sa.select(sa.func.min(decisions.c.candle_ts)).where(
                decisions.c.account == account,
                decisions.c.market == market,
                decisions.c.model_name == name,
                decisions.c.model_version == version,
                decisions.c.candle_ts > (other if other is not None else -1),
            )
        ).scalar()
        if first is None:
            return []
        before = conn.execute(
            sa.select(equity.c.equity, equity.c.created_at)
            .where(equity.c.account == account, equity.c.market == market, equity.c.ts < first)
            .order_by(equity.c.ts.desc())
            .limit(1)
        ).first()
        points = conn.execute(
            sa.select(equity.c.equity, equity.c.created_at)
            .where(equity.c.account == account, equity.c.market == market, equity.c.ts >= first)
            .order_by(equity.c.ts)
        ).all()
    record = ([] if before is None else [before]) + list(points)
    if since is not None:
        earlier = [i for i, (_, at) in enumerate(record) if _naive(at) < _naive(since)]
        record = record[earlier[-1] :] if earlier else record
    return [float(value) for value, _ in record]


def watch_resumed_at(engine: Engine, account: str) -> datetime | None:
    """When an operator last lifted a pause that the champion watch had set, or None: the
    watch judges only what came after (a restart must not breach again on what the
    operator already saw)."""
    global_events = sa.and_(risk_events.c.account == account, risk_events.c.market.is_(None))
    with engine.connect() as conn:
        paused = conn.execute(
            sa.select(sa.func.max(risk_events.c.at)).where(
                global_events, risk_events.c.reason.like(f"{WATCH_REASON}%")
            )
        ).scalar()
        if paused is None:
            return None
        return conn.execute(
            sa.select(sa.func.min(risk_events.c.at)).where(
                global_events,
                risk_events.c.reason == RESUMED_REASON,
                risk_events.c.at >= paused,
            )
        ).scalar()


def _naive(at: datetime) -> datetime:
    return at.replace(tzinfo=None) if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


def record_transitions(engine: Engine, account: str, transitions: Iterable[Any]) -> None:
    """Persist risk-gate transitions (objects with market, from_state, to_state, reason)."""
    rows = [
        {
            "account": account,
            "market": t.market,
            "from_state": str(t.from_state),
            "to_state": str(t.to_state),
            "reason": t.reason,
        }
        for t in transitions
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(sa.insert(risk_events), rows)

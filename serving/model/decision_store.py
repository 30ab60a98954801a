"""The model trader's decisions in the database: each written with its order, fills,
position change and equity point in one transaction (one round trip on Postgres).

A decision is recorded once per market and candle (a unique key), so a restart never
decides a candle twice; a live order goes in `pending`, before it is sent.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import decisions, fills, orders, positions
from serving.kernel.execution import Execution, fill_rows
from serving.kernel.lease import LeaseLost
from serving.model.equity_store import Mark, mark_values, record_mark
from serving.model.store import Fence, changes, check_fence


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
        new_fills = (
            fill_rows(order["client_order_id"], execution.fills) if values and execution else []
        )
        base_change, quote_change = (
            changes(order["side"], execution) if order and execution else (0.0, 0.0)
        )
        moves = bool(decision["outcome"] in ("order", "hold") or base_change or quote_change)
        if not self.postgres:
            return _record_core(
                self.engine,
                decision,
                values,
                new_fills,
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
            params["fills"] = json.dumps(new_fills)
        if fence is not None:
            params |= {"lease_holder": fence[0], "lease_token": fence[1]}
        if mark is not None:
            params |= mark_values(mark, prefix="e_")
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
    new_fills: list[dict[str, Any]],
    moves: bool,
    base_change: float,
    quote_change: float,
    fence: Fence | None,
    mark: Mark | None,
) -> int:
    with engine.begin() as conn:
        check_fence(conn, decision["account"], decision["market"], fence)
        decision_id = conn.execute(
            sa.insert(decisions).values(**decision).returning(decisions.c.id)
        ).scalar_one()
        if values:
            conn.execute(sa.insert(orders).values(**values, decision_id=decision_id))
        if new_fills:
            conn.execute(sa.insert(fills), new_fills)
        if moves:
            conn.execute(_position_update(decision, base_change, quote_change, postgres=False))
        if mark is not None:
            record_mark(conn, decision["account"], decision["market"], mark)
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

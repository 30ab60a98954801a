"""A cross trade in the arbitrage trader's tables: the trade is an `arb_opportunities`
row (exchange `cross`), its two legs and its exits `arb_legs` rows naming their venue,
written (pending) before they are sent and settled once with what the venue said; a
restart rebuilds the legs it sent from the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.arbitrage.cross import CrossOpportunity
from serving.arbitrage import store
from serving.cross.exposure import EXIT_SEQ
from serving.cross.pair import FINAL, Leg, Sent
from serving.kernel.execution import Execution

EXCHANGE = "cross"  # arb_opportunities.exchange of every cross trade
FILLED = 1 - 1e-9


def leg_row(trade: str, leg: Leg) -> dict[str, Any]:
    """The `arb_legs` row of a leg (pending until settled)."""
    base, quote = leg.symbol.split("/")
    return {
        "client_order_id": leg.client_id,
        "opportunity_id": trade,
        "seq": leg.seq,
        "kind": "unwind" if leg.seq >= EXIT_SEQ else "cross",
        "venue": leg.venue,
        "symbol": leg.symbol,
        "side": leg.side,
        "type": "market" if leg.price is None else "limit",
        "source": quote if leg.side == "buy" else base,
        "target": base if leg.side == "buy" else quote,
        "amount": leg.amount,
        "price": leg.price,
    }


def trade_row(
    trade: str,
    account: str,
    opportunity: CrossOpportunity,
    legs: tuple[Leg, Leg],
    taker_fee: float,
    detected_ms: int,
) -> dict[str, Any]:
    """The `arb_opportunities` row of a trade, with what its planned legs should earn."""
    buy, sell = legs
    quote = buy.symbol.split("/")[1]
    start = buy.amount * (buy.price or opportunity.buy_price)
    end = sell.amount * (sell.price or opportunity.sell_price) * (1 - taker_fee)
    end *= opportunity.conversion
    return {
        "id": trade,
        "account": account,
        "exchange": EXCHANGE,
        "home": quote,
        "cycle": [
            [f"{leg.venue}:{leg.symbol}", leg.side, row["source"], row["target"]]
            for leg, row in ((leg, leg_row(trade, leg)) for leg in legs)
        ],
        "detected_ms": detected_ms,
        "edge_bps": opportunity.spread_bps,
        "expected_start": start,
        "expected_end": end,
        "expected_bps": (end / start - 1) * 1e4 if start else 0.0,
        "status": "executing",
    }


def sent_from_row(row: Mapping[str, Any]) -> Sent:
    """A leg as its row records it, with what its venue said (pending: nothing yet)."""
    leg = Leg(
        row["venue"],
        row["symbol"],
        row["side"],
        float(row["amount"]),
        None if row["price"] is None else float(row["price"]),
        row["client_order_id"],
        int(row["seq"]),
    )
    execution = Execution(
        row["status"],
        float(row["filled"] or 0.0),
        float(row["cost"] or 0.0),
        float(row["fee"] or 0.0),
        row["fee_currency"],
        row["exchange_order_id"],
    )
    return Sent(leg, execution, 0.0)


def settle(
    engine: Any,
    trade: str,
    sent: Iterable[Sent],
    paper: str | None,
) -> list[Sent]:
    """Write what the venues said about every leg of `sent` still pending in the table
    once its state is final (the paper account's balances on each venue move with it);
    the ones not final yet, left pending."""
    recorded = {row["client_order_id"]: row for row in store.legs_of(engine, trade)}
    waiting = []
    for s in sent:
        row = recorded.get(s.leg.client_id)
        if row is None or row["status"] != "pending":
            continue
        if s.execution.status not in FINAL:
            waiting.append(s)
            continue
        account = None if paper is None else (paper, paper_key(s.leg.venue))
        store.settle_leg(engine, row, s.execution, paper=account)
    return waiting


def paper_key(venue: str) -> str:
    """The `arb_balances.exchange` of the paper cross account on `venue`."""
    return f"{EXCHANGE}:{venue}"


def outcome(legs: list[Sent], exits: list[Sent], conversion: float) -> dict[str, Any]:
    """The realized figures of a finished trade, from its fills: quote spent, quote
    received (the sell venue's counted at `conversion`), profit, and whether it was done
    as planned (both legs filled, no exit) or unwound."""
    buy_venue = legs[0].leg.venue
    start = end = 0.0
    for s in legs + exits:
        value = s.quote * (1.0 if s.leg.venue == buy_venue else conversion)
        start, end = (start - value, end) if value < 0 else (start, end + value)
    planned = all(s.execution.filled >= s.leg.amount * FILLED for s in legs) and not exits
    return {
        "status": "done" if planned else "unwound",
        "realized_start": start,
        "realized_end": end,
        "realized_profit": end - start,
    }

"""Rows of the trader's state tables, as the trader writes them."""

from __future__ import annotations

from serving.kernel.execution import Execution, Fill

MARKET = "binance:BTC/USDT:1h"


def decision(candle_ts: int, cid: str | None) -> dict:
    return {
        "account": "paper",
        "market": MARKET,
        "candle_ts": candle_ts,
        "model_name": "binance-btc-usdt-1h",
        "model_version": 1,
        "inputs_sha256": "0" * 64,
        "outputs": [0.1, 0.9],
        "action": 1,
        "target": 1.0,
        "price": 100.0,
        "latency_ms": 1.0,
        "outcome": "order" if cid else "hold",
        "reason": None,
        "client_order_id": cid,
    }


def paper_buy(cid: str) -> tuple[dict, Execution]:
    order = {
        "client_order_id": cid,
        "account": "paper",
        "market": MARKET,
        "side": "buy",
        "type": "market",
        "amount": 2.0,
        "price": None,
    }
    fills = (
        Fill("t1", 1, 100.0, 1.5, 0.15, "USDT"),
        Fill("t2", 2, 101.0, 0.5, 0.0505, "USDT"),
    )
    execution = Execution("filled", 2.0, 200.5, 0.2005, "quote", "x1", fills)
    return order, execution

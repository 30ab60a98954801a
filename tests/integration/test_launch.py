"""The launcher's parts that `make run` leans on, without starting the whole stack (the
end-to-end test in tests/e2e does that)."""

from __future__ import annotations

import pytest


@pytest.mark.postgres
def test_the_status_line_reads_each_markets_position_and_newest_decision(fresh_pg) -> None:
    import sqlalchemy as sa

    from pipeline.db.schema import decisions, positions
    from pipeline.ops.console import trader_books

    engine = fresh_pg()
    market = "binance:BTC/USDT:1h"
    decision = {
        "account": "paper",
        "market": market,
        "model_name": "binance-btc-usdt-1h",
        "inputs_sha256": "0" * 64,
        "outputs": [0.1, 0.9],
        "action": 1,
        "price": 40_000.0,
        "latency_ms": 1.0,
    }
    with engine.begin() as conn:
        conn.execute(
            sa.insert(positions),
            [{"account": "paper", "market": market, "base": 0.05, "quote": 8_000.0, "target": 0.3}],
        )
        conn.execute(
            sa.insert(decisions),
            [
                decision | {"candle_ts": 1, "model_version": 2, "target": 0.0, "outcome": "hold"},
                decision | {"candle_ts": 2, "model_version": 3, "target": 0.3, "outcome": "order"},
            ],
        )
    [book] = trader_books(engine, "paper")
    assert (book["market"], book["base"], book["quote"]) == (market, 0.05, 8_000.0)
    assert (book["model_version"], book["outcome"], book["target"]) == (3, "order", 0.3)
    assert trader_books(engine, "live") == []

"""Cross-exchange execution on two simulated venues through ccxt: both legs sent at once
on the inventory each venue holds, a one-sided fill closed by the cheaper exit within
the bound, the realized profit equal to the fills after fees."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from pipeline.arbitrage.cross import CrossCosts, opportunity
from pipeline.errors import ExchangeRejected
from pipeline.exchanges.simulator.app import Running
from serving.cross.exposure import close_exposure, exposure, realized
from serving.cross.pair import Dispatcher, plan_legs, trade_id
from tests.support.cross_venues import Venue, two_venues

FEE = 0.001
UNWIND_SECONDS = 10.0


@pytest.fixture
def venues(simulator: Callable[..., AbstractContextManager[Running]]) -> Iterator[list[Venue]]:
    with two_venues(simulator) as both:
        yield both


@pytest.fixture
def dispatcher(venues: list[Venue]) -> Iterator[Dispatcher]:
    pool = Dispatcher({v.name: v.broker for v in venues})
    yield pool
    pool.close()


def spread(buy: Venue, sell: Venue, notional: float = 1_000.0):
    costs = CrossCosts(FEE, notional, {}, {"USDC": 1.0})
    return opportunity(costs, buy.quote(), sell.quote())


def trade(venues: list[Venue], dispatcher: Dispatcher) -> tuple[list, object]:
    buy, sell = venues
    seen = spread(buy, sell)
    trade_key = trade_id("live", seen, int(time.time() * 1000))
    rules = {v.name: v.rules for v in venues}
    held = (buy.held()["USDC"], sell.held()["BTC"])
    legs = plan_legs(trade_key, seen, rules, FEE, held, (buy.book()["asks"], sell.book()["bids"]))
    sent = list(dispatcher.send_both(legs, int(time.time() * 1000)))

    def books() -> dict[str, tuple[float, float]]:
        return {v.name: (v.quote().bid, v.quote().ask) for v in venues}

    closing = close_exposure(
        dispatcher, trade_key, sent, books, rules, FEE, UNWIND_SECONDS,
        lambda: int(time.time() * 1000),
    )  # fmt: skip
    return closing.legs + closing.exits, closing


def test_both_legs_fill_on_their_venues_and_the_profit_is_the_fills_after_fees(
    venues, dispatcher
) -> None:
    sell = venues[1]
    sell.plant(60.0)  # kraken bids 60 bps above binanceus's ask: pays after two fees
    before = [v.held() for v in venues]
    orders, closing = trade(venues, dispatcher)
    after = [v.held() for v in venues]
    assert [o.execution.status for o in orders] == ["filled", "filled"]
    assert closing.exits == []
    assert closing.closed
    usdc_change = sum(a["USDC"] - b["USDC"] for a, b in zip(after, before, strict=True))
    assert realized(orders) == pytest.approx(usdc_change, abs=0.01)  # to the cent
    assert realized(orders) > 0
    btc_change = sum(a["BTC"] - b["BTC"] for a, b in zip(after, before, strict=True))
    assert btc_change == pytest.approx(exposure(orders), abs=1e-12)
    assert abs(btc_change) < 1e-4, "only rounding dust is left"


def test_a_sell_leg_rejected_while_the_buy_fills_is_closed_by_the_cheaper_exit_in_time(
    venues, dispatcher
) -> None:
    sell = venues[1]
    sell.plant(60.0)
    sell.fault("reject")  # the next order on kraken is refused: the buy fills alone
    orders, closing = trade(venues, dispatcher)
    assert [o.execution.status for o in orders[:2]] == ["filled", "rejected"]
    assert closing.closed
    assert closing.seconds < UNWIND_SECONDS
    [exit_order] = closing.exits
    assert exit_order.leg.side == "sell"
    assert exit_order.leg.venue == "kraken", "kraken's planted bid is the better exit"
    assert abs(exposure(orders)) < 1e-4


def test_a_buy_leg_timing_out_while_the_sell_fills_is_bought_back_in_time(
    venues, dispatcher
) -> None:
    buy, sell = venues
    sell.plant(60.0)
    buy.fault("reject")
    orders, closing = trade(venues, dispatcher)
    assert [o.execution.status for o in orders[:2]] == ["rejected", "filled"]
    assert closing.closed
    [exit_order] = closing.exits
    assert exit_order.leg.side == "buy"
    assert exit_order.leg.venue == "binanceus", "binanceus's ask is the cheaper buy"
    assert abs(exposure(orders)) < 1e-4


def test_missing_inventory_on_the_sell_venue_is_refused_naming_it(venues) -> None:
    buy, sell = venues
    seen = spread(buy, sell)
    rules = {v.name: v.rules for v in venues}
    books = (buy.book()["asks"], [[seen.buy_price * 1.01, 1.0]])
    with pytest.raises(ExchangeRejected, match="BTC on kraken"):
        plan_legs("t", seen, rules, FEE, (10_000.0, 0.0), books)

"""The cross trader on two simulated venues through ccxt: a planted spread traded on
both at once and recorded leg by leg, a one-sided fill closed and recorded, what a
crash left pending settled before anything new, missing inventory refused with nothing
sent, and a drifted inventory answered by a proposed rebalance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from pipeline.settings import Settings, load_settings
from serving.arbitrage import store
from serving.cross import ledger
from serving.cross.pair import Leg, leg_client_id
from serving.cross.trader import CrossTrader
from serving.kernel.broker import PaperBroker
from tests.support.cross_venues import SYMBOL, Venue, two_venues
from tests.support.trading import rows


def cross_settings(venues: list[Venue]) -> Settings:
    return load_settings(
        exchanges={
            v.name: {"ccxt_id": v.dialect, "url": v.sim.url, "rate_limit_ms": 10} for v in venues
        },
        markets=[f"{venues[0].name}:{SYMBOL}:1h"],
        arbitrage={
            "cross_markets": [f"{v.name}:{SYMBOL}:1m" for v in venues],
            "taker_fee_bps": 10.0,
            "min_edge_bps": 5.0,
            "max_cycle_notional": 1_000.0,
            "unwind_seconds": 10.0,
        },
    )


def make_trader(engine: Engine, venues: list[Venue]) -> CrossTrader:
    return CrossTrader(
        cross_settings(venues),
        engine,
        {v.name: v.exchange for v in venues},
        {v.name: v.broker for v in venues},
    )


@pytest.fixture
def venues(simulator: Callable[..., AbstractContextManager[Running]]) -> Iterator[list[Venue]]:
    with two_venues(simulator) as both:
        yield both


def trades(engine: Engine) -> list[dict]:
    return [
        dict(r._mapping)
        for r in rows(engine, "SELECT * FROM arb_opportunities ORDER BY detected_ms")
    ]


def usdc_total(venues: list[Venue]) -> float:
    return sum(v.held()["USDC"] for v in venues)


def test_a_planted_spread_is_bought_and_sold_at_once_and_the_profit_is_the_fills(
    fresh_pg, venues
) -> None:
    engine = fresh_pg()
    venues[1].plant(60.0)  # kraken bids 60 bps above binanceus's ask
    trader = make_trader(engine, venues)
    before = usdc_total(venues)
    assert trader.step() == "done"
    [trade] = trades(engine)
    assert trade["exchange"] == "cross"
    assert trade["status"] == "done"
    legs = store.legs_of(engine, trade["id"])
    assert [(leg["venue"], leg["side"], leg["status"]) for leg in legs] == [
        ("binanceus", "buy", "filled"),
        ("kraken", "sell", "filled"),
    ]
    assert venues[0].sent() == [legs[0]["client_order_id"]]
    assert venues[1].sent() == [legs[1]["client_order_id"]]
    assert trade["realized_profit"] == pytest.approx(usdc_total(venues) - before, abs=0.01)
    assert trade["realized_profit"] > 0
    assert trader.status()["inventory"]["kraken"]["BTC"] < 0.2


def test_a_sell_rejected_while_the_buy_fills_is_unwound_and_recorded(fresh_pg, venues) -> None:
    engine = fresh_pg()
    venues[1].plant(60.0)
    venues[1].fault("reject")
    trader = make_trader(engine, venues)
    btc_before = sum(v.held()["BTC"] for v in venues)
    assert trader.step() == "unwound"
    [trade] = trades(engine)
    legs = store.legs_of(engine, trade["id"])
    assert [leg["status"] for leg in legs[:2]] == ["filled", "rejected"]
    assert [leg["kind"] for leg in legs[2:]] == ["unwind"]
    assert legs[2]["status"] == "filled"
    assert abs(sum(v.held()["BTC"] for v in venues) - btc_before) < 1e-4
    assert trader.risk.failures_in_a_row == 1


def test_legs_a_crash_left_pending_are_settled_and_their_exposure_closed_first(
    fresh_pg, venues
) -> None:
    engine = fresh_pg()
    venues[1].plant(60.0)
    trader = make_trader(engine, venues)
    trader.start()
    # a run that wrote a trade and sent only its buy leg before it was killed
    trade = "0" * 32
    buy = Leg("binanceus", SYMBOL, "buy", 0.01, venues[0].quote().ask, leg_client_id(trade, 0), 0)
    sell = Leg("kraken", SYMBOL, "sell", 0.00999, 1.0, leg_client_id(trade, 1), 1)
    row = {
        "id": trade, "account": "live", "exchange": ledger.EXCHANGE, "home": "USDC",
        "cycle": [], "detected_ms": 1, "edge_bps": 60.0, "expected_start": 1.0,
        "expected_end": 1.0, "expected_bps": 0.0, "status": "executing",
    }  # fmt: skip
    store.open_opportunity(
        engine, row, ledger.leg_row(trade, buy), more_legs=[ledger.leg_row(trade, sell)]
    )
    venues[0].broker.execute(SYMBOL, "buy", 0.01, buy.client_id, 0, buy.price, fresh=True)
    assert not trader.reconcile(), "the sell might still reach kraken: nothing is decided"
    with engine.begin() as conn:  # the crash was a minute ago: the sell can no longer arrive
        conn.execute(sa.text("UPDATE arb_legs SET created_at = now() - interval '1 minute'"))
    assert trader.reconcile()
    [recorded] = [t for t in trades(engine) if t["id"] == trade]
    assert recorded["status"] == "unwound"
    legs = store.legs_of(engine, trade)
    assert [leg["status"] for leg in legs[:2]] == ["filled", "expired"]
    assert (legs[2]["side"], legs[2]["status"]) == ("sell", "filled")
    assert venues[0].sent() == [buy.client_id], "the buy leg was not sent again"
    assert venues[1].sent() == [legs[2]["client_order_id"]], "kraken's planted bid is the exit"


def test_missing_inventory_on_the_sell_venue_is_refused_naming_it_and_nothing_is_sent(
    fresh_pg, simulator
) -> None:
    engine = fresh_pg()
    empty = {"kraken": (("USDC", 10_000.0), ("BTC", 0.0))}
    with two_venues(simulator, inventory=empty) as venues:
        venues[1].plant(60.0)
        trader = make_trader(engine, venues)
        assert trader.step() == "refused"
        assert "BTC on kraken" in trader.status()["last_refusal"]
        assert venues[0].sent() + venues[1].sent() == []
    assert trades(engine) == []


def test_an_inventory_drifted_out_of_its_band_proposes_a_rebalance_with_its_cost(
    fresh_pg, simulator
) -> None:
    engine = fresh_pg()
    skewed = {"binanceus": (("USDC", 10_000.0), ("BTC", 0.02))}
    with two_venues(simulator, inventory=skewed) as venues:
        trader = make_trader(engine, venues)
        trader.start()
        [proposal] = trader.status()["rebalance"]
    assert proposal["asset"] == "BTC"
    assert (proposal["source"], proposal["target"]) == ("kraken", "binanceus")
    assert proposal["amount"] == pytest.approx(0.09, rel=1e-6)
    assert proposal["withdrawal_fee"] == 0.0002
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM arb_legs")).scalar() == 0


def test_a_venue_down_after_the_books_were_read_is_waited_for_then_the_trade_unwound(
    fresh_pg, venues, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = fresh_pg()
    buy, sell = venues
    sell.plant(60.0)
    trader = CrossTrader(
        cross_settings(venues).model_copy(
            update={"arbitrage": cross_settings(venues).arbitrage.model_copy(
                update={"unwind_seconds": 2.0}
            )}
        ),
        engine,
        {v.name: v.exchange for v in venues},
        {v.name: v.broker for v in venues},
    )  # fmt: skip
    seen_books = trader.on_books

    def kraken_goes_down(*args: object) -> str:
        faults = sell.sim.exchange.faults
        faults.kinds, faults.rate = ("503",), 1.0
        return seen_books(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(trader, "on_books", kraken_goes_down)
    assert trader.step() == "unwinding", "the sell's fate is unknown: nothing is decided"
    [trade] = trades(engine)
    legs = store.legs_of(engine, trade["id"])
    assert [(leg["venue"], leg["status"]) for leg in legs] == [
        ("binanceus", "filled"),
        ("kraken", "pending"),
    ]
    assert not trader.status()["ready"]
    assert trader.step() == "reconciling", "kraken still down: still nothing sent"
    assert len(buy.sent()) == 1
    sell.sim.exchange.faults.rate = 0.0
    with engine.begin() as conn:  # the sell was written long enough ago to be final
        conn.execute(sa.text("UPDATE arb_legs SET created_at = now() - interval '1 minute'"))
    monkeypatch.undo()
    sell.clear_plants()
    assert trader.step() == "idle", "reconciled first; the spread is gone"
    [trade] = trades(engine)
    assert trade["status"] == "unwound"
    legs = store.legs_of(engine, trade["id"])
    assert legs[1]["status"] == "expired"
    assert [leg["kind"] for leg in legs[2:]] == ["unwind"]
    assert sum(v.held()["BTC"] for v in venues) == pytest.approx(0.4, abs=1e-4)


def test_a_spread_between_binances_and_krakens_own_apis_is_traded_on_both(
    fresh_pg, simulator
) -> None:
    engine = fresh_pg()
    with two_venues(simulator, dialects=("binance", "kraken")) as venues:
        venues[1].plant(60.0)  # kraken, speaking Kraken's API, bids 60 bps above binanceus
        trader = make_trader(engine, venues)
        before = usdc_total(venues)
        assert trader.step() == "done"
        [trade] = trades(engine)
        legs = store.legs_of(engine, trade["id"])
        assert [(leg["venue"], leg["status"]) for leg in legs] == [
            ("binanceus", "filled"),
            ("kraken", "filled"),
        ]
        assert venues[1].sent() == [legs[1]["client_order_id"]], "Kraken's cl_ord_id is ours"
        assert trade["realized_profit"] == pytest.approx(usdc_total(venues) - before, abs=0.01)
        assert trader.status()["inventory"]["kraken"]["BTC"] < 0.2


def test_on_paper_a_spread_moves_the_paper_holdings_and_a_restart_finds_them_again(
    fresh_pg, venues
) -> None:
    engine = fresh_pg()
    venues[1].plant(60.0)
    paper = {v.name: PaperBroker(v.exchange, 10.0) for v in venues}
    settings = cross_settings(venues)
    exchanges = {v.name: v.exchange for v in venues}
    trader = CrossTrader(settings, engine, exchanges, paper)
    assert trader.step() == "done"
    assert trader.step() == "seen", "paper fills leave the books: the same spread is not new"
    held = {venue: dict(assets) for venue, assets in trader.status()["inventory"].items()}
    assert held["kraken"]["BTC"] < 0.2 < held["binanceus"]["BTC"]
    assert venues[0].sent() + venues[1].sent() == [], "paper sends nothing"
    again = CrossTrader(settings, engine, exchanges, paper)
    again.start()
    restored = again.status()["inventory"]
    for venue, assets in held.items():
        for asset in ("BTC", "USDC"):
            assert restored[venue][asset] == pytest.approx(assets[asset], abs=1e-9)

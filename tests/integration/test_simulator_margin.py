"""The simulator's cross margin through ccxt's own client: transfer, borrow, short, buy
back, repay, interest, the margin level, liquidation, restarts and refusals."""

from __future__ import annotations

import time
from pathlib import Path

import ccxt
import httpx
import pytest

from pipeline.exchanges.factory import Credentials, create_ccxt
from pipeline.exchanges.simulator.records import MarginTerms
from pipeline.settings import ExchangeConfig

KEY, SECRET = "margin-key", "margin-secret"
CROSS = {"marginMode": "cross"}


def trader(url: str) -> ccxt.binance:
    client = create_ccxt("binance", ExchangeConfig(url=url), Credentials(KEY, SECRET))
    client.load_markets()
    return client


def margin_balance(client: ccxt.binance) -> dict:
    return client.fetch_balance({"type": "margin"})


def funded(url: str, usdt: float = 5_000.0) -> ccxt.binance:
    client = trader(url)
    client.transfer("USDT", usdt, "spot", "margin")
    return client


@pytest.fixture
def exchange(simulator, tmp_path: Path):
    with simulator(api_keys=((KEY, SECRET),), state_file=tmp_path / "state.json") as sim:
        yield sim


def test_a_transfer_moves_funds_from_spot_to_the_margin_wallet(exchange) -> None:
    client = funded(exchange.url, 4_000.0)
    assert client.fetch_balance()["free"]["USDT"] == pytest.approx(6_000.0)
    margin = margin_balance(client)
    assert margin["free"]["USDT"] == pytest.approx(4_000.0)
    assert margin["info"]["marginLevel"] == "999.00000000"


def test_a_short_borrows_sells_buys_back_and_repays_leaving_no_loan(exchange) -> None:
    client = funded(exchange.url)
    client.borrow_cross_margin("BTC", 0.01)
    margin = margin_balance(client)
    assert margin["BTC"]["debt"] == pytest.approx(0.01 * (1 + 0.00024 / 24))
    assert float(margin["info"]["marginLevel"]) > 3
    sold = client.create_order("BTC/USDT", "market", "sell", 0.01, params=CROSS)
    assert sold["status"] == "closed"
    assert client.fetch_balance()["free"].get("BTC", 0.0) == 0.0, "spot untouched"
    owed = margin_balance(client)["BTC"]["debt"]
    bought = client.create_order("BTC/USDT", "market", "buy", 0.0102, params=CROSS)
    client.repay_cross_margin("BTC", owed)
    margin = margin_balance(client)
    assert margin["BTC"]["debt"] == pytest.approx(0.0, abs=1e-12)
    assert margin["info"]["marginLevel"] == "999.00000000"
    orders = client.fetch_orders("BTC/USDT", params=CROSS)
    assert [(o["id"], o["status"]) for o in orders] == [
        (sold["id"], "closed"),
        (bought["id"], "closed"),
    ]
    assert client.fetch_orders("BTC/USDT") == [], "margin orders are not spot orders"


def test_interest_is_charged_on_borrowing_and_every_hour_after(simulator, tmp_path) -> None:
    with simulator(api_keys=((KEY, SECRET),), speed=3600.0) as sim:
        client = funded(sim.url)
        client.borrow_cross_margin("USDT", 1_000.0)
        first = client.fetch_borrow_interest("USDT")
        assert [row["info"]["type"] for row in first] == ["ON_BORROW"]
        assert first[0]["interest"] == pytest.approx(1_000.0 * 0.00024 / 24)
        assert first[0]["marginMode"] == "cross"
        time.sleep(2.2)  # at 3600x an hour of the market clock is a real second
        rows = client.fetch_borrow_interest("USDT")
        assert len(rows) >= 3
        assert {row["info"]["type"] for row in rows} == {"ON_BORROW", "PERIODIC"}
        debt = margin_balance(client)["USDT"]["debt"]
        later = client.fetch_borrow_interest("USDT")  # the clock may pass an hour between reads
        charged = [sum(row["interest"] for row in read) for read in (rows, later)]
        assert 1_000.0 + charged[0] - 1e-6 <= debt <= 1_000.0 + charged[1] + 1e-6
        rate = client.fetch_cross_borrow_rate("USDT")
        assert rate["rate"] == pytest.approx(0.00024)


def test_a_borrow_beyond_the_leverage_cap_is_refused(exchange) -> None:
    client = funded(exchange.url, 1_000.0)
    most = float(client.sapiGetMarginMaxBorrowable({"asset": "USDT"})["amount"])
    assert most == pytest.approx(2_000.0)  # 3x: owe at most twice the net assets
    with pytest.raises(ccxt.ExchangeError, match="exceed maximum borrow amount"):
        client.borrow_cross_margin("USDT", most * 1.01)
    assert margin_balance(client)["USDT"]["debt"] == 0.0


def test_margin_calls_on_an_account_without_margin_are_refused(simulator) -> None:
    with simulator(api_keys=((KEY, SECRET),), margin=None) as sim:
        client = trader(sim.url)
        with pytest.raises(ccxt.ExchangeError, match="Margin account does not exist"):
            client.borrow_cross_margin("BTC", 0.01)
        with pytest.raises(ccxt.ExchangeError, match="Margin account does not exist"):
            client.transfer("USDT", 100.0, "spot", "margin")
        assert client.fetch_balance()["free"]["USDT"] == pytest.approx(10_000.0)


def test_a_refuse_borrow_fault_refuses_the_next_borrow_only(exchange) -> None:
    client = funded(exchange.url)
    planted = httpx.post(
        f"{exchange.url}/sim/leg-fault", json={"symbol": "BTC", "kind": "refuse-borrow"}
    )
    assert planted.status_code == 200, planted.text
    with pytest.raises(ccxt.ExchangeError, match="enough asset"):
        client.borrow_cross_margin("BTC", 0.01)
    assert margin_balance(client)["BTC"]["debt"] == 0.0
    client.borrow_cross_margin("BTC", 0.01)
    assert margin_balance(client)["BTC"]["debt"] > 0.01


def test_a_reject_leg_fault_rejects_a_margin_order_as_a_spot_one(exchange) -> None:
    client = funded(exchange.url)
    httpx.post(f"{exchange.url}/sim/leg-fault", json={"symbol": "BTCUSDT", "kind": "reject"})
    with pytest.raises(ccxt.InvalidOrder):
        client.create_order("BTC/USDT", "market", "buy", 0.01, params=CROSS)
    assert client.fetch_orders("BTC/USDT", params=CROSS) == []


def test_repaying_more_than_is_owed_is_refused(exchange) -> None:
    client = funded(exchange.url)
    client.borrow_cross_margin("BTC", 0.01)
    with pytest.raises(ccxt.ExchangeError, match="exceeds borrow amount"):
        client.repay_cross_margin("BTC", 0.02)


def test_a_short_caught_by_a_spike_below_the_liquidation_level_is_closed_and_repaid(
    simulator,
) -> None:
    terms = MarginTerms(liquidation_level=1.4)
    with simulator(api_keys=((KEY, SECRET),), margin=terms) as sim:
        client = funded(sim.url, 1_000.0)
        mid = client.fetch_ticker("BTC/USDT")["last"]
        qty = float(client.amount_to_precision("BTC/USDT", 1_800.0 / mid))
        client.borrow_cross_margin("BTC", qty)
        client.create_order("BTC/USDT", "market", "sell", qty, params=CROSS)
        assert 1.4 < float(margin_balance(client)["info"]["marginLevel"]) < 1.6
        spike = {"symbol": "BTCUSDT", "bps": 1_500.0, "seconds": 60.0}
        assert httpx.post(f"{sim.url}/sim/plant", json=spike).status_code == 200
        margin = margin_balance(client)  # the next call settles: level 2800 / 2070 < 1.4
        assert margin["BTC"]["debt"] == pytest.approx(0.0, abs=1e-9)
        assert margin["info"]["marginLevel"] == "999.00000000"
        assert 0 < margin["total"]["USDT"] < 1_000.0  # the spike, fees and liquidation fee
        rows = client.sapiGetMarginForceLiquidationRec()["rows"]
        assert [(row["symbol"], row["side"]) for row in rows] == [("BTCUSDT", "BUY")]
        assert float(rows[0]["executedQty"]) >= qty


def test_loans_and_margin_orders_survive_a_restart_with_a_state_file(simulator, tmp_path) -> None:
    state = tmp_path / "state.json"
    with simulator(api_keys=((KEY, SECRET),), state_file=state) as sim:
        client = funded(sim.url)
        client.borrow_cross_margin("BTC", 0.01)
        client.create_order("BTC/USDT", "market", "sell", 0.01, params=CROSS)
        before = margin_balance(client)
    with simulator(api_keys=((KEY, SECRET),), state_file=state) as sim:
        after = margin_balance(trader(sim.url))
        assert after["BTC"]["debt"] == pytest.approx(before["BTC"]["debt"])
        assert after["USDT"]["free"] == pytest.approx(before["USDT"]["free"])
        assert len(trader(sim.url).fetch_orders("BTC/USDT", params=CROSS)) == 1

"""The simulator's signed endpoints through ccxt: balances, orders, fills, restarts."""

from __future__ import annotations

from pathlib import Path

import ccxt
import pytest

from pipeline.errors import ExchangeRejected
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import Credentials, create_ccxt
from pipeline.settings import ExchangeConfig

KEY, SECRET = "test-key", "test-secret"


def trader(url: str, key: str = KEY, secret: str = SECRET) -> ccxt.binance:
    client = create_ccxt("binance", ExchangeConfig(url=url), Credentials(key, secret))
    client.load_markets()
    return client


@pytest.fixture
def exchange(simulator, tmp_path: Path):
    state = tmp_path / "sim-state.json"
    with simulator(api_keys=((KEY, SECRET),), state_file=state) as sim:
        yield sim, state


def test_a_market_buy_fills_against_the_book_with_the_taker_fee(exchange) -> None:
    sim, _ = exchange
    client = trader(sim.url)
    ask = client.fetch_order_book("BTC/USDT", 5)["asks"][0][0]
    order = client.create_order("BTC/USDT", "market", "buy", 0.01)
    assert order["status"] == "closed"
    assert order["filled"] == 0.01
    assert order["average"] == ask
    balance = client.fetch_balance()["total"]
    assert balance["BTC"] == pytest.approx(0.01 * (1 - 0.001))
    assert balance["USDT"] == pytest.approx(10_000 - 0.01 * ask)
    assert len(client.fetch_my_trades("BTC/USDT")) == 1


def test_a_resting_limit_order_locks_funds_until_cancelled(exchange) -> None:
    sim, _ = exchange
    client = trader(sim.url)
    order = client.create_order("ETH/USDT", "limit", "buy", 1.0, 100.0)
    assert order["status"] == "open"
    assert client.fetch_balance()["used"]["USDT"] == pytest.approx(100.0)
    assert [o["id"] for o in client.fetch_open_orders("ETH/USDT")] == [order["id"]]
    assert client.cancel_order(order["id"], "ETH/USDT")["status"] == "canceled"
    balance = client.fetch_balance()
    assert balance["free"]["USDT"] == pytest.approx(10_000.0)
    assert client.fetch_open_orders("ETH/USDT") == []


def test_a_client_order_id_in_use_by_an_open_order_is_refused(exchange) -> None:
    sim, _ = exchange
    client = trader(sim.url)
    params = {"newClientOrderId": "model-3:ETHUSDT:1700000000000:enter"}
    client.create_order("ETH/USDT", "limit", "buy", 1.0, 100.0, params=params)
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        client.create_order("ETH/USDT", "limit", "buy", 1.0, 100.0, params=params)
    assert len(client.fetch_open_orders("ETH/USDT")) == 1


def test_an_order_beyond_the_balance_is_refused(exchange) -> None:
    sim, _ = exchange
    with pytest.raises(ccxt.InsufficientFunds):
        trader(sim.url).create_order("BTC/USDT", "market", "buy", 10.0)


def test_balances_and_orders_survive_a_restart_with_a_state_file(simulator, tmp_path) -> None:
    state = tmp_path / "state.json"
    with simulator(api_keys=((KEY, SECRET),), state_file=state) as sim:
        client = trader(sim.url)
        client.create_order("BTC/USDT", "market", "buy", 0.01)
        resting = client.create_order("ETH/USDT", "limit", "buy", 1.0, 100.0)
        before = client.fetch_balance()["total"]
    with simulator(api_keys=((KEY, SECRET),), state_file=state) as sim:
        client = trader(sim.url)
        assert client.fetch_balance()["total"] == before
        assert client.fetch_order(resting["id"], "ETH/USDT")["status"] == "open"


@pytest.mark.parametrize(
    ("key", "secret"), [(KEY, "wrong-secret"), ("unknown-key", SECRET)], ids=["secret", "key"]
)
def test_bad_credentials_fail_at_once_without_retries(exchange, key: str, secret: str) -> None:
    sim, _ = exchange
    client = ExchangeClient("binance", trader(sim.url, key, secret), RetryPolicy())
    with pytest.raises(ExchangeRejected, match="refused the API keys"):
        client.call("balance", client.client.fetch_balance)
    assert client.retries == 0

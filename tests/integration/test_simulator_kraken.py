"""The simulator speaking Kraken's REST API: ccxt's own `kraken` class, with only its
base URL changed, loads the markets under Kraken's names, reads 720 candles at most,
the book and the ticker, trades with Kraken's signature, nonce and client order ids,
and gets Kraken's errors as ccxt's typed exceptions."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import ccxt
import httpx
import pytest

from pipeline.exchanges.simulator.app import Running

KEY = "kraken-key"
SECRET = base64.b64encode(b"kraken-secret-of-sixty-four-bytes".ljust(64, b"!")).decode()
SYMBOL = "BTC/USDC"
CLIENT_ID = "0123456789abcdef0123456789abcdef"  # a short UUID: 32 hex digits


def kraken(url: str, secret: str = SECRET) -> ccxt.kraken:
    client = ccxt.kraken(
        {
            "apiKey": KEY,
            "secret": secret,
            "urls": {"api": {"public": url, "private": url}},
            "enableRateLimit": False,
        }
    )
    client.load_markets()
    return client


@pytest.fixture
def venue(simulator: Callable[..., AbstractContextManager[Running]]) -> Iterator[Running]:
    with simulator(
        exchange="kraken",
        dialect="kraken",
        shift_to_now=True,
        api_keys=((KEY, SECRET),),
        initial_balances=(("USDC", 10_000.0), ("BTC", 0.5)),
    ) as sim:
        yield sim


def test_markets_load_under_krakens_names_with_their_precision_and_minimums(venue) -> None:
    market = kraken(venue.url).market(SYMBOL)
    assert (market["id"], market["altname"]) == ("XBTUSDC", "XBTUSDC")
    assert (market["base"], market["quote"]) == ("BTC", "USDC")
    assert market["active"]
    assert market["precision"]["amount"] > 0
    assert market["limits"]["amount"]["min"] > 0
    assert market["taker"] == pytest.approx(0.001)


def test_ohlc_answers_only_the_720_most_recent_minutes_whatever_since_asks(venue) -> None:
    client = kraken(venue.url)
    now_ms = client.fetch_time()
    last_closed = now_ms - now_ms % 60_000 - 60_000
    deep = client.fetch_ohlcv(SYMBOL, "1m", since=now_ms - 3 * 24 * 3600 * 1000)
    assert 0 < len(deep) <= 720
    assert deep[0][0] >= last_closed - 719 * 60_000, "nothing older than the window"
    assert deep[-1][0] <= last_closed
    assert deep == client.fetch_ohlcv(SYMBOL, "1m"), "a deeper since changes nothing"
    recent = client.fetch_ohlcv(SYMBOL, "1m", since=deep[-5][0])
    assert [c[0] for c in recent] == [c[0] for c in deep[-5:]]


def test_the_book_and_the_ticker_are_the_simulated_markets(venue) -> None:
    client = kraken(venue.url)
    book = client.fetch_order_book(SYMBOL, 10)
    assert len(book["bids"]) == len(book["asks"]) == 10
    assert book["bids"][0][0] < book["asks"][0][0]
    ticker = client.fetch_ticker(SYMBOL)
    assert ticker["bid"] == book["bids"][0][0]
    assert ticker["ask"] == book["asks"][0][0]


def test_an_ioc_order_with_a_client_id_fills_and_is_found_by_that_id(venue) -> None:
    client = kraken(venue.url)
    ask = client.fetch_order_book(SYMBOL, 5)["asks"][0][0]
    placed = client.create_order(
        SYMBOL, "limit", "buy", 0.01, ask, {"clientOrderId": CLIENT_ID, "timeInForce": "IOC"}
    )
    assert placed["id"].startswith("O")
    assert placed["status"] == "closed"
    assert placed["filled"] == pytest.approx(0.01)
    [found] = client.fetch_closed_orders(SYMBOL, params={"clientOrderId": CLIENT_ID})
    assert (found["id"], found["clientOrderId"]) == (placed["id"], CLIENT_ID)
    assert client.fetch_order(placed["id"], SYMBOL)["filled"] == pytest.approx(0.01)
    [trade] = client.fetch_my_trades(SYMBOL)
    assert trade["order"] == placed["id"]
    balance = client.fetch_balance()
    assert balance["BTC"]["total"] > 0.5
    assert balance["USDC"]["total"] < 10_000.0


def test_a_resting_order_is_canceled_by_its_client_id_and_an_unknown_one_is_not_found(
    venue,
) -> None:
    client = kraken(venue.url)
    bid = client.fetch_order_book(SYMBOL, 5)["bids"][0][0]
    client.create_order(
        SYMBOL, "limit", "buy", 0.01, round(bid * 0.9, 2), {"clientOrderId": "rest-1"}
    )
    [resting] = client.fetch_open_orders(SYMBOL, params={"clientOrderId": "rest-1"})
    assert resting["status"] == "open"
    client.cancel_order(None, SYMBOL, {"clientOrderId": "rest-1"})
    assert client.fetch_open_orders(SYMBOL) == []
    [canceled] = client.fetch_closed_orders(SYMBOL, params={"clientOrderId": "rest-1"})
    assert canceled["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        client.cancel_order(None, SYMBOL, {"clientOrderId": "never-sent"})
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order("O00000-00000-099999", SYMBOL)


def test_a_client_id_kraken_would_refuse_is_refused(venue) -> None:
    client = kraken(venue.url)
    with pytest.raises(ccxt.BadRequest):
        client.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "xc" + "0" * 30})


def test_a_wrong_secret_a_nonce_going_back_and_an_unknown_pair_get_krakens_errors(
    venue,
) -> None:
    wrong = base64.b64encode(b"w" * 64).decode()
    with pytest.raises(ccxt.AuthenticationError):
        kraken(venue.url, wrong).fetch_balance()
    client = kraken(venue.url)
    client.fetch_balance()
    client.nonce = lambda: 1_000  # a clock far behind the last nonce
    with pytest.raises(ccxt.InvalidNonce):
        client.fetch_balance()
    answer = httpx.get(f"{venue.url}/0/public/Depth", params={"pair": "XBTEUR"}).json()
    assert answer["error"] == ["EQuery:Invalid asset pair"]


def test_a_planted_leg_fault_rejects_the_next_order_as_kraken_would(venue) -> None:
    client = kraken(venue.url)
    body = {"symbol": "BTCUSDC", "kind": "reject"}
    assert httpx.post(f"{venue.url}/sim/leg-fault", json=body).status_code == 200
    with pytest.raises(ccxt.InvalidOrder):
        client.create_order(SYMBOL, "market", "buy", 0.01)
    assert client.create_order(SYMBOL, "market", "buy", 0.01)["status"] == "closed"


def test_a_key_without_trading_permission_reads_but_is_refused_an_order(simulator) -> None:
    with simulator(
        exchange="kraken", dialect="kraken", shift_to_now=True,
        api_keys=((KEY, SECRET),), read_only_keys=(KEY,),
    ) as sim:  # fmt: skip
        client = kraken(sim.url)
        assert "USDT" in client.fetch_balance()["total"]
        with pytest.raises(ccxt.PermissionDenied):
            client.create_order(SYMBOL, "market", "buy", 0.01)


def test_calls_past_krakens_api_counter_are_refused_until_it_decays(simulator) -> None:
    with simulator(
        exchange="kraken", dialect="kraken", shift_to_now=True,
        api_keys=((KEY, SECRET),), kraken_counter=(3.0, 1.0),
        initial_balances=(("USDC", 10_000.0),),
    ) as sim:  # fmt: skip
        client = kraken(sim.url)
        for _ in range(3):
            client.fetch_balance()
        with pytest.raises(ccxt.DDoSProtection):
            client.fetch_balance()
        time.sleep(1.2)  # the counter decays by one a second
        assert "USDC" in client.fetch_balance()["total"]
        assert client.create_order(SYMBOL, "market", "buy", 0.01)["status"] == "closed"
        assert sim.exchange.counter.refused == 1

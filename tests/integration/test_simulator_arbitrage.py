"""The simulator as an arbitrage venue, through ccxt over HTTP: consistent books,
planted mispricings, leg faults, allOrders, and one simulator per recorded venue."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import ccxt
import pytest

from pipeline.exchanges.factory import Credentials, create_ccxt
from pipeline.exchanges.simulator.faults import request_weight
from pipeline.exchanges.simulator.market import Plant
from pipeline.settings import ExchangeConfig, timeframe_ms
from tests.support.exchange import exchange_client

KEY, SECRET = "test-key", "test-secret"
TRIANGLE = ("BTC/USDT", "ETH/USDT", "ETH/BTC")
VENUES = ("binance", "binanceus", "bitfinex", "bitstamp", "coinbase", "gemini", "kraken")


def control(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """Call one of the simulator's /sim/ endpoints; (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def trader(url: str, timeout_ms: int = 10_000) -> ccxt.binance:
    client = create_ccxt(
        "binance", ExchangeConfig(url=url), Credentials(KEY, SECRET), timeout_ms=timeout_ms
    )
    client.load_markets()
    return client


def mid(client: ccxt.binance, symbol: str) -> float:
    book = client.fetch_order_book(symbol, 5)
    return (book["bids"][0][0] + book["asks"][0][0]) / 2


def triangle_edge_bps(client: ccxt.binance) -> float:
    """USDT -> ETH -> BTC -> USDT at the mids, before fees, in basis points."""
    btc_usdt, eth_usdt, eth_btc = (mid(client, symbol) for symbol in TRIANGLE)
    return (eth_btc * btc_usdt / eth_usdt - 1) * 10_000


@pytest.fixture
def consistent(simulator):
    with simulator(shift_to_now=True, consistent_books=True, api_keys=((KEY, SECRET),)) as sim:
        yield sim


@pytest.fixture
def funded(simulator):
    with simulator(
        api_keys=((KEY, SECRET),), initial_balances=(("USDT", 10_000.0), ("BTC", 1.0))
    ) as sim:
        yield sim


def test_consistent_books_leave_no_triangle_edge_at_the_mids(consistent) -> None:
    assert abs(triangle_edge_bps(exchange_client(consistent.url).client)) < 0.5


def test_consistent_books_leave_the_klines_as_recorded(simulator) -> None:
    served = []
    for consistent_books in (False, True):
        with simulator(shift_to_now=True, consistent_books=consistent_books) as sim:
            exchange = exchange_client(sim.url)
            served.append(exchange.fetch_ohlcv("ETH/BTC", "1h", 1_600_000_000_000, 100))
    assert served[0] == served[1]
    assert len(served[0]) == 100


def test_a_40_bps_plant_makes_a_40_bps_triangle_edge_that_expires(consistent) -> None:
    client = exchange_client(consistent.url).client
    status, answer = control(
        consistent.url, "POST", "/sim/plant", {"symbol": "ETHBTC", "bps": 40.0, "seconds": 1.0}
    )
    assert status == 200
    assert [p["symbol"] for p in answer["plants"]] == ["ETHBTC"]
    assert triangle_edge_bps(client) == pytest.approx(40.0, abs=0.5)
    time.sleep(1.1)
    assert abs(triangle_edge_bps(client)) < 0.5
    assert control(consistent.url, "GET", "/sim/plant") == (200, {"plants": []})


def test_a_plant_given_at_start_is_live_from_the_first_request(simulator) -> None:
    plant = Plant("ETH/BTC", bps=-25.0, seconds=60.0)
    with simulator(shift_to_now=True, consistent_books=True, plants=(plant,)) as sim:
        edge = triangle_edge_bps(exchange_client(sim.url).client)
        _, listed = control(sim.url, "GET", "/sim/plant")
        assert control(sim.url, "DELETE", "/sim/plant") == (200, {"plants": []})
        after = triangle_edge_bps(exchange_client(sim.url).client)
    assert edge == pytest.approx(-25.0, abs=0.5)
    assert [(p["symbol"], p["bps"]) for p in listed["plants"]] == [("ETHBTC", -25.0)]
    assert abs(after) < 0.5


def test_orders_fill_against_the_planted_book(consistent) -> None:
    client = trader(consistent.url)
    before = client.fetch_order_book("ETH/USDT", 5)["asks"][0][0]
    control(consistent.url, "POST", "/sim/plant", {"symbol": "ETHUSDT", "bps": 100, "seconds": 60})
    order = client.create_order("ETH/USDT", "market", "buy", 0.01)
    assert order["average"] == pytest.approx(before * 1.01, rel=1e-4)


def test_a_plant_on_an_unknown_symbol_is_refused_with_a_clear_message(consistent) -> None:
    status, answer = control(
        consistent.url, "POST", "/sim/plant", {"symbol": "DOGEUSDT", "bps": 40, "seconds": 5}
    )
    assert status == 400
    assert "unknown symbol 'DOGEUSDT'" in answer["detail"]


def test_a_rejected_leg_raises_invalid_order_and_places_nothing(funded) -> None:
    client = trader(funded.url)
    status, answer = control(
        funded.url, "POST", "/sim/leg-fault", {"symbol": "ETHBTC", "kind": "reject"}
    )
    assert status == 200
    assert answer["leg_faults"][0]["kind"] == "reject"
    with pytest.raises(ccxt.InvalidOrder) as raised:
        client.create_order("ETH/BTC", "market", "buy", 0.1)
    assert not isinstance(raised.value, ccxt.InsufficientFunds)
    assert client.fetch_orders("ETH/BTC") == []
    assert control(funded.url, "GET", "/sim/leg-fault") == (200, {"leg_faults": []})
    assert control(funded.url, "GET", "/sim/stats")[1]["leg_faults"] == {"reject": 1}
    assert client.create_order("ETH/BTC", "market", "buy", 0.1)["status"] == "closed"


@pytest.mark.parametrize(
    ("kind", "price_factor", "params"),
    [("market", None, {}), ("limit", 1.01, {"timeInForce": "IOC"})],
    ids=["market", "ioc-limit"],
)
def test_a_partial_leg_fills_the_fraction_and_expires_the_rest(
    funded, kind: str, price_factor: float | None, params: dict
) -> None:
    client = trader(funded.url)
    price = client.fetch_order_book("ETH/BTC", 5)["asks"][0][0] * (price_factor or 1)
    fault = {"symbol": "ETHBTC", "kind": "partial", "fraction": 0.25}
    control(funded.url, "POST", "/sim/leg-fault", fault)
    price = float(client.price_to_precision("ETH/BTC", price)) if price_factor else None
    order = client.create_order("ETH/BTC", kind, "buy", 1.0, price, params)
    fetched = client.fetch_order(order["id"], "ETH/BTC")
    for seen in (order, fetched):
        assert (seen["status"], seen["filled"], seen["remaining"]) == ("expired", 0.25, 0.75)
    assert client.fetch_balance()["total"]["ETH"] == pytest.approx(0.25 * (1 - 0.001))


def test_a_delayed_leg_lands_after_the_client_timed_out_and_is_found_by_client_id(
    funded,
) -> None:
    client = trader(funded.url, timeout_ms=300)
    fault = {"symbol": "ETHBTC", "kind": "delay", "seconds": 1.0}
    control(funded.url, "POST", "/sim/leg-fault", fault)
    client_id = "arb-1:ETHBTC:leg2"
    with pytest.raises(ccxt.RequestTimeout):
        client.create_order("ETH/BTC", "market", "buy", 0.1, params={"newClientOrderId": client_id})
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order("", "ETH/BTC", {"origClientOrderId": client_id})
    time.sleep(1.0)
    order = client.fetch_order("", "ETH/BTC", {"origClientOrderId": client_id})
    assert (order["clientOrderId"], order["status"], order["filled"]) == (client_id, "closed", 0.1)
    assert control(funded.url, "GET", "/sim/stats")[1]["leg_faults"] == {"delay": 1}


def test_fetch_orders_lists_every_order_of_the_symbol_from_all_orders(funded) -> None:
    client = trader(funded.url)
    filled = client.create_order("ETH/USDT", "market", "buy", 0.01)
    resting = client.create_order("ETH/USDT", "limit", "buy", 1.0, 100.0)
    cancelled = client.create_order("ETH/USDT", "limit", "buy", 1.0, 90.0)
    client.cancel_order(cancelled["id"], "ETH/USDT")
    client.create_order("ETH/BTC", "market", "buy", 0.1)
    orders = client.fetch_orders("ETH/USDT")
    assert [(o["id"], o["status"]) for o in orders] == [
        (filled["id"], "closed"),
        (resting["id"], "open"),
        (cancelled["id"], "canceled"),
    ]
    assert [o["id"] for o in client.fetch_orders("ETH/USDT", limit=1)] == [cancelled["id"]]
    assert request_weight("/api/v3/allOrders", {}) == 20


def recorded_markets(data_dir: Path, venue: str) -> dict[str, set[str]]:
    """Symbol -> timeframes of the candle files recorded for `venue` (trades files aside)."""
    found: dict[str, set[str]] = {}
    for path in data_dir.iterdir():
        if match := re.match(rf"{venue}_(\w+)-(\w+)_(\d+[mhd])\.csv", path.name):
            found.setdefault(f"{match[1]}/{match[2]}", set()).add(match[3])
    return found


@pytest.mark.parametrize("venue", VENUES)
def test_each_recorded_venue_serves_its_markets_candles_and_books(
    simulator, data_dir: Path, venue: str
) -> None:
    recorded = recorded_markets(data_dir, venue)
    with simulator(exchange=venue, shift_to_now=True) as sim:
        exchange = exchange_client(sim.url, name=venue)
        assert set(exchange.client.markets) == set(recorded)
        for symbol, timeframes in recorded.items():
            for timeframe in timeframes:
                since = exchange.server_time() - 10 * timeframe_ms(timeframe)
                assert len(exchange.fetch_ohlcv(symbol, timeframe, since, 5)) == 5
            book = exchange.client.fetch_order_book(symbol, 5)
            assert 0 < book["bids"][0][0] < book["asks"][0][0]

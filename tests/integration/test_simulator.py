"""The exchange simulator, driven by ccxt's own binance class over real HTTP."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.errors import ExchangeRejected, TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import create_ccxt
from pipeline.exchanges.simulator.faults import GENERIC_FAULTS
from pipeline.settings import ExchangeConfig
from tests.support.exchange import exchange_client

FIRST_BTC_HOUR = 1502942400000  # 2017-08-17T04:00Z, the first recorded binance BTC/USDT hour


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def recorded_rows(data_dir: Path, name: str, n: int) -> list[list[str]]:
    with gzip.open(data_dir / name, "rt") as handle:
        lines = handle.read().splitlines()[1 : n + 1]
    return [line.split(",") for line in lines]


def test_ccxt_binance_loads_the_recorded_markets_with_filters(simulator) -> None:
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        markets = exchange.client.markets
    assert {"BTC/USDT", "ETH/USDT", "ETH/BTC", "SOL/USDT", "SOL/BTC"} <= set(markets)
    btc = markets["BTC/USDT"]
    assert btc["spot"]
    assert btc["active"]
    assert btc["precision"]["price"] > 0
    assert btc["precision"]["amount"] > 0
    assert btc["limits"]["cost"]["min"] == 5.0
    assert exchange.budget == 6000


def test_klines_serve_the_recorded_values_exactly(simulator, data_dir: Path) -> None:
    with simulator() as sim:
        rows = exchange_client(sim.url).fetch_ohlcv("BTC/USDT", "1h", FIRST_BTC_HOUR, 5)
    recorded = recorded_rows(data_dir, "binance_BTC-USDT_1h.csv.gz", 5)
    assert [[int(r[0]), *map(float, r[1:])] for r in recorded] == rows


def test_a_page_holds_at_most_1000_candles_from_the_start_time(simulator) -> None:
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        rows = exchange.fetch_ohlcv("ETH/USDT", "1h", FIRST_BTC_HOUR, 1000)
        status, _, body = get(f"{sim.url}/api/v3/klines?symbol=ETHUSDT&interval=1h&limit=1001")
    assert len(rows) == 1000
    assert rows[0][0] == FIRST_BTC_HOUR
    assert status == 400
    assert json.loads(body)["code"] == -1130


def test_shifted_history_serves_only_closed_candles_and_keeps_coming(simulator) -> None:
    with simulator(shift_to_now=True, speed=3600.0) as sim:
        exchange = exchange_client(sim.url)
        since = exchange.server_time() - 5 * 3_600_000
        before = exchange.fetch_ohlcv("BTC/USDT", "1h", since, 1000)
        first_now = exchange.server_time()
        time.sleep(2.5)  # two and a half simulated hours
        after = exchange.fetch_ohlcv("BTC/USDT", "1h", since, 1000)
        now = exchange.server_time()
    assert all(row[0] + 3_600_000 <= first_now for row in before)
    assert all(row[0] + 3_600_000 <= now for row in after)
    assert len(after) >= len(before) + 2
    replayed = after[len(before) :]
    assert all(row[3] <= min(row[1], row[4]) and row[2] >= max(row[1], row[4]) for row in replayed)
    assert 0.5 < replayed[0][4] / before[-1][4] < 2  # the replay continues near the last price


def test_a_restart_with_the_same_history_end_serves_the_same_candles_at_the_same_times(
    simulator,
) -> None:
    end = (int(time.time() * 1000) - 5 * 86_400_000) // 3_600_000 * 3_600_000
    since = end - 48 * 3_600_000
    served = []
    for _ in range(2):
        with simulator(shift_to_now=True, history_end_ms=end) as sim:
            served.append(exchange_client(sim.url).fetch_ohlcv("BTC/USDT", "1h", since, 48))
    assert served[0] == served[1]
    assert len(served[0]) == 48
    assert served[0][-1][0] == end - 3_600_000  # the recording's last candle closes at `end`


def test_the_replay_seam_opens_where_the_recording_closed(simulator) -> None:
    end = (int(time.time() * 1000) - 5 * 3_600_000) // 3_600_000 * 3_600_000
    with simulator(shift_to_now=True, history_end_ms=end) as sim:
        rows = exchange_client(sim.url).fetch_ohlcv("BTC/USDT", "1h", end - 2 * 3_600_000, 4)
    before, seam = rows[1], rows[2]
    assert seam[0] == end  # the first replayed candle
    assert seam[1] == pytest.approx(before[4])
    assert seam[2] <= max(seam[1], seam[4]) * (1 + 1e-9)
    assert 0.5 < seam[4] / before[4] < 2


def test_every_response_reports_the_used_weight(simulator) -> None:
    with simulator() as sim:
        _, first, _ = get(f"{sim.url}/api/v3/exchangeInfo")
        _, second, _ = get(f"{sim.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=10")
    assert int(second["x-mbx-used-weight-1m"]) - int(first["x-mbx-used-weight-1m"]) == 2


@pytest.mark.parametrize("kind", [k for k in GENERIC_FAULTS if k != "latency"])
def test_each_fault_reaches_the_client_as_a_temporary_error(simulator, kind: str) -> None:
    with (
        simulator() as sim,
        simulator(fault_rate=1.0, fault_kinds=(kind,), fault_timeout_seconds=2.0) as faulty_sim,
    ):
        exchange = exchange_client(sim.url, timeout_ms=1000)
        exchange.client.urls["api"]["public"] = f"{faulty_sim.url}/api/v3"
        exchange.retry = RetryPolicy(attempts=1)
        with pytest.raises(TemporaryExchangeError):
            exchange.fetch_ohlcv("BTC/USDT", "1h", FIRST_BTC_HOUR, 10)


def test_a_faulty_exchange_is_survived_by_retrying(simulator) -> None:
    with simulator(fault_rate=0.5, seed=11, fault_timeout_seconds=1.5) as sim:
        exchange = exchange_client(sim.url, timeout_ms=1000)
        pages = [
            exchange.fetch_ohlcv("BTC/USDT", "1h", FIRST_BTC_HOUR + i * 3_600_000_000, 1000)
            for i in range(4)
        ]
    assert [len(page) for page in pages] == [1000, 1000, 1000, 1000] or exchange.retries > 0
    assert exchange.retries > 0


def test_an_unknown_symbol_fails_at_once_without_retries(simulator) -> None:
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        with pytest.raises(ExchangeRejected, match="DOGE/USDT"):
            exchange.market("DOGE/USDT")
        with pytest.raises(ExchangeRejected, match="does not know this symbol"):
            exchange.call(
                "raw",
                lambda: exchange.client.publicGetKlines({"symbol": "DOGEUSDT", "interval": "1h"}),
            )
    assert exchange.retries == 0


def test_an_unknown_ccxt_exchange_is_a_configuration_error() -> None:
    from pipeline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_EXCHANGES__FOO__CCXT_ID"):
        create_ccxt("foo", ExchangeConfig(ccxt_id="nosuchexchange"))


def test_the_book_sits_around_the_last_close_with_the_documented_spread(simulator) -> None:
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        book = exchange.client.fetch_order_book("ETH/BTC", limit=5)
        ticker = exchange.client.fetch_ticker("ETH/BTC")
    best_bid, best_ask = book["bids"][0][0], book["asks"][0][0]
    assert best_bid < ticker["last"] < best_ask
    assert (best_ask - best_bid) / ticker["last"] < 0.001
    assert [level[0] for level in book["bids"]] == sorted(
        (lv[0] for lv in book["bids"]), reverse=True
    )


def test_a_malformed_market_list_is_retried_not_taken_as_no_markets(simulator) -> None:
    with simulator(fault_rate=1.0, fault_kinds=("malformed",)) as sim:
        client = create_ccxt("binance", ExchangeConfig(url=sim.url), timeout_ms=1000)
        exchange = ExchangeClient("binance", client, RetryPolicy(attempts=1))
        with pytest.raises(TemporaryExchangeError, match="malformed or empty market list"):
            exchange.load_markets()
    with simulator(fault_rate=0.5, fault_kinds=("malformed",), seed=1) as sim:
        exchange = exchange_client(sim.url)
        assert "ETH/BTC" in exchange.client.markets

"""The exchange adapter without an exchange: pacing to the stated budget, retry waits,
credentials."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError, ExchangeRejected, TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import (
    CAPABILITIES,
    Capability,
    Credentials,
    credentials_from_reference,
)
from pipeline.exchanges.pacing import WeightPacer
from pipeline.exchanges.translation import translated

HEADER = "x-mbx-used-weight-1m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 600.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pacer_learns_each_request_weight_from_the_header() -> None:
    clock = FakeClock()
    pacer = WeightPacer(HEADER, clock=clock, sleep=clock.sleep)
    pacer.budget = 100
    for kind, used in (("exchangeInfo", 20), ("time", 21), ("klines", 23), ("klines", 25)):
        pacer.before(kind)
        pacer.after(kind, {HEADER.upper(): str(used)})
    assert pacer.weights == {"exchangeInfo": 20, "time": 1, "klines": 2}
    assert clock.slept == []


def test_the_pacer_waits_for_the_next_minute_instead_of_passing_the_budget() -> None:
    clock = FakeClock()
    pacer = WeightPacer(HEADER, clock=clock, sleep=clock.sleep)
    pacer.budget = 10
    used = 0
    for _ in range(8):
        pacer.before("klines")
        minute = int(clock() // 60)
        used = (used if minute == pacer.window else 0) + 2
        assert used <= 10
        pacer.after("klines", {HEADER: str(used)})
        clock.now += 0.1
    assert len(clock.slept) >= 1
    assert all(0 < s <= 60.05 for s in clock.slept)


def test_without_a_stated_budget_the_pacer_never_waits() -> None:
    clock = FakeClock()
    pacer = WeightPacer(HEADER, clock=clock, sleep=clock.sleep)
    for used in range(2, 2000, 2):
        pacer.before("klines")
        pacer.after("klines", {HEADER: str(used)})
    assert clock.slept == []


def test_a_retry_waits_at_least_what_retry_after_asked() -> None:
    from tenacity import RetryCallState

    exchange = ExchangeClient.__new__(ExchangeClient)
    exchange.retry = RetryPolicy(initial_seconds=0.01, max_seconds=0.1)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.set_exception((TemporaryExchangeError, TemporaryExchangeError("429", 7.0), None))
    assert exchange._wait(state) >= 7.0


def test_env_credentials_are_read_from_the_given_environment_and_never_shown() -> None:
    creds = credentials_from_reference(
        "env:BINANCE", {"BINANCE_API_KEY": "key-123", "BINANCE_SECRET": "s3cret"}
    )
    assert creds == Credentials("key-123", "s3cret")
    assert "s3cret" not in repr(creds)
    assert "key-123" not in repr(creds)


def test_missing_env_credentials_name_the_variables_to_set() -> None:
    with pytest.raises(ConfigurationError, match="BINANCE_API_KEY and BINANCE_SECRET"):
        credentials_from_reference("env:BINANCE", {})


def test_no_reference_means_no_credentials() -> None:
    assert credentials_from_reference(None, {}) is None


def test_binance_names_an_existing_order_by_client_id_as_orig_client_order_id() -> None:
    assert CAPABILITIES["binance"].client_id_param == "origClientOrderId"
    assert CAPABILITIES.get("kraken", Capability()).client_id_param == "clientOrderId"


def test_a_key_without_permission_is_refused_naming_the_exchange_and_the_fix() -> None:
    import ccxt

    refused = pytest.raises(ExchangeRejected, match="kraken refused: the API key lacks the perm")
    with refused, translated("BTC/USDC buy order", name="kraken"):
        raise ccxt.PermissionDenied('kraken {"error":["EGeneral:Permission denied"]}')


def test_kraken_is_looked_up_by_listing_and_reaches_back_720_candles() -> None:
    kraken = CAPABILITIES["kraken"]
    assert kraken.lookup_by_listing
    assert kraken.ohlcv_window == 720
    assert kraken.new_client_id_param == "clientOrderId"

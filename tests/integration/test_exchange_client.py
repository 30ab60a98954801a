"""The exchange adapter: pacing to the stated budget, retry waits, credentials."""

from __future__ import annotations

import pytest

from pipeline.errors import TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.translation import translated


def test_an_order_the_exchange_does_not_have_is_translated_to_order_not_found() -> None:
    import ccxt

    from pipeline.errors import ExchangeRejected, OrderNotFound

    with (
        pytest.raises(OrderNotFound, match=r"binance: BTC/USDT order x-1: .*no such order"),
        translated("binance: BTC/USDT order x-1"),
    ):
        raise ccxt.OrderNotFound("binance Order does not exist.")
    assert issubclass(OrderNotFound, ExchangeRejected)


def nothing_listens() -> str:
    """The URL of a local port where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_exchange_nothing_answers_for_is_refused_within_seconds_naming_the_url_and_fix(
    tmp_path,
) -> None:
    import time

    from pipeline.exchanges.client import open_exchange
    from pipeline.exchanges.translation import ExchangeUnreachable
    from pipeline.settings import Settings

    url = nothing_listens()
    settings = Settings(var_dir=tmp_path, exchanges={"binance": {"url": url}})
    started = time.monotonic()
    with pytest.raises(ExchangeUnreachable) as refused:
        open_exchange(settings, "binance")
    assert time.monotonic() - started < 10
    assert isinstance(refused.value, TemporaryExchangeError)
    message = str(refused.value)
    assert message.startswith(f"binance: load markets: nothing answers at {url}")
    assert "connection refused" in message
    assert "CRYPTOBOTS_EXCHANGES__BINANCE__URL" in message


def test_an_exchange_that_stops_answering_later_is_still_retried_as_before() -> None:
    from pipeline.exchanges.factory import create_ccxt
    from pipeline.exchanges.translation import ExchangeUnreachable
    from pipeline.settings import ExchangeConfig

    client = create_ccxt("binance", ExchangeConfig(ccxt_id="binance", url=nothing_listens()))
    policy = RetryPolicy(attempts=4, initial_seconds=0.01, max_seconds=0.02, total_seconds=30)
    exchange = ExchangeClient("binance", client, policy)
    with pytest.raises(ExchangeUnreachable):
        exchange.server_time()
    assert exchange.retries == policy.attempts - 1


def test_a_connection_that_breaks_after_it_opened_is_a_plain_temporary_error() -> None:
    import ccxt

    from pipeline.exchanges.translation import ExchangeUnreachable

    broken = ccxt.NetworkError("binance GET /api/v3/time")
    broken.__cause__ = ConnectionResetError("reset by peer")
    with pytest.raises(TemporaryExchangeError) as raised, translated("binance: time"):
        raise broken
    assert not isinstance(raised.value, ExchangeUnreachable)

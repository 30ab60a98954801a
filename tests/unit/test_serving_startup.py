"""`python -m serving` refuses a malformed flag, and a market flag with the arbitrage
strategy, and a cross pair on a venue that is not configured, before anything is taken
or started."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError
from pipeline.settings import load_settings
from serving.cli import main
from serving.startup import build_cross

MARKET = "binance:BTC/USDT:1h"


# -- 6. a malformed flag --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--market", "binance:BTCUSDT:1h"], "argument --market: symbol 'BTCUSDT' is not valid"),
        (["--market", "BTC/USDT"], "argument --market: market 'BTC/USDT' is not valid"),
        (["--port", "70000"], "argument --port: '70000' is not a TCP port"),
        (["--port", "http"], "argument --port: 'http' is not a whole number"),
    ],
)
def test_a_malformed_flag_is_refused_by_argparse_naming_the_flag_as_typed(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert says in error
    assert len(error.strip().splitlines()) == 2
    for pydantic_noise in ("CRYPTOBOTS_SERVING__MARKETS", "[type=", "errors.pydantic.dev"):
        assert pydantic_noise not in error


def test_a_market_flag_with_the_arbitrage_strategy_is_refused_naming_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--strategy", "arbitrage", "--market", MARKET])
    assert exited.value.code == 2
    assert "CRYPTOBOTS_ARBITRAGE__SYMBOLS" in capsys.readouterr().err


def test_a_cross_pair_naming_an_unconfigured_venue_is_refused_naming_it_and_the_setting() -> None:
    settings = load_settings(
        arbitrage={"cross_markets": ["binance:BTC/USDT:1m", "bitstamp:BTC/USDT:1m"]}
    )
    with pytest.raises(ConfigurationError) as refused:
        build_cross(settings, live=False, environ={})
    assert "bitstamp:BTC/USDT: venue 'bitstamp' is not configured" in str(refused.value)
    assert "CRYPTOBOTS_ARBITRAGE__CROSS_MARKETS" in str(refused.value)

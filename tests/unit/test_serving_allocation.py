"""Sharing one exchange account's balances among the markets a live trader trades."""

from __future__ import annotations

import pytest

from serving.model.allocation import split_balances

BTC, ETH, ETHBTC = "binance:BTC/USDT:1h", "binance:ETH/USDT:1h", "binance:ETH/BTC:1h"
ASSETS = {BTC: ("BTC", "USDT"), ETH: ("ETH", "USDT")}


def test_new_markets_split_a_shared_quote_equally_and_keep_their_own_base() -> None:
    shares = split_balances({"USDT": 10_000.0, "BTC": 0.5, "ETH": 2.0}, ASSETS, {})
    assert shares == {BTC: (0.5, 5_000.0), ETH: (2.0, 5_000.0)}


def test_known_markets_keep_the_proportions_their_trades_made() -> None:
    held = {BTC: (0.1, 3_000.0), ETH: (0.0, 5_000.0)}
    shares = split_balances({"USDT": 8_000.0, "BTC": 0.1}, ASSETS, held)
    assert shares == {BTC: (0.1, pytest.approx(3_000.0)), ETH: (0.0, pytest.approx(5_000.0))}


def test_a_difference_with_the_exchange_is_spread_over_the_markets_holding_the_asset() -> None:
    held = {BTC: (0.0, 3_000.0), ETH: (0.0, 1_000.0)}
    shares = split_balances({"USDT": 3_600.0}, ASSETS, held)
    assert shares[BTC][1] == pytest.approx(2_700.0)
    assert shares[ETH][1] == pytest.approx(900.0)


def test_a_market_added_later_gets_an_equal_share() -> None:
    held = {BTC: (0.0, 10_000.0)}
    shares = split_balances({"USDT": 10_000.0}, ASSETS, held)
    assert shares[BTC][1] == shares[ETH][1] == pytest.approx(5_000.0)


def test_an_asset_that_is_base_of_one_market_and_quote_of_another_is_shared_too() -> None:
    assets = {BTC: ("BTC", "USDT"), ETHBTC: ("ETH", "BTC")}
    shares = split_balances({"USDT": 1_000.0, "BTC": 1.0, "ETH": 0.0}, assets, {})
    assert shares[BTC] == (0.5, 1_000.0)
    assert shares[ETHBTC] == (0.0, 0.5)
    assert shares[BTC][0] + shares[ETHBTC][1] == pytest.approx(1.0)


def test_a_margin_accounts_short_is_split_as_a_negative_share() -> None:
    assets = {"binance:BTC/USDT:1h": ("BTC", "USDT"), "binance:BTC/USDT:4h": ("BTC", "USDT")}
    held = {"binance:BTC/USDT:1h": (-0.3, 4_000.0), "binance:BTC/USDT:4h": (-0.1, 6_000.0)}
    shares = split_balances({"USDT": 10_000.0, "BTC": -0.4}, assets, held, signed=True)
    assert shares["binance:BTC/USDT:1h"] == pytest.approx((-0.3, 4_000.0))
    assert shares["binance:BTC/USDT:4h"] == pytest.approx((-0.1, 6_000.0))


def test_a_spot_account_never_gets_a_negative_share() -> None:
    shares = split_balances({"USDT": 100.0, "BTC": -0.4}, {"m": ("BTC", "USDT")}, {})
    assert shares["m"] == (0.0, 100.0)

"""Sizing a cross trade on two books and choosing the exit of a one-sided fill."""

from __future__ import annotations

import re

import pytest

from serving.cross.exposure import exit_amount, exits_for
from serving.cross.pair import Leg, depth_size, leg_client_id

FEE = 0.001


def test_the_size_stops_at_the_first_pair_of_levels_that_no_longer_pays() -> None:
    asks = [[100.0, 1.0], [100.1, 2.0], [101.0, 5.0]]
    bids = [[101.0, 0.5], [100.9, 3.0], [100.0, 5.0]]
    size, worst_ask, worst_bid = depth_size(asks, bids, FEE)
    # 100 -> 101 and 100.1 -> 100.9 pay after 2 x 10 bps; 101 -> 100.9 does not
    assert size == pytest.approx(3.0)
    assert (worst_ask, worst_bid) == (100.1, 100.9)


def test_books_that_do_not_pay_after_fees_trade_nothing() -> None:
    assert depth_size([[100.0, 1.0]], [[100.15, 1.0]], FEE) == (0.0, 0.0, 0.0)


def test_base_left_over_sells_where_the_bid_is_better() -> None:
    buy = Leg("a", "BTC/USDC", "buy", 1.0, 100.0, "x", 0)
    sell = Leg("b", "BTC/USDC", "sell", 1.0, 101.0, "y", 1)
    books = {"a": (99.0, 99.1), "b": (100.5, 100.6)}
    assert exits_for(0.5, buy, sell, books, FEE)[0] == ("b", "BTC/USDC", "sell")
    books = {"a": (101.0, 101.1), "b": (100.5, 100.6)}
    assert exits_for(0.5, buy, sell, books, FEE)[0] == ("a", "BTC/USDC", "sell")


def test_base_missing_buys_where_the_ask_is_lower_and_covers_the_fee() -> None:
    buy = Leg("a", "BTC/USDC", "buy", 1.0, 100.0, "x", 0)
    sell = Leg("b", "BTC/USDC", "sell", 1.0, 101.0, "y", 1)
    books = {"a": (99.0, 99.1), "b": (100.5, 100.6)}
    assert exits_for(-0.5, buy, sell, books, FEE)[0] == ("a", "BTC/USDC", "buy")
    assert exit_amount(-0.5, "buy", FEE) == pytest.approx(0.5 / 0.999)


def test_leg_ids_are_deterministic_distinct_and_fit_binance_and_kraken() -> None:
    ids = {leg_client_id("trade-1", seq) for seq in (0, 1, 10, 11)}
    assert len(ids) == 4
    assert leg_client_id("trade-1", 0) == leg_client_id("trade-1", 0)
    assert all(len(i) <= 36 and i.startswith("cc") for i in ids), "Binance: at most 36"
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), "Kraken: 32 hex digits"

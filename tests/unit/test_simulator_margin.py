"""The simulator's cross-margin arithmetic: loans, hourly interest, leverage, repay order."""

from __future__ import annotations

import pytest

from pipeline.exchanges.simulator.accounts import Accounts
from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.margin import HOUR_MS
from pipeline.exchanges.simulator.records import MarginTerms

KEY = "k"
PRICES = {"USDT": 1.0, "BTC": 50_000.0}
TERMS = MarginTerms(daily_rate=0.024)  # 0.1% an hour: round numbers


def funded(usdt: float = 1_000.0) -> Accounts:
    accounts = Accounts({KEY: "s"}, margin=TERMS)
    accounts.transfer(KEY, {"type": "MAIN_MARGIN", "asset": "USDT", "amount": str(usdt)}, 0, PRICES)
    return accounts


def test_a_borrow_is_charged_one_hour_at_once_and_each_hour_begun_after() -> None:
    accounts = funded()
    accounts.borrow(KEY, "USDT", 1_000.0, 10 * HOUR_MS + 5, PRICES)
    wallet = accounts.margin_wallet(KEY)
    assert wallet.interest["USDT"] == pytest.approx(1.0)
    accounts._charge_interest(wallet, 10 * HOUR_MS + 100)  # same hour: nothing more
    assert wallet.interest["USDT"] == pytest.approx(1.0)
    accounts._charge_interest(wallet, 13 * HOUR_MS + 1)  # hours 11, 12 and 13 began
    assert wallet.interest["USDT"] == pytest.approx(4.0)
    assert [c.type for c in wallet.charges] == ["ON_BORROW"] + ["PERIODIC"] * 3


def test_at_most_twice_the_net_assets_may_be_owed_at_three_times_leverage() -> None:
    accounts = funded(1_000.0)
    wallet = accounts.margin_wallet(KEY)
    assert accounts.max_borrowable(wallet, "BTC", PRICES) == pytest.approx(2_000.0 / 50_000)
    with pytest.raises(BinanceError) as refused:
        accounts.borrow(KEY, "BTC", 0.041, 0, PRICES)
    assert refused.value.code == -3006
    assert wallet.borrowed == {}


def test_a_repay_pays_the_interest_before_the_loan() -> None:
    accounts = funded()
    accounts.borrow(KEY, "USDT", 100.0, 0, PRICES)
    accounts.repay(KEY, "USDT", 50.0, 0)
    wallet = accounts.margin_wallet(KEY)
    assert wallet.interest["USDT"] == pytest.approx(0.0)
    assert wallet.borrowed["USDT"] == pytest.approx(100.0 - (50.0 - 0.1))
    assert (wallet.loans[-1].interest, wallet.loans[-1].principal) == pytest.approx((0.1, 49.9))


def test_moving_funds_out_past_the_leverage_cap_is_refused_and_changes_nothing() -> None:
    accounts = funded(1_000.0)
    accounts.borrow(KEY, "USDT", 1_500.0, 0, PRICES)
    with pytest.raises(BinanceError) as refused:
        accounts.transfer(KEY, {"type": "MARGIN_MAIN", "asset": "USDT", "amount": "600"}, 0, PRICES)
    assert refused.value.code == -3020
    assert accounts.margin_wallet(KEY).balances["USDT"] == pytest.approx(2_500.0)
    assert accounts.account(KEY).balances["USDT"] == pytest.approx(9_000.0)


def test_an_exchange_without_margin_answers_every_margin_call_with_no_account() -> None:
    accounts = Accounts({KEY: "s"})
    with pytest.raises(BinanceError) as refused:
        accounts.borrow(KEY, "USDT", 1.0, 0, PRICES)
    assert refused.value.code == -3003

"""The arbitrage trader's risk gate (the daily loss limit, cycles per hour and notional) and
its dust: what is derived, what a sweep sends, and when."""

from __future__ import annotations

import pytest

from pipeline.settings import load_settings
from serving.arbitrage.dust import DustLedger, plan_sweep, spendable, sweep_id
from serving.arbitrage.risk import CycleGate
from serving.kernel.market_rules import MarketRules


def test_gate_halts_for_the_day_at_the_loss_limit() -> None:
    gate = CycleGate(load_settings().arbitrage.model_copy(update={"daily_loss_limit": 5.0}), "a")
    now = 1_700_000_000_000
    assert gate.check(100.0, now) is None
    gate.finished(-6.0, leg_failed=True, now_ms=now)
    assert "daily loss" in (gate.check(100.0, now + 1) or "")
    assert gate.check(100.0, now + 86_400_000) is None


def test_gate_caps_cycles_per_hour_and_notional() -> None:
    settings = load_settings().arbitrage.model_copy(
        update={"max_cycles_per_hour": 2, "max_cycle_notional": 50.0}
    )
    gate = CycleGate(settings, "a")
    now = 1_700_000_000_000
    assert "max_cycle_notional" in (gate.check(60.0, now) or "")
    gate.started(now)
    gate.started(now + 1)
    assert "last hour" in (gate.check(10.0, now + 2) or "")
    assert gate.check(10.0, now + 3_600_001) is None


# -- dust ---------------------------------------------------------------------------------

RULES = {
    "BTC/USDT": MarketRules(amount_step=1e-5, price_step=0.01, min_amount=1e-5, min_cost=5.0),
    "ETH/BTC": MarketRules(amount_step=1e-4, price_step=1e-8, min_amount=1e-4, min_cost=5e-5),
    "USDT/TRY": MarketRules(amount_step=1.0, price_step=0.01, min_amount=1.0, min_cost=400.0),
}
BOOKS = {
    "BTC/USDT": {"bids": [[50_000.0, 1.0]], "asks": [[50_001.0, 1.0]]},
    "ETH/BTC": {"bids": [[0.05, 10.0]], "asks": [[0.0501, 10.0]]},
    "USDT/TRY": {"bids": [[30.0, 1e6]], "asks": [[30.1, 1e6]]},
}
FEES = dict.fromkeys(RULES, 0.001)


def test_a_sweep_sells_the_dust_rounded_down_to_the_step_once_it_passes_the_minimums() -> None:
    assert plan_sweep("BTC", 0.0000999, "USDT", RULES, BOOKS, FEES) is None  # 4.5 USDT < 5
    sweep = plan_sweep("BTC", 0.0001099, "USDT", RULES, BOOKS, FEES)
    assert sweep is not None
    assert (sweep.symbol, sweep.side, sweep.amount, sweep.spends) == (
        "BTC/USDT",
        "sell",
        0.0001,
        0.0001,
    )
    assert sweep.home == pytest.approx(5.0 * 0.999)
    assert plan_sweep("ETH", 1.0, "USDT", RULES, BOOKS, FEES) is None  # no market to USDT


def test_an_exit_order_below_its_markets_minimum_cost_is_not_spendable_there() -> None:
    # 0.00009 BTC is 4.5 USDT, under BTC/USDT's 5 USDT minimum, but 0.0018 ETH on ETH/BTC
    btc = 0.00009
    assert not spendable("BTC/USDT", RULES["BTC/USDT"], "BTC", btc, 50_000.0)
    assert spendable("ETH/BTC", RULES["ETH/BTC"], "BTC", btc, 0.05)
    assert spendable("BTC/USDT", RULES["BTC/USDT"], "BTC", 0.0001, 50_000.0)
    assert not spendable("ETH/BTC", RULES["ETH/BTC"], "BTC", btc, None), "a buy needs a price"
    assert not spendable("ETH/BTC", RULES["ETH/BTC"], "USDT", 100.0, 0.05), "not its currency"


def test_a_sweep_buys_home_with_dust_that_is_a_markets_quote_and_never_spends_more() -> None:
    assert plan_sweep("TRY", 390.0, "USDT", RULES, BOOKS, FEES) is None  # 12 USDT cost 361 TRY
    sweep = plan_sweep("TRY", 650.0, "USDT", RULES, BOOKS, FEES)
    assert sweep is not None
    assert (sweep.symbol, sweep.side, sweep.amount) == ("USDT/TRY", "buy", 21.0)
    assert sweep.spends == pytest.approx(21 * 30.1)
    assert sweep.spends <= 650.0
    assert sweep.home == pytest.approx(21 * 0.999)
    below = MarketRules(amount_step=1.0, price_step=0.01, min_amount=30.0, min_cost=None)
    assert plan_sweep("TRY", 650.0, "USDT", {"USDT/TRY": below}, BOOKS, FEES) is None


def test_ledger_adds_leftovers_skips_exposures_left_open_and_holds_a_failed_sweep() -> None:
    ledger = DustLedger("USDT")
    cycle = [
        {"kind": "cycle", "source": "USDT", "target": "ETH", "spent": 500.0, "received": 0.27023},
        {"kind": "cycle", "source": "ETH", "target": "BTC", "spent": 0.2702, "received": 0.0084927},
        {"kind": "cycle", "source": "BTC", "target": "USDT", "spent": 0.00849, "received": 500.1},
    ]
    ledger.finished(cycle, left_open=False, failed=False, hold_until=0)
    ledger.finished(cycle, left_open=True, failed=True, hold_until=0)
    assert ledger.snapshot() == pytest.approx({"ETH": 0.00003, "BTC": 0.0000027})
    ledger.amounts["BTC"] = 0.00011
    sweep = ledger.next_sweep(RULES, BOOKS, FEES, now_ms=1)
    assert sweep is not None
    assert sweep.currency == "BTC"
    assert (ledger.number("BTC"), ledger.sent("BTC"), ledger.number("BTC")) == (0, None, 1)
    rejected = [{"kind": "sweep", "source": "BTC", "target": "USDT", "spent": 0, "received": 0}]
    ledger.finished(rejected, left_open=False, failed=True, hold_until=1_000)
    assert ledger.next_sweep(RULES, BOOKS, FEES, now_ms=999) is None
    assert ledger.next_sweep(RULES, BOOKS, FEES, now_ms=1_000) == sweep


def test_sweep_ids_are_deterministic_per_account_currency_and_number() -> None:
    assert sweep_id("live", "binance", "BTC", 0) == sweep_id("live", "binance", "BTC", 0)
    ids = {
        sweep_id(a, "binance", c, n)
        for a in ("live", "paper")
        for c in ("BTC", "ETH")
        for n in (0, 1)
    }
    assert len(ids) == 8
    assert all(len(i) == 32 for i in ids)

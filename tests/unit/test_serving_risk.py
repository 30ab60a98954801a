"""The risk gate: limits cap or deny orders; candles, errors, equity, the operator move states."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline.settings import RiskSettings
from serving.kernel.market_rules import MarketRules
from serving.kernel.risk_state import RiskState, Transition
from serving.model.risk import RiskGate
from serving.model.risk_rules import OrderIntent

H = 3_600_000
DAY = 86_400_000
T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z, the start of a UTC day
BTC = "binance:BTC/USDT:1h"
ETH = "binance:ETH/USDT:1h"
KRAKEN = "kraken:BTC/USD:1h"
BINANCE_MARKET: dict[str, Any] = {
    "symbol": "BTC/USDT",
    "precision": {"amount": 1e-05, "price": 0.01},
    "limits": {"amount": {"min": 1e-05, "max": 9000.0}, "cost": {"min": 5.0, "max": None}},
}
RULES = MarketRules.from_ccxt(BINANCE_MARKET)


def make_gate(**overrides: Any) -> RiskGate:
    settings = RiskSettings(
        **{
            "max_position_notional": 5_000.0,
            "max_order_notional": 2_500.0,
            "max_leverage": 1.0,
            "max_orders_per_hour": 30,
            "daily_loss_limit": 0.05,
            "flatten_on_halt": False,
            "flash_move": 0.10,
            "flash_pause_candles": 3,
            "stale_after_timeframes": 2.0,
            "breaker_errors": 3,
            "breaker_cooldown_seconds": 60.0,
            **overrides,
        }
    )
    return RiskGate(settings, [BTC, ETH, KRAKEN])


def intent(
    side: str = "buy",
    amount: float = 0.01,
    *,
    price: float = 50_000.0,
    position: float = 0.0,
    equity: float = 100_000.0,
    market: str = BTC,
    flatten: bool = False,
) -> OrderIntent:
    return OrderIntent(
        market=market,
        side=side,  # type: ignore[arg-type]
        amount=amount,
        price=price,
        position=position,
        equity=equity,
        flatten=flatten,
    )


def is_multiple(amount: float, step: float) -> bool:
    return Decimal(repr(amount)) % Decimal(repr(step)) == 0


# --- market rules -------------------------------------------------------------------------


def test_market_rules_are_read_from_a_ccxt_binance_market() -> None:
    rules = MarketRules.from_ccxt(BINANCE_MARKET)
    assert rules == MarketRules(amount_step=1e-05, price_step=0.01, min_amount=1e-05, min_cost=5.0)


def test_missing_ccxt_precision_and_limits_mean_no_rule() -> None:
    rules = MarketRules.from_ccxt({"precision": {}, "limits": {}})
    assert rules == MarketRules(None, None, None, None)
    assert rules.round_amount(0.123456789) == 0.123456789


def test_decimal_places_precision_mode_is_turned_into_a_step() -> None:
    rules = MarketRules.from_ccxt({"precision": {"amount": 5, "price": 2}}, precision_mode=2)
    assert (rules.amount_step, rules.price_step) == (1e-05, 0.01)


def test_amount_rounds_down_to_the_step_without_float_dust() -> None:
    assert RULES.round_amount(0.1 + 0.2) == 0.3  # 0.30000000000000004
    assert RULES.round_amount(0.123459999) == 0.12345
    assert RULES.round_amount(0.00001999) == 0.00001
    assert RULES.round_amount(-0.123459) == -0.12345  # toward zero


def test_price_rounds_to_the_nearest_tick() -> None:
    assert RULES.round_price(50_000.126) == 50_000.13
    assert RULES.round_price(50_000.124) == 50_000.12
    assert RULES.round_price(0.1 + 0.2) == 0.3


# --- check: limits ------------------------------------------------------------------------


def test_order_within_all_limits_is_allowed_rounded_down() -> None:
    verdict = make_gate().check(intent(amount=0.0123456), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.01234
    assert verdict.reason == "ok"


def test_order_above_max_order_notional_is_capped_not_denied() -> None:
    verdict = make_gate().check(intent(amount=0.062004), RULES, T0)  # 3100.20 USDT
    assert verdict.allowed
    assert verdict.amount == 0.05  # 2500 / 50000
    assert "max_order_notional 2500.00 USDT" in verdict.reason
    assert "3100.20" in verdict.reason


def test_order_is_capped_so_the_position_fits_max_position_notional() -> None:
    verdict = make_gate().check(intent(amount=0.04, position=0.08), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.02  # 0.1 BTC * 50000 = 5000
    assert "max_position_notional" in verdict.reason


def test_order_is_denied_when_the_position_is_already_at_max_position_notional() -> None:
    verdict = make_gate().check(intent(amount=0.01, position=0.1), RULES, T0)
    assert not verdict.allowed
    assert verdict.amount == 0.0
    assert "max_position_notional 5000.00 USDT" in verdict.reason


def test_short_position_limit_applies_to_sells() -> None:
    verdict = make_gate().check(intent("sell", 0.04, position=-0.09), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.01


def test_order_is_capped_to_max_leverage_of_equity() -> None:
    verdict = make_gate(max_leverage=2.0).check(intent(amount=0.04, equity=1_000.0), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.04  # 2000 USDT <= 2x of 1000
    verdict = make_gate(max_leverage=2.0).check(
        intent(amount=0.04, position=0.03, equity=1_000.0), RULES, T0
    )
    assert verdict.allowed
    assert verdict.amount == 0.01
    assert "max_leverage 2x of equity 1000.00 USDT" in verdict.reason


def test_a_cap_leaves_no_float_dust_that_rounding_would_cut_by_a_step() -> None:
    # In floats 3000 / 50000 - 0.05 = 0.009999999999999995, which rounds down to 0.00999.
    verdict = make_gate().check(intent(amount=0.02, position=0.05, equity=3_000.0), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.01


def test_zero_max_leverage_denies_new_exposure() -> None:
    verdict = make_gate(max_leverage=0.0).check(intent(amount=0.01), RULES, T0)
    assert not verdict.allowed
    assert "max_leverage 0x" in verdict.reason


def test_zero_max_leverage_still_lets_a_reducing_order_pass() -> None:
    verdict = make_gate(max_leverage=0.0).check(intent("sell", 0.01, position=0.02), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.01


def test_flip_order_when_active_is_capped_by_the_position_limit_on_the_other_side() -> None:
    # Long 0.02, sell 0.2: the short after the order may be at most 0.1 BTC (5000 USDT).
    gate = make_gate(max_order_notional=50_000.0)
    verdict = gate.check(intent("sell", 0.2, position=0.02), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.12


def test_reducing_order_skips_the_notional_limits() -> None:
    # Position far above every limit (e.g. limits lowered since): closing it all passes.
    verdict = make_gate().check(intent("sell", 1.0, position=1.0, equity=10.0), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 1.0
    assert verdict.reason == "ok"


def test_orders_beyond_max_orders_per_hour_are_denied_in_a_sliding_hour() -> None:
    gate = make_gate(max_orders_per_hour=2)
    gate.record_order(BTC, T0)
    gate.record_order(BTC, T0 + 10 * 60_000)
    denied = gate.check(intent(), RULES, T0 + 30 * 60_000)
    assert not denied.allowed
    assert "max_orders_per_hour 2: 2 orders" in denied.reason
    assert gate.check(intent(market=ETH), RULES, T0 + 30 * 60_000).allowed  # per market
    assert gate.check(intent(), RULES, T0 + H).allowed  # the first order left the window


def test_flatten_order_is_exempt_from_max_orders_per_hour() -> None:
    gate = make_gate(max_orders_per_hour=1)
    gate.record_order(BTC, T0)
    verdict = gate.check(intent("sell", 0.01, position=0.01, flatten=True), RULES, T0 + 1)
    assert verdict.allowed


def test_order_below_min_amount_is_denied_naming_the_minimum() -> None:
    rules = MarketRules.from_ccxt(
        {"precision": {"amount": 1e-05}, "limits": {"amount": {"min": 0.001}}}
    )
    verdict = make_gate().check(intent(amount=0.0005), rules, T0)
    assert not verdict.allowed
    assert "min amount 0.001" in verdict.reason


def test_order_below_min_cost_is_denied_naming_the_minimum() -> None:
    verdict = make_gate().check(intent(amount=0.00009), RULES, T0)  # 4.50 USDT
    assert not verdict.allowed
    assert "min cost 5.00 USDT" in verdict.reason
    assert "4.50" in verdict.reason


def test_order_exactly_at_min_cost_is_allowed() -> None:
    verdict = make_gate().check(intent(amount=0.0001), RULES, T0)  # 0.0001 * 50000 = 5.0
    assert verdict.allowed


def test_order_rounding_to_zero_is_denied() -> None:
    verdict = make_gate().check(intent(amount=0.000004), RULES, T0)
    assert not verdict.allowed
    assert "rounds down to 0" in verdict.reason


def test_invalid_order_is_denied_not_raised() -> None:
    assert not make_gate().check(intent(amount=-1.0), RULES, T0).allowed
    assert not make_gate().check(intent(price=float("nan")), RULES, T0).allowed


# --- states in check ----------------------------------------------------------------------


def test_order_when_halted_is_denied() -> None:
    gate = make_gate()
    gate.pause(T0)
    verdict = gate.check(intent(), RULES, T0)
    assert not verdict.allowed
    assert "HALTED" in verdict.reason
    assert not gate.check(intent("sell", 0.01, position=0.01), RULES, T0).allowed


def test_flatten_order_is_allowed_while_halted_and_capped_at_the_position() -> None:
    gate = make_gate()
    gate.pause(T0)
    verdict = gate.check(intent("sell", 0.5, position=0.01234, flatten=True), RULES, T0)
    assert verdict.allowed
    assert verdict.amount == 0.01234
    assert "capped to |position| 0.01234" in verdict.reason


def test_flatten_order_that_does_not_reduce_is_denied() -> None:
    gate = make_gate()
    gate.pause(T0)
    assert not gate.check(intent("buy", 0.01, position=0.01, flatten=True), RULES, T0).allowed


def test_reducing_order_never_flips_the_position_while_reducing() -> None:
    gate = make_gate()
    gate.on_candle(BTC, T0, 100.0, 80.0, H, T0 + H)
    verdict = gate.check(intent("buy", 0.5, position=-0.03), RULES, T0 + H)
    assert verdict.allowed
    assert verdict.amount == 0.03


# --- flash crash --------------------------------------------------------------------------


def test_a_flash_crash_candle_allows_only_reducing_orders_for_n_candles() -> None:
    gate = make_gate(flash_pause_candles=3)
    gate.on_candle(BTC, T0 - H, 100.0, 101.0, H, T0)
    assert gate.state(BTC) is RiskState.ACTIVE
    gate.on_candle(BTC, T0, 100.0, 88.0, H, T0 + H)  # -12%
    for k in range(3):  # the flash candle and the next two
        if k:
            gate.on_candle(BTC, T0 + k * H, 88.0, 88.5, H, T0 + (k + 1) * H)
        assert gate.state(BTC) is RiskState.REDUCING
        assert gate.state(ETH) is RiskState.ACTIVE
        assert not gate.check(intent(), RULES, T0 + (k + 1) * H).allowed
        assert gate.check(intent("sell", 0.01, position=0.02), RULES, T0 + (k + 1) * H).allowed
    gate.on_candle(BTC, T0 + 3 * H, 88.5, 89.0, H, T0 + 4 * H)
    assert gate.state(BTC) is RiskState.ACTIVE
    assert gate.check(intent(), RULES, T0 + 4 * H).allowed


def test_a_move_at_the_flash_threshold_does_not_pause() -> None:
    gate = make_gate(flash_move=0.10)
    gate.on_candle(BTC, T0, 100.0, 95.0, H, T0 + H)
    assert gate.state(BTC) is RiskState.ACTIVE


def test_flash_pause_counts_candles_by_timestamp_not_by_calls() -> None:
    gate = make_gate(flash_pause_candles=3)
    gate.on_candle(BTC, T0, 100.0, 120.0, H, T0 + H)
    for _ in range(5):  # the same candle reported again
        gate.on_candle(BTC, T0, 100.0, 120.0, H, T0 + H)
    assert gate.state(BTC) is RiskState.REDUCING


# --- stale data ---------------------------------------------------------------------------


def test_data_is_stale_when_the_last_closed_candle_is_older_than_the_allowed_timeframes() -> None:
    gate = make_gate(stale_after_timeframes=2.0)
    last = T0  # candle 00:00-01:00, closed at 01:00
    assert gate.data_fresh(BTC, last, H, T0 + H + 5_000)
    assert gate.data_fresh(BTC, last, H, T0 + 3 * H)
    assert not gate.data_fresh(BTC, last, H, T0 + 3 * H + 1)
    assert gate.state(BTC) is RiskState.ACTIVE
    assert gate.drain_transitions() == []


# --- circuit breaker ----------------------------------------------------------------------


def test_breaker_opens_after_consecutive_errors_and_halts_that_exchange_only() -> None:
    gate = make_gate(breaker_errors=3)
    gate.on_exchange_error("binance", T0, "timeout")
    gate.on_exchange_error("binance", T0 + 1, "timeout")
    assert not gate.breaker_open("binance", T0 + 2)
    gate.on_exchange_error("binance", T0 + 2, "502 Bad Gateway")
    assert gate.breaker_open("binance", T0 + 3)
    assert gate.state(BTC) is RiskState.HALTED
    assert gate.state(ETH) is RiskState.HALTED
    assert gate.state(KRAKEN) is RiskState.ACTIVE
    assert gate.state() is RiskState.ACTIVE
    transitions = gate.drain_transitions()
    assert [(t.market, t.to_state) for t in transitions] == [
        (BTC, RiskState.HALTED),
        (ETH, RiskState.HALTED),
    ]
    assert "3 consecutive errors" in transitions[0].reason
    assert "502 Bad Gateway" in transitions[0].reason


def test_a_success_resets_the_consecutive_error_count() -> None:
    gate = make_gate(breaker_errors=2)
    gate.on_exchange_error("binance", T0, "timeout")
    gate.on_exchange_ok("binance", T0 + 1)
    gate.on_exchange_error("binance", T0 + 2, "timeout")
    assert not gate.breaker_open("binance", T0 + 3)


def test_breaker_goes_half_open_after_the_cool_down_and_a_success_closes_it() -> None:
    gate = make_gate(breaker_errors=1, breaker_cooldown_seconds=60.0)
    gate.on_exchange_error("binance", T0, "timeout")
    gate.on_exchange_ok("binance", T0 + 59_999)  # within the cool-down: stays open
    assert gate.breaker_open("binance", T0 + 59_999)
    assert not gate.breaker_open("binance", T0 + 60_000)  # half-open: try again
    assert gate.snapshot()["breakers"]["binance"]["status"] == "half_open"
    assert gate.state(BTC) is RiskState.ACTIVE
    gate.on_exchange_ok("binance", T0 + 61_000)
    assert gate.snapshot()["breakers"]["binance"]["status"] == "closed"
    assert not gate.breaker_open("binance", T0 + 61_001)
    states = [(t.market, t.from_state, t.to_state) for t in gate.drain_transitions()]
    assert states == [
        (BTC, RiskState.ACTIVE, RiskState.HALTED),
        (ETH, RiskState.ACTIVE, RiskState.HALTED),
        (BTC, RiskState.HALTED, RiskState.ACTIVE),
        (ETH, RiskState.HALTED, RiskState.ACTIVE),
    ]


def test_an_error_during_half_open_reopens_the_breaker_for_another_cool_down() -> None:
    gate = make_gate(breaker_errors=3, breaker_cooldown_seconds=60.0)
    for k in range(3):
        gate.on_exchange_error("binance", T0 + k, "timeout")
    assert not gate.breaker_open("binance", T0 + 2 + 60_000)
    gate.on_exchange_error("binance", T0 + 70_000, "still down")  # one error suffices now
    assert gate.breaker_open("binance", T0 + 70_001)
    assert gate.breaker_open("binance", T0 + 129_999)
    assert gate.state(BTC) is RiskState.HALTED
    assert not gate.breaker_open("binance", T0 + 130_000)
    reasons = [t.reason for t in gate.drain_transitions() if t.market == BTC]
    assert "re-opened" in reasons[2]
    assert "still down" in reasons[2]


def test_an_ok_after_the_cool_down_closes_an_open_breaker_directly() -> None:
    gate = make_gate(breaker_errors=1, breaker_cooldown_seconds=60.0)
    gate.on_exchange_error("binance", T0, "timeout")
    gate.on_exchange_ok("binance", T0 + 60_000)
    assert not gate.breaker_open("binance", T0 + 60_001)
    assert gate.state(BTC) is RiskState.ACTIVE


# --- daily loss, pause, flatten -----------------------------------------------------------


def test_losing_the_daily_loss_limit_halts_everything() -> None:
    gate = make_gate(daily_loss_limit=0.05)
    gate.on_equity(10_000.0, T0 + H)
    gate.on_equity(9_500.0, T0 + 2 * H)  # exactly -5%: not below
    assert gate.state() is RiskState.ACTIVE
    gate.on_equity(9_499.0, T0 + 3 * H)
    assert gate.state() is RiskState.HALTED
    assert gate.state(KRAKEN) is RiskState.HALTED
    [transition] = gate.drain_transitions()
    assert transition == Transition(
        None, RiskState.ACTIVE, RiskState.HALTED, transition.reason, T0 + 3 * H
    )
    assert "daily_loss_limit 5.00%" in transition.reason
    assert "10000.00" in transition.reason


def test_recovering_within_the_day_does_not_lift_the_daily_loss_halt() -> None:
    gate = make_gate()
    gate.on_equity(10_000.0, T0)
    gate.on_equity(9_000.0, T0 + H)
    gate.on_equity(10_500.0, T0 + 2 * H)
    assert gate.state() is RiskState.HALTED


def test_a_new_utc_day_lifts_the_daily_loss_halt_and_resets_the_start() -> None:
    gate = make_gate()
    gate.on_equity(10_000.0, T0 + 12 * H)
    gate.on_equity(9_000.0, T0 + 23 * H)
    assert gate.state() is RiskState.HALTED
    gate.on_equity(9_000.0, T0 + DAY)
    assert gate.state() is RiskState.ACTIVE
    gate.on_equity(8_600.0, T0 + DAY + H)  # -4.4% of the new start 9000
    assert gate.state() is RiskState.ACTIVE
    gate.on_equity(8_540.0, T0 + DAY + 2 * H)
    assert gate.state() is RiskState.HALTED
    reasons = [t.reason for t in gate.drain_transitions()]
    assert "new UTC day 2023-11-16" in reasons[1]


def test_a_new_utc_day_does_not_lift_an_operator_pause() -> None:
    gate = make_gate()
    gate.on_equity(10_000.0, T0)
    gate.on_equity(9_000.0, T0 + H)
    gate.pause(T0 + 2 * H)
    gate.on_equity(9_000.0, T0 + DAY)
    assert gate.state() is RiskState.HALTED


def test_should_flatten_when_halted_by_daily_loss_and_flatten_on_halt() -> None:
    gate = make_gate(flatten_on_halt=True)
    gate.on_equity(10_000.0, T0)
    assert not gate.should_flatten()
    gate.on_equity(9_000.0, T0 + H)
    assert gate.should_flatten()


def test_should_not_flatten_without_flatten_on_halt_or_on_an_operator_pause() -> None:
    gate = make_gate(flatten_on_halt=False)
    gate.on_equity(10_000.0, T0)
    gate.on_equity(9_000.0, T0 + H)
    assert not gate.should_flatten()
    paused = make_gate(flatten_on_halt=True)
    paused.pause(T0)
    assert not paused.should_flatten()


def test_pause_halts_and_resume_returns_to_active() -> None:
    gate = make_gate()
    gate.pause(T0, "maintenance")
    assert gate.state() is RiskState.HALTED
    assert gate.state(BTC) is RiskState.HALTED
    gate.resume(T0 + H)
    assert gate.state(BTC) is RiskState.ACTIVE
    assert gate.check(intent(), RULES, T0 + H).allowed
    assert [(t.to_state, t.reason) for t in gate.drain_transitions()] == [
        (RiskState.HALTED, "maintenance"),
        (RiskState.ACTIVE, "resumed by operator"),
    ]


def test_resume_lifts_a_daily_loss_halt_and_the_limit_counts_from_there() -> None:
    gate = make_gate()
    gate.on_equity(10_000.0, T0)
    gate.on_equity(9_000.0, T0 + H)
    gate.resume(T0 + 2 * H)
    gate.on_equity(8_900.0, T0 + 3 * H)
    assert gate.state() is RiskState.ACTIVE
    gate.on_equity(8_549.0, T0 + 4 * H)  # below 9000 * 0.95
    assert gate.state() is RiskState.HALTED


# --- transitions and snapshot -------------------------------------------------------------


def test_transitions_are_drained_in_order_and_only_once() -> None:
    gate = make_gate(breaker_errors=1)
    gate.on_candle(BTC, T0, 100.0, 50.0, H, T0 + H)
    gate.pause(T0 + H + 1)
    gate.on_exchange_error("kraken", T0 + H + 2, "down")
    gate.resume(T0 + H + 3)
    drained = gate.drain_transitions()
    assert [(t.market, t.to_state, t.at_ms) for t in drained] == [
        (BTC, RiskState.REDUCING, T0 + H),
        (None, RiskState.HALTED, T0 + H + 1),
        (KRAKEN, RiskState.HALTED, T0 + H + 2),
        (None, RiskState.ACTIVE, T0 + H + 3),
    ]
    assert gate.drain_transitions() == []


def test_snapshot_is_json_serializable_and_shows_states_breakers_and_orders() -> None:
    gate = make_gate(breaker_errors=1)
    gate.record_order(BTC, T0)
    gate.record_order(BTC, T0 + 1)
    gate.on_candle(ETH, T0, 100.0, 50.0, H, T0 + H)
    gate.on_exchange_error("kraken", T0 + H, "down")
    gate.on_equity(10_000.0, T0 + H)
    snapshot = json.loads(json.dumps(gate.snapshot(T0 + H)))
    assert snapshot["global"]["state"] == "ACTIVE"
    assert snapshot["markets"][BTC]["orders_last_hour"] == 1
    assert snapshot["markets"][ETH]["state"] == "REDUCING"
    assert "flash move" in snapshot["markets"][ETH]["reason"]
    assert snapshot["markets"][KRAKEN]["state"] == "HALTED"
    assert snapshot["breakers"]["kraken"]["status"] == "open"
    assert snapshot["breakers"]["kraken"]["last_error"] == "down"
    assert snapshot["breakers"]["binance"]["status"] == "closed"


# --- property -----------------------------------------------------------------------------


@given(
    side=st.sampled_from(["buy", "sell"]),
    amount=st.floats(min_value=1e-7, max_value=10.0, allow_nan=False),
    price=st.floats(min_value=1.0, max_value=200_000.0, allow_nan=False),
    position=st.floats(min_value=-2.0, max_value=2.0, allow_nan=False),
    equity=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    flatten=st.booleans(),
    state=st.sampled_from(["active", "reducing", "halted"]),
)
def test_verdict_amount_is_a_step_multiple_within_the_request_and_reducing_never_flips(
    side: str,
    amount: float,
    price: float,
    position: float,
    equity: float,
    flatten: bool,
    state: str,
) -> None:
    gate = make_gate()
    if state == "reducing":
        gate.on_candle(BTC, T0, 100.0, 50.0, H, T0)
    elif state == "halted":
        gate.pause(T0)
    order = intent(side, amount, price=price, position=position, equity=equity, flatten=flatten)
    verdict = gate.check(order, RULES, T0)
    assert verdict.amount >= 0.0
    assert verdict.amount <= amount
    assert is_multiple(verdict.amount, RULES.amount_step or 1.0)
    if not verdict.allowed:
        assert verdict.amount == 0.0
    reducing = order.reduces and (flatten or state != "active" or amount <= abs(position))
    if verdict.allowed and reducing:
        after = position + (verdict.amount if side == "buy" else -verdict.amount)
        assert after == 0.0 or (after > 0) == (position > 0)

"""The arbitrage study's arithmetic: hand-computed edges and spreads, dropped slots, runs and
sizes, on candles built in memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.arbitrage.cross import (
    CrossCosts,
    Transfer,
    VenueQuote,
    cross_opportunities,
    net_spread_bps,
    observed_conversion,
    opportunity,
)
from pipeline.arbitrage.study_config import Group, StudyConfig
from pipeline.arbitrage.study_edges import conversion_rates, study_cross, study_triangle
from pipeline.arbitrage.study_stats import Series, align, runs
from pipeline.settings import Market
from tests.support.arbitrage_study import MINUTE, config

FEE = 0.001  # 10 bps per leg
COSTS = CrossCosts(
    taker_fee=FEE,
    notional=1_000.0,
    withdrawals={"BTC": Transfer(0.0002, 30), "USDT": Transfer(1.0, 5), "USD": Transfer(0.0, 60)},
    quote_rates={"USD": 1.0, "USDT": 0.998},
)
TRIANGLE = Group(
    "triangle",
    tuple(Market.model_validate(f"binance:{s}:1m") for s in ("BTC/USDT", "ETH/USDT", "ETH/BTC")),
)
PAIR = Group(
    "cross",
    (Market.model_validate("alpha:BTC/USD:1m"), Market.model_validate("beta:BTC/USD:1m")),
)


def minutes(n: int) -> list[int]:
    return [i * MINUTE for i in range(n)]


# --- cross-exchange spread ---------------------------------------------------------------


def test_cross_spread_pays_both_fees_both_withdrawals_and_converts_at_the_observed_rate():
    # buy BTC/USD at 10,000 on A; sell BTC/USDT at 10,100 on B; 1 USDT observed at 0.999 USD
    spread = net_spread_bps(COSTS, "BTC", "USD", "USDT", 10_000.0, 10_100.0, 0.999)
    gross = 10_100 * 0.999 / 10_000 * 0.999**2 - 1  # 1.00899 x 0.998001 - 1
    withdrawals = (0.0002 * 10_000 + 1.0 * 0.999) / 1_000  # BTC back to B, USDT back to A
    assert gross == pytest.approx(0.00697302899)
    assert float(spread) == pytest.approx((gross - withdrawals) * 1e4)
    assert float(spread) == pytest.approx(39.7402899, abs=1e-6)


def test_cross_spread_without_an_observed_rate_uses_the_configured_quote_rates():
    buy, sell = VenueQuote("a", "BTC/USD", 0, 10_000.0), VenueQuote("b", "BTC/USDT", 10_100.0, 0)
    found = opportunity(COSTS, buy, sell)
    assert found.conversion == pytest.approx(0.998)
    expected = (10_100 * 0.998 / 10_000 * 0.999**2 - 1) * 1e4 - (2.0 + 0.998) / 1_000 * 1e4
    assert found.spread_bps == pytest.approx(expected)


def test_opportunity_states_the_inventory_on_each_side_and_the_rebalance_time():
    buy, sell = (
        VenueQuote("a", "BTC/USD", 9_990.0, 10_000.0),
        VenueQuote("b", "BTC/USDT", 10_200.0, 10_210.0),
    )
    [found] = cross_opportunities(COSTS, [buy, sell], conversions={("USDT", "USD"): 0.999})
    assert (found.buy_venue, found.sell_venue) == ("a", "b")
    assert found.quote_needed == pytest.approx(1_000.0)  # USD on the buy venue
    assert found.base_needed == pytest.approx(1_000.0 / 10_000.0 * 0.999)  # BTC on the sell venue
    assert found.rebalance_minutes == 30  # BTC (30 min) and USDT (5 min) move in parallel


def test_observed_conversion_is_the_ratio_of_one_venue_quoting_the_asset_in_both_quotes():
    rate = observed_conversion([20_000.0, 20_000.0, np.nan], [20_100.0, 0.0, 20_000.0])
    assert rate[0] == pytest.approx(20_000 / 20_100)
    assert np.isnan(rate[1:]).all()


def test_cross_study_converts_at_the_observed_rate_and_else_at_the_configured_one():
    usd = Market.model_validate("alpha:BTC/USD:1m")
    usdt = Market.model_validate("beta:BTC/USDT:1m")
    group = Group("cross", (usd, usdt))
    series = [Series.of(minutes(2), [10_000.0] * 2), Series.of(minutes(2), [10_100.0] * 2)]
    aligned = align(series, ["alpha", "beta"], 0, 2 * MINUTE, MINUTE)
    rates = {"USD": 1.0, "USDT": 0.98}
    study = StudyConfig(10.0, 10.0, 1_000.0, "USD", quote_rates=rates)
    observed = {("USDT", "USD"): np.array([0.999, np.nan]), ("USD", "USDT"): np.full(2, np.nan)}
    result = study_cross(group, aligned, study, observed).result
    [buy_alpha] = [s for s in result["series"] if s["label"] == "buy alpha sell beta"]
    at_observed = (10_100 * 0.999 / 10_000 * 0.999**2 - 1) * 1e4
    at_configured = (10_100 * 0.98 / 10_000 * 0.999**2 - 1) * 1e4
    assert buy_alpha["distribution"]["max"] == pytest.approx(at_observed)
    assert buy_alpha["distribution"]["min"] == pytest.approx(at_configured)
    assert buy_alpha["conversion_observed_share"] == 0.5


def test_conversion_rate_is_the_first_venue_quoting_both_and_the_next_fills_its_gaps():
    group = Group(
        "cross",
        (Market.model_validate("alpha:BTC/USD:1m"), Market.model_validate("beta:BTC/USDT:1m")),
    )
    closes = {
        ("alpha", "USD"): np.array([20_000.0, np.nan, 20_000.0]),
        ("alpha", "USDT"): np.array([20_100.0, np.nan, np.nan]),
        ("beta", "USD"): np.array([np.nan, 20_000.0, np.nan]),
        ("beta", "USDT"): np.array([np.nan, 20_040.0, np.nan]),
    }
    rates = conversion_rates(group, closes, 3)
    assert set(rates) == {("USD", "USDT"), ("USDT", "USD")}
    usdt_in_usd = rates[("USDT", "USD")]
    assert usdt_in_usd[:2] == pytest.approx([20_000 / 20_100, 20_000 / 20_040])
    assert np.isnan(usdt_in_usd[2])
    assert rates[("USD", "USDT")][:2] == pytest.approx([20_100 / 20_000, 20_040 / 20_000])
    assert conversion_rates(PAIR, {}, 3) == {}


# --- triangle edge -----------------------------------------------------------------------


def test_triangle_edge_after_three_fees_in_both_directions_is_hand_computed():
    series = [
        Series.of([0], [20_000.0]),  # BTC/USDT
        Series.of([0], [1_500.0]),  # ETH/USDT
        Series.of([0], [0.076]),  # ETH/BTC
    ]
    aligned = align(series, ["a", "b", "c"], 0, MINUTE, MINUTE)
    studied = study_triangle(TRIANGLE, aligned, config())
    edges = dict(zip(studied.labels, studied.edges[:, 0], strict=True))
    # USDT -> BTC -> ETH -> USDT: 1/20,000 BTC, / 0.076 ETH, x 1,500 USDT, three fees
    assert edges["USDT>BTC>ETH>USDT"] == pytest.approx(
        (1_500 / (20_000 * 0.076) * 0.999**3 - 1) * 1e4
    )
    assert edges["USDT>ETH>BTC>USDT"] == pytest.approx(
        (20_000 * 0.076 / 1_500 * 0.999**3 - 1) * 1e4
    )
    assert edges["USDT>ETH>BTC>USDT"] == pytest.approx(102.96, abs=0.01)


def test_triangle_profit_is_capped_by_max_notional_and_by_a_share_of_the_smallest_leg_volume():
    closes = ([20_000.0] * 2, [1_500.0] * 2, [0.076] * 2)
    volumes = ([10.0, 10.0], [1_000.0, 1_000.0], [20.0, 2.0])  # ETH/BTC leg thin at t=1
    series = [Series.of(minutes(2), c, v) for c, v in zip(closes, volumes, strict=True)]
    aligned = align(series, ["a", "b", "c"], 0, 2 * MINUTE, MINUTE)
    result = study_triangle(TRIANGLE, aligned, config(max_notional=1_000.0)).result
    edge = 20_000 * 0.076 / 1_500 * 0.999**3 - 1
    # t=0: 1% of the smallest leg (ETH/BTC: 20 ETH x 0.076 BTC x 20,000) = 304 USDT
    # t=1: 1% of 2 ETH x 0.076 x 20,000 = 30.4 USDT; max_notional 1,000 does not bind
    [paying] = [s for s in result["series"] if s["label"] == "USDT>ETH>BTC>USDT"]
    assert paying["profit"]["trades"] == 2
    assert paying["profit"]["total"] == pytest.approx((304.0 + 30.4) * edge)
    capped = study_triangle(TRIANGLE, aligned, config(max_notional=100.0)).result
    [paying] = [s for s in capped["series"] if s["label"] == "USDT>ETH>BTC>USDT"]
    assert paying["profit"]["total"] == pytest.approx((100.0 + 30.4) * edge)


# --- dropped slots and runs --------------------------------------------------------------


@pytest.mark.parametrize("absent", ["missing", "quarantined"])
def test_a_missing_or_quarantined_candle_on_one_leg_is_no_observation_and_no_opportunity(
    absent: str,
) -> None:
    # alpha jumps 300 bps at minute 1, where beta has no usable candle: carrying beta's last
    # close forward would show a 250 bps opportunity that nobody could have seen
    alpha = Series.of(minutes(3), [10_000.0, 10_300.0, 10_000.0])
    quarantined = [MINUTE] if absent == "quarantined" else []
    beta = Series.of([0, 2 * MINUTE], [10_000.0, 10_000.0], quarantined=quarantined)
    aligned = align([alpha, beta], ["alpha", "beta"], 0, 3 * MINUTE, MINUTE)
    assert aligned.ts.tolist() == [0, 2 * MINUTE]
    assert (aligned.missing, aligned.quarantined) == ((1, 0) if not quarantined else (0, 1))
    result = study_cross(PAIR, aligned, config(threshold_bps=10.0)).result
    assert result["observations"] == 2
    assert result["best"]["above"]["count"] == 0
    assert result["best"]["distribution"]["max"] < 0


def test_a_quarantined_print_drops_its_slot_even_when_another_version_is_stored():
    alpha = Series.of(minutes(2), [10_000.0, 10_100.0])
    beta = Series.of(minutes(2), [10_000.0, 10_000.0], quarantined=[MINUTE])
    aligned = align([alpha, beta], ["alpha", "beta"], 0, 2 * MINUTE, MINUTE)
    assert aligned.ts.tolist() == [0]
    assert aligned.by_market["beta"] == {"missing": 0, "quarantined": 1}


def test_runs_are_consecutive_candles_above_and_a_dropped_slot_ends_one():
    ts = np.array([0, 1, 2, 3, 4, 6, 7], dtype=np.int64) * MINUTE  # minute 5 dropped
    above = np.array([True, True, False, True, True, True, False])
    starts, lengths = runs(above, ts, MINUTE)
    assert starts.tolist() == [0, 3 * MINUTE, 6 * MINUTE]
    assert lengths.tolist() == [2, 2, 1]


def test_run_lengths_are_reported_in_minutes_of_the_timeframe():
    hour = 60 * MINUTE
    closes = [10_000.0, 10_200.0, 10_200.0, 10_000.0, 10_200.0]
    alpha = Series.of([i * hour for i in range(5)], [10_000.0] * 5)
    beta = Series.of([i * hour for i in range(5)], closes)
    group = Group(
        "cross",
        tuple(Market(exchange=m.exchange, symbol=m.symbol, timeframe="1h") for m in PAIR.markets),
    )
    aligned = align([alpha, beta], ["alpha", "beta"], 0, 5 * hour, hour)
    result = study_cross(group, aligned, config(threshold_bps=50.0)).result
    [buy_alpha] = [s for s in result["series"] if s["label"] == "buy alpha sell beta"]
    assert buy_alpha["above"] == {"count": 3, "share": 0.6}
    assert buy_alpha["runs"]["count"] == 2
    assert buy_alpha["runs"]["max_minutes"] == 120.0
    assert buy_alpha["runs"]["mean_minutes"] == 90.0


def test_study_modules_import_neither_matplotlib_nor_the_database_nor_the_ingest_machinery():
    modules = [f"pipeline.arbitrage.study{s}" for s in ("", "_config", "_stats", "_edges")]
    modules += [f"pipeline.arbitrage.study_{s}" for s in ("candles", "ingest", "plot", "text")]
    heavy = ("matplotlib", "sqlalchemy", "ccxt", "airflow", "tensorflow", "pipeline.data.backfill")
    code = f"import sys, {', '.join(modules)}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""How sure a backtest is: PSR, DSR and the block bootstrap, on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import DataValidationError
from pipeline.learn.evidence import (
    block_bootstrap,
    bootstrap_sharpe_interval,
    confidence,
    deflated_sharpe_ratio,
    drawdown_quantile,
    expected_max_sharpe,
    max_drawdowns,
    probabilistic_sharpe_ratio,
    psr_from_moments,
)


def test_deflated_sharpe_matches_the_papers_worked_example() -> None:
    # Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", section 5:
    # annualized SR 2.5 over 1,250 daily returns, skew -3, kurtosis 10, 100 trials
    # whose annualized Sharpe ratios vary by 0.5 -> SR0 0.1132 per day, DSR 0.9004.
    benchmark = expected_max_sharpe(100, 0.5 / 250)
    assert benchmark == pytest.approx(0.1132, abs=5e-4)
    dsr = psr_from_moments(2.5 / math.sqrt(250), 1250, -3.0, 10.0, benchmark)
    assert dsr == pytest.approx(0.9004, abs=2e-3)


def test_psr_is_one_half_when_the_sharpe_equals_the_benchmark() -> None:
    assert psr_from_moments(0.1, 500, 0.0, 3.0, benchmark=0.1) == pytest.approx(0.5)


def test_psr_of_normal_returns_follows_the_closed_form() -> None:
    sharpe, n = 0.08, 365
    expected = 0.5 * math.erfc(-sharpe * math.sqrt(n - 1) / math.sqrt(1 + sharpe**2 / 2) / 2**0.5)
    assert psr_from_moments(sharpe, n, 0.0, 3.0) == pytest.approx(expected, rel=1e-9)


def test_negative_skew_makes_the_same_sharpe_less_certain() -> None:
    assert psr_from_moments(0.1, 250, -2.0, 9.0) < psr_from_moments(0.1, 250, 0.0, 3.0)


def test_a_longer_record_of_the_same_sharpe_is_more_certain() -> None:
    rng = np.random.default_rng(1)
    draws = rng.normal(0.001, 0.01, 2000)
    assert probabilistic_sharpe_ratio(draws[:100]) < probabilistic_sharpe_ratio(draws)


def test_more_trials_deflate_the_same_returns_more() -> None:
    returns = np.random.default_rng(2).normal(0.002, 0.02, 720)
    one, ten, hundred = (deflated_sharpe_ratio(returns, n) for n in (1, 10, 100))
    assert one == pytest.approx(probabilistic_sharpe_ratio(returns))
    assert one > ten > hundred


def test_one_trial_needs_no_luck_to_beat() -> None:
    assert expected_max_sharpe(1, 0.3) == 0.0


def test_a_flat_record_is_no_evidence_of_skill() -> None:
    assert probabilistic_sharpe_ratio(np.zeros(100)) == 0.0
    assert deflated_sharpe_ratio(np.zeros(100), 5) == 0.0


def test_too_few_returns_are_refused_by_name() -> None:
    with pytest.raises(DataValidationError, match="at least 10 returns"):
        probabilistic_sharpe_ratio([0.01, 0.02])


def test_non_finite_returns_are_refused() -> None:
    returns = np.full(50, 0.01)
    returns[7] = np.nan
    with pytest.raises(DataValidationError, match="NaN or infinite"):
        confidence(returns, 365)


def test_bootstrap_paths_are_circular_blocks_of_the_returns() -> None:
    returns = np.arange(12, dtype=np.float64)
    paths = block_bootstrap(returns, samples=50, block=4, seed=3)
    assert paths.shape == (50, 12)
    for path in paths:
        for block in path.reshape(3, 4):
            assert np.array_equal(np.diff(block) % 12, np.ones(3))


def test_bootstrap_interval_brackets_the_measured_sharpe() -> None:
    returns = np.random.default_rng(4).normal(0.003, 0.03, 720)
    low, high = bootstrap_sharpe_interval(returns, 365, confidence=0.9)
    measured = returns.mean() / returns.std() * math.sqrt(365)
    assert low < measured < high
    narrow_low, narrow_high = bootstrap_sharpe_interval(returns, 365, confidence=0.5)
    assert low < narrow_low < narrow_high < high


def test_bootstrap_is_repeatable_for_a_seed() -> None:
    returns = np.random.default_rng(5).normal(0.0, 0.02, 200)
    assert bootstrap_sharpe_interval(returns, 365, seed=9) == bootstrap_sharpe_interval(
        returns, 365, seed=9
    )


def test_max_drawdown_of_hand_computed_paths() -> None:
    paths = np.array([[0.1, -0.5, 0.2], [-0.1, -0.1, 0.0]])
    assert max_drawdowns(paths) == pytest.approx([0.5, 1 - 0.81])


def test_drawdown_quantile_grows_with_the_horizon() -> None:
    returns = np.random.default_rng(6).normal(0.001, 0.03, 720)
    short, long = (drawdown_quantile(returns, h) for h in (10, 200))
    assert 0 < short < long < 1


def test_confidence_reports_every_figure() -> None:
    returns = np.random.default_rng(7).normal(0.004, 0.03, 720)
    result = confidence(returns, 365, n_trials=4, trial_sharpes=[1.0, 1.5, 2.0, 0.5])
    assert result.steps == 720
    assert result.sharpe_low < result.sharpe < result.sharpe_high
    assert 0 <= result.dsr <= result.psr <= 1
    assert set(result.to_dict()) >= {"sharpe", "psr", "dsr", "sharpe_low", "sharpe_high"}


@settings(max_examples=50, deadline=None)
@given(
    st.floats(-0.3, 0.3),
    st.integers(20, 5000),
    st.floats(-2, 2),
    st.floats(2, 20),
)
def test_psr_is_a_probability_that_rises_with_the_sharpe(sharpe, n, skew, kurt) -> None:
    low = psr_from_moments(sharpe, n, skew, kurt)
    high = psr_from_moments(sharpe + 0.01, n, skew, kurt)
    assert 0.0 <= low <= 1.0
    assert high >= low - 1e-12

"""The champion watch's judgement: live drawdown against what the backtest made usual."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.model.watch import Expectations, RunningDrawdown, Verdict, judge, max_drawdown

EXPECTED = Expectations(
    horizons=(5, 20, 60), drawdown=(0.05, 0.10, 0.20), quantile=0.95, source="walk-forward"
)


def judged(
    label: str,
    equity: list[float],
    expectations: Expectations | None,
    configured: float | None = None,
) -> Verdict:
    """`judge` on the running figures of a whole equity record, as the trader keeps them."""
    record = RunningDrawdown.of(equity)
    return judge(label, record.drawdown, record.decisions, expectations, configured)


def judged_in_full(
    label: str,
    equity: list[float],
    expectations: Expectations | None,
    configured: float | None = None,
) -> Verdict:
    """The judgement as it was before the running figures: the whole record recomputed."""
    decisions = max(len(equity) - 1, 0)
    return judge(label, max_drawdown(equity), decisions, expectations, configured)


def test_max_drawdown_is_the_deepest_fall_from_a_peak() -> None:
    assert max_drawdown([100, 120, 90, 130, 117]) == pytest.approx(0.25)
    assert max_drawdown([100]) == 0.0


def test_the_limit_is_the_quantile_of_the_shortest_horizon_covering_the_decisions() -> None:
    assert [EXPECTED.limit(n) for n in (1, 5, 6, 20, 21, 60, 500)] == [
        0.05,
        0.05,
        0.10,
        0.10,
        0.20,
        0.20,
        0.20,
    ]


def test_a_drawdown_within_expectations_is_no_breach() -> None:
    verdict = judged("btc v3", [100, 99, 97, 98], EXPECTED)
    assert not verdict.breached
    assert verdict.decisions == 3
    assert verdict.limit == 0.05
    assert "within 5.00%" in verdict.reason


def test_a_drawdown_beyond_expectations_is_a_breach_naming_the_figures() -> None:
    verdict = judged("btc v3", [100, 101, 94, 95], EXPECTED)
    assert verdict.breached
    assert verdict.drawdown == pytest.approx(1 - 94 / 101)
    assert "btc v3: drawdown 6.93% over 3 decisions, beyond 5.00%" in verdict.reason


def test_the_configured_limit_applies_when_it_is_lower() -> None:
    verdict = judged("btc v3", [100, 97], EXPECTED, configured=0.02)
    assert verdict.breached
    assert verdict.limit == 0.02
    assert "serving.watch_max_drawdown" in verdict.reason


def test_without_a_distribution_or_a_limit_the_watch_is_blind_and_never_breaches() -> None:
    verdict = judged("btc v3", [100, 50], None)
    assert verdict.blind
    assert not verdict.breached
    assert "CRYPTOBOTS_SERVING__WATCH_MAX_DRAWDOWN" in verdict.reason


def test_expectations_are_read_from_a_versions_metrics() -> None:
    metrics = {
        "expectations": {
            "horizons": [20, 5],
            "drawdown": [0.1, 0.05],
            "quantile": 0.95,
            "source": "walk-forward",
        }
    }
    assert Expectations.from_metrics(metrics) == Expectations(
        (5, 20), (0.05, 0.1), 0.95, "walk-forward"
    )
    assert Expectations.from_metrics({"validation": {}}) is None


def prefixes_agree(equity: list[float], configured: float | None) -> None:
    """After every point, the running figures and their verdict equal the full recomputation
    over the record so far (the trader adds one point per decision)."""
    running = RunningDrawdown()
    for n, value in enumerate(equity, start=1):
        running.add(value)
        whole = max_drawdown(equity[:n])
        assert running.drawdown == whole or (math.isnan(whole) and math.isnan(running.drawdown))
        assert running.decisions == n - 1
        verdict = judge("btc v3", running.drawdown, running.decisions, EXPECTED, configured)
        assert verdict == judged_in_full("btc v3", equity[:n], EXPECTED, configured) or (
            math.isnan(whole) and not verdict.breached
        )


@given(
    st.lists(
        st.floats(min_value=-1e3, max_value=1e7, allow_nan=False, allow_infinity=False),
        max_size=60,
    ),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
)
def test_the_running_drawdown_judges_as_the_full_recomputation_did(
    equity: list[float], configured: float | None
) -> None:
    prefixes_agree(equity, configured)


def test_the_running_drawdown_follows_a_long_random_equity_path_exactly() -> None:
    rng = np.random.default_rng(27)
    equity = (10_000 * np.exp(np.cumsum(rng.normal(0, 0.01, 3_000)))).tolist()
    running = RunningDrawdown.of(equity)
    assert running.drawdown == max_drawdown(equity)
    assert running.peak == max(equity)
    assert running.decisions == len(equity) - 1
    prefixes_agree(equity[:400], None)


def test_a_nan_equity_point_poisons_the_running_drawdown_as_it_did_the_full_one() -> None:
    equity = [100.0, 90.0, math.nan, 120.0, 60.0]
    assert math.isnan(max_drawdown(equity))
    assert math.isnan(RunningDrawdown.of(equity).drawdown)
    assert not judged("btc v3", equity, EXPECTED).breached


def test_an_empty_or_single_point_record_has_no_drawdown_and_no_decision() -> None:
    for equity in ([], [100.0], [-5.0]):
        record = RunningDrawdown.of(equity)
        assert (record.drawdown, record.decisions) == (max_drawdown(equity), 0)

"""The champion watch's judgement: live drawdown against what the backtest made usual."""

from __future__ import annotations

import pytest

from serving.watch import Expectations, judge, max_drawdown

EXPECTED = Expectations(
    horizons=(5, 20, 60), drawdown=(0.05, 0.10, 0.20), quantile=0.95, source="walk-forward"
)


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
    verdict = judge("btc v3", [100, 99, 97, 98], EXPECTED)
    assert not verdict.breached
    assert verdict.decisions == 3
    assert verdict.limit == 0.05
    assert "within 5.00%" in verdict.reason


def test_a_drawdown_beyond_expectations_is_a_breach_naming_the_figures() -> None:
    verdict = judge("btc v3", [100, 101, 94, 95], EXPECTED)
    assert verdict.breached
    assert verdict.drawdown == pytest.approx(1 - 94 / 101)
    assert "btc v3: drawdown 6.93% over 3 decisions, beyond 5.00%" in verdict.reason


def test_the_configured_limit_applies_when_it_is_lower() -> None:
    verdict = judge("btc v3", [100, 97], EXPECTED, configured=0.02)
    assert verdict.breached
    assert verdict.limit == 0.02
    assert "serving.watch_max_drawdown" in verdict.reason


def test_without_a_distribution_or_a_limit_the_watch_is_blind_and_never_breaches() -> None:
    verdict = judge("btc v3", [100, 50], None)
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

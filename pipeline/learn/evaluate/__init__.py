"""Backtest trading policies and baselines with one cost model; the numpy reference.

This module is the package's face: every name the rest of the code imports from
`pipeline.learn.evaluate`. The parts live beside it, one job each: `costs` (the fill
rule, fees and volatility sizing: what one step earns), `backtest` (equity and metrics
of a sequence of positions), `positions` (the positions of a policy or a baseline rule,
and the backtest of both), `render` (a metrics table, an equity plot).

Only numpy and the standard library are imported at module level (the serving side
imports this package); matplotlib is imported inside `plot_equity`.
"""

from __future__ import annotations

from pipeline.learn.evaluate.backtest import (
    METRICS,
    Backtest,
    backtest_positions,
    compute_metrics,
)
from pipeline.learn.evaluate.costs import GROWTH_FLOOR, CostModel, VolatilityTarget, step_growth
from pipeline.learn.evaluate.positions import (
    BASELINES,
    POSITION_RULES,
    baseline_positions,
    evaluate_policy,
    expected_positions,
    greedy_positions,
    nearest_actions,
)
from pipeline.learn.evaluate.render import metrics_table, plot_equity

__all__ = [
    "BASELINES",
    "GROWTH_FLOOR",
    "METRICS",
    "POSITION_RULES",
    "Backtest",
    "CostModel",
    "VolatilityTarget",
    "backtest_positions",
    "baseline_positions",
    "compute_metrics",
    "evaluate_policy",
    "expected_positions",
    "greedy_positions",
    "metrics_table",
    "nearest_actions",
    "plot_equity",
    "step_growth",
]

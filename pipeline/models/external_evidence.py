"""The walk-forward evidence of a model registered from outside, on the nightly's folds.

The train DAG scores its candidates on `training.folds` consecutive validation windows of
`training.valid_days` ending at the newest stored candle; an external model had no
training windows here, so it is scored on the same validation windows, from its ONNX
file, with the same costs, sizing and position rule as every backtest
(`onnx_evaluation.backtest_onnx`). Its deflated Sharpe ratio counts it among the trials:
every version of the market's model with walk-forward evidence, and itself. The result
has the shape the train DAG stores (`walk_forward`, `expectations`), so the promotion
gates, the approval page and the champion watch read it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.errors import DataValidationError, ModelRejected
from pipeline.learn.evaluate import CostModel, VolatilityTarget
from pipeline.learn.evidence import drawdown_expectations, sharpe_per_step
from pipeline.learn.export import Lineage
from pipeline.learn.onnx_evaluation import backtest_onnx, series_of
from pipeline.learn.snapshot import latest_candle_end
from pipeline.learn.walk_forward import chain, score
from pipeline.learn.windows import walk_forward_folds
from pipeline.models.registry import list_versions
from pipeline.settings import Market, Settings
from pipeline.timeutil import YEAR_MS


def trial_sharpes(engine: Engine, name: str) -> list[float]:
    """The chained walk-forward Sharpe ratio of every version of `name` that has one."""
    found = []
    for version in list_versions(engine, name):
        evidence = (version["metrics"] or {}).get("walk_forward")
        if evidence and "chained" in evidence:
            found.append(float(evidence["chained"]["sharpe"]))
    return found


def external_evidence(
    settings: Settings,
    engine: Engine,
    path: Path,
    lineage: Lineage,
    trials: Sequence[float],
    what: str,
) -> dict[str, Any]:
    """{"walk_forward", "expectations"} of the ONNX file at `path` on the nightly's folds
    ending at the newest stored candle; ModelRejected naming the backfill when the stored
    candles do not reach back over every fold."""
    market = Market.model_validate(lineage.data_window["market"])
    t, tf = settings.training, market.timeframe_ms
    end = latest_candle_end(engine, market)
    if end is None:
        raise ModelRejected(f"{what}: no stored candles of {market} to judge it on: backfill it")
    folds = walk_forward_folds(end, t.folds, t.train_days, t.valid_days, tf)
    cost = CostModel.per_step(t.fee_bps, t.slippage_bps, t.borrow_bps_per_hour, tf)
    scored = []
    for _, valid in folds:
        try:
            backtests = backtest_onnx(
                engine, path, market, valid, lineage.feature_spec.features,
                lineage.action_map, 1, cost, what=what,
                sizing=VolatilityTarget.from_dict(lineage.sizing), rule=lineage.position_rule,
            )  # fmt: skip
        except DataValidationError as error:
            raise ModelRejected(
                f"{what}: not enough history for its {t.folds} walk-forward folds of "
                f"{t.valid_days} days (training.folds, training.valid_days): {error}"
            ) from error
        scored.append({"valid": [valid.start, valid.end], "series": series_of(backtests)})
    returns, _ = chain(scored, "policy", tf)
    own = sharpe_per_step(returns) * math.sqrt(YEAR_MS / tf)
    every = [*trials, own]
    evidence = score(scored, tf, n_trials=len(every), trial_sharpes=every)
    return {
        "walk_forward": {**evidence, "algorithm": lineage.algorithm, "candidates": ["external"]},
        "expectations": drawdown_expectations(returns, f"{len(scored)} walk-forward folds"),
    }

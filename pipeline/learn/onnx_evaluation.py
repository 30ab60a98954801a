"""Backtest exported ONNX policies (the artifact that ships, run by ONNX Runtime) beside
the baselines, with the same cost model.

`evaluate_run` backtests a trained run on its later, disjoint validation window, saves
the equity plot and records the metrics on the run and its model version;
`backtest_onnx` backtests any ONNX file on any window of stored candles (promotion,
the walk-forward report).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from pipeline.errors import ConfigurationError
from pipeline.learn.evaluate import (
    Backtest,
    CostModel,
    VolatilityTarget,
    evaluate_policy,
    metrics_table,
    plot_equity,
)
from pipeline.learn.evidence import MIN_RETURNS, drawdown_expectations
from pipeline.learn.features import FeatureSpec
from pipeline.learn.prepare import prepare, window_steps
from pipeline.learn.run_files import local_copy, run_dir
from pipeline.learn.snapshot import load_snapshot
from pipeline.learn.training_runs import get_run, update_run
from pipeline.learn.windows import Window
from pipeline.models.registry import set_metrics, store_artifact
from pipeline.settings import Market, Settings


@dataclass(frozen=True)
class Evaluation:
    """Validation backtests of one run: the policy and the baselines, same window."""

    run_id: str
    backtests: dict[str, Backtest]
    plot: Path

    @property
    def metrics(self) -> dict[str, float]:
        """The policy's metrics."""
        return self.backtests["policy"].metrics

    def table(self) -> str:
        """Policy and baselines side by side."""
        return metrics_table(self.backtests)


def evaluate_run(settings: Settings, engine: Engine, run_id: str) -> Evaluation:
    """Backtest a trained run's exported ONNX policy (the artifact that ships, run by ONNX
    Runtime) on its validation window; record the metrics."""
    import onnxruntime as ort

    run = get_run(engine, run_id)
    if run["status"] not in ("trained", "evaluated"):
        raise ConfigurationError(
            f"training run {run_id} is {run['status']}, not trained: train it first"
        )
    artifacts = dict(run["artifacts"])
    snapshot = load_snapshot(local_copy(settings, artifacts["snapshot"], "snapshots"))
    spec = FeatureSpec.from_dict(run["feature_spec"])
    every = int(run["params"].get("decision_every", 1))
    sizing = VolatilityTarget.from_dict(run["params"].get("sizing"))
    prepared = prepare(
        snapshot,
        FeatureSpec(name=spec.name, version=spec.version, features=spec.features),
        every,
        sizing,
    )
    onnx = local_copy(settings, artifacts["onnx"], "onnx")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    env = run["params"]["env"]

    def policy(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.asarray(obs, np.float32)})[0]

    backtests = evaluate_policy(
        policy,
        prepared.valid_features,
        prepared.valid_ts,
        prepared.valid_open,
        prepared.valid_close,
        tuple(run["action_map"]),
        snapshot.market.timeframe_ms * every,
        CostModel(env["fee_bps"], env["slippage_bps"], env.get("borrow_per_step", 0.0)),
        scale=prepared.valid_scale,
        rule=run["params"].get("position_rule", "argmax"),
    )
    directory = run_dir(settings, run_id)  # this worker's: training may have run on another
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_equity(
        backtests,
        directory / "equity.png",
        f"{run['algorithm']} {snapshot.market} validation {snapshot.valid} (run {run_id})",
    )
    (directory / "metrics.json").write_text(
        json.dumps({name: b.metrics for name, b in backtests.items()}, indent=2) + "\n"
    )
    plot_uri, _, _ = store_artifact(settings.artifact_root, plot, kind="plots", suffix=".png")
    update_run(
        engine,
        run_id,
        "evaluated",
        metrics={
            **(run["metrics"] or {}),
            **backtests["policy"].metrics,
            "series": series_of(backtests),
        },
        baselines={name: b.metrics for name, b in backtests.items() if name != "policy"},
        artifacts={
            **artifacts,
            "equity_plot": plot_uri,
        },
    )
    if artifacts.get("model_version"):
        returns = backtests["policy"].returns
        set_metrics(
            engine,
            artifacts["model_name"],
            int(artifacts["model_version"]),
            {
                "validation": backtests["policy"].metrics,
                "validation_plot": plot_uri,
                **(
                    {"expectations": drawdown_expectations(returns, "the validation window")}
                    if len(returns) >= MIN_RETURNS
                    else {}
                ),
            },
        )
    return Evaluation(run_id=run_id, backtests=backtests, plot=plot)


def series_of(backtests: Mapping[str, Backtest]) -> dict[str, Any]:
    """The step returns and positions of each backtest, JSON-able: what a walk-forward
    score chains across folds."""
    first = next(iter(backtests.values()))
    return {
        "ts": first.ts.tolist(),
        **{
            name: {"returns": b.returns.tolist(), "positions": b.positions.tolist()}
            for name, b in backtests.items()
        },
    }


def backtest_onnx(
    engine: Engine,
    onnx_path: Path | str,
    market: Market,
    window: Window,
    features: tuple[str, ...],
    action_map: tuple[float, ...],
    every: int,
    cost: CostModel,
    what: str = "the model",
    sizing: VolatilityTarget | None = None,
    rule: str = "argmax",
) -> dict[str, Backtest]:
    """Backtest an ONNX policy file (run by ONNX Runtime) and the baselines on any window
    of stored candles, the features computed from candles before it as look-back, the
    positions taken and sized as the model was trained (`rule`, `sizing`)."""
    import onnxruntime as ort

    ts, opens, closes, rows = window_steps(engine, market, window, features, every, what)
    tf_ms = market.timeframe_ms
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def policy(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.asarray(obs, np.float32)})[0]

    scale = None if sizing is None else sizing.scale(rows[:-1], features, tf_ms)
    return evaluate_policy(
        policy,
        rows[:-1],
        ts,
        opens,
        closes,
        action_map,
        tf_ms * every,
        cost,
        scale=scale,
        rule=rule,
    )

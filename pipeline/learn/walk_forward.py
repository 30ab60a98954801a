"""Score a training procedure over several out-of-sample folds, not one window.

A fold is a validation window whose model was trained only on candles before it.
Chaining the folds' step returns gives one out-of-sample equity curve; its Sharpe
ratio, how sure that Sharpe is (`pipeline.learn.evidence`: PSR, DSR over the candidates
compared, a block-bootstrap interval) and the worst fold say more than any single
window can. `score` does this for one candidate procedure (an algorithm on a
market); `select` picks among candidates by median fold Sharpe and deflates the
winner's Sharpe by the number of candidates tried.

Inputs are plain values: per fold, the window and the step returns and positions of
the policy and of each baseline (what `onnx_evaluation.evaluate_run` stores as `series`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate import compute_metrics
from pipeline.learn.evidence import confidence, sharpe_per_step
from pipeline.timeutil import YEAR_MS

FOLD_KEYS = ("sharpe", "total_return", "max_drawdown", "trades", "exposure")


def chain(
    folds: Sequence[Mapping[str, Any]], name: str, step_ms: int
) -> tuple[np.ndarray, dict[str, float]]:
    """The step returns of backtest `name` over every fold, in order, and their metrics."""
    returns = np.concatenate([np.asarray(f["series"][name]["returns"], float) for f in folds])
    positions = np.concatenate([np.asarray(f["series"][name]["positions"], float) for f in folds])
    return returns, compute_metrics(returns, positions, step_ms)


def score(
    folds: Sequence[Mapping[str, Any]],
    step_ms: int,
    n_trials: int = 1,
    trial_sharpes: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Walk-forward evidence of one candidate procedure.

    `folds`: chronological, each {"valid": [start, end], "series": {name: {"returns",
    "positions"}}} with a "policy" entry and the baselines. Returns per-fold figures,
    median fold Sharpe, worst fold drawdown and return, the chained policy and
    baselines, and the confidence of the chained Sharpe ratio.
    """
    if not folds:
        raise DataValidationError("a walk-forward score needs at least one evaluated fold")
    ordered = sorted(folds, key=lambda f: f["valid"][0])
    for before, after in pairwise(ordered):
        if after["valid"][0] < before["valid"][1]:
            raise DataValidationError(
                f"walk-forward folds overlap: {before['valid']} and {after['valid']}; "
                "each fold must validate on its own window"
            )
    per_fold = []
    for fold in ordered:
        series = fold["series"]["policy"]
        metrics = compute_metrics(
            np.asarray(series["returns"], float), np.asarray(series["positions"], float), step_ms
        )
        per_fold.append({"valid": list(fold["valid"]), **{k: metrics[k] for k in FOLD_KEYS}})
    returns, chained = chain(ordered, "policy", step_ms)
    baselines = {
        name: chain(ordered, name, step_ms)[1]
        for name in ordered[0]["series"]
        if name not in ("policy", "ts")
    }
    sure = confidence(
        returns, YEAR_MS / step_ms, n_trials=n_trials, trial_sharpes=trial_sharpes
    ).to_dict()
    return {
        "folds": per_fold,
        "median_sharpe": float(np.median([f["sharpe"] for f in per_fold])),
        "worst_drawdown": float(max(f["max_drawdown"] for f in per_fold)),
        "worst_return": float(min(f["total_return"] for f in per_fold)),
        "chained": chained,
        "baselines": baselines,
        "confidence": sure,
    }


def select(candidates: Mapping[str, Sequence[Mapping[str, Any]]], step_ms: int) -> dict[str, Any]:
    """Score every candidate's folds and pick the best median fold Sharpe (the chained
    Sharpe breaks ties). The DSR of each counts every candidate as a trial, with the
    spread of their chained Sharpe ratios. Returns {"best": key, "scores": {key: score}}.
    """
    if not candidates:
        raise DataValidationError("no candidate to select: every training run failed")
    periods = YEAR_MS / step_ms
    trial_sharpes = [
        sharpe_per_step(chain(sorted(f, key=lambda x: x["valid"][0]), "policy", step_ms)[0])
        * math.sqrt(periods)
        for f in candidates.values()
    ]
    scores = {
        key: score(folds, step_ms, n_trials=len(candidates), trial_sharpes=trial_sharpes)
        for key, folds in candidates.items()
    }
    best = max(scores, key=lambda k: (scores[k]["median_sharpe"], scores[k]["chained"]["sharpe"]))
    return {"best": best, "scores": scores}

"""Positions a policy or a baseline rule takes, and the backtest of both on one window."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from pipeline.learn.evaluate.backtest import (
    Backtest,
    backtest_positions,
    checked_prices,
    require_finite,
)
from pipeline.learn.evaluate.costs import CostModel

BASELINES = ("buy_and_hold", "flat", "momentum")
POSITION_RULES = ("argmax", "expected")


def greedy_positions(
    policy: Callable[[np.ndarray], np.ndarray],
    features: np.ndarray,
    action_map: Sequence[float],
    start_position: float = 0.0,
    rule: str = "argmax",
) -> np.ndarray:
    """Positions [T] that `policy` takes at each row, by `rule` (see POSITION_RULES).

    `policy` maps observations [B, F+1] float32 (the features, then the current
    position) to scores [B, A]. "argmax" holds the action with the highest score;
    "expected" holds the mean position under the softmax of the scores (a policy's
    logits), and observes the action nearest to it, as the trader does. The observed
    position can only be a value of the action map or the start position, so the
    policy runs ONCE on every (t, possible position) pair and the sequential walk only
    reads that table: one call, not T (STYLE.md 16).
    """
    if rule not in POSITION_RULES:
        raise ValueError(f"unknown position rule {rule!r}; known: {', '.join(POSITION_RULES)}")
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-d [T, F], got shape {feats.shape}")
    require_finite("features", feats)
    actions = np.asarray(action_map, dtype=np.float64)
    if actions.ndim != 1 or actions.shape[0] == 0:
        raise ValueError(f"action_map must be a non-empty sequence, got {action_map!r}")
    # The distinct positions, keyed by their float32 value (what the policy sees).
    start_key = float(np.float32(start_position))
    states = list(dict.fromkeys([*actions.astype(np.float32).tolist(), start_key]))
    state_of_action = [states.index(float(np.float32(a))) for a in actions]
    n_rows, n_states = feats.shape[0], len(states)
    if n_rows == 0:
        return np.zeros(0, dtype=np.float64)

    obs = np.empty((n_rows, n_states, feats.shape[1] + 1), dtype=np.float32)
    obs[:, :, :-1] = feats[:, None, :]
    obs[:, :, -1] = np.asarray(states, dtype=np.float32)
    scores = np.asarray(policy(obs.reshape(n_rows * n_states, -1)))
    if scores.shape != (n_rows * n_states, actions.shape[0]):
        raise ValueError(
            f"policy returned scores of shape {scores.shape}, expected "
            f"{(n_rows * n_states, actions.shape[0])} (one score per action of the map)"
        )
    if rule == "argmax":
        observed = scores.argmax(axis=1)
        held = actions[observed]
    else:
        held = expected_positions(scores, actions)
        observed = nearest_actions(held, actions)
    held_table = held.reshape(n_rows, n_states)
    next_state = np.asarray(state_of_action)[observed].reshape(n_rows, n_states).tolist()

    positions = np.empty(n_rows, dtype=np.float64)
    state = states.index(start_key)
    for t, row in enumerate(next_state):
        positions[t] = held_table[t, state]
        state = row[state]
    return positions


def expected_positions(logits: npt.ArrayLike, action_map: Sequence[float]) -> np.ndarray:
    """The mean position under the softmax of each row of `logits` [B, A]: the sum of
    p(action) * position(action). An ensemble whose members disagree holds part of the
    position instead of flipping between all and nothing on a near tie."""
    scores = np.asarray(logits, dtype=np.float64)
    require_finite("logits", scores)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ np.asarray(action_map, dtype=np.float64)


def nearest_actions(positions: npt.ArrayLike, action_map: Sequence[float]) -> np.ndarray:
    """Index of the action of the map nearest to each position (the first on a tie):
    what a policy observes of a position between its actions."""
    held = np.asarray(positions, dtype=np.float64)
    actions = np.asarray(action_map, dtype=np.float64)
    return np.abs(held[..., None] - actions).argmin(axis=-1)


def baseline_positions(
    name: str, close: np.ndarray, action_map: Sequence[float], lookback: int = 24
) -> np.ndarray:
    """Positions of a simple rule, one per element of `close` (decided at its close).

    - buy_and_hold: always the largest position of the action map;
    - flat: always 0;
    - momentum: long (max of the map) when close[t] / close[t - lookback] > 1, else
      short (min of the map) when the map allows shorting, else flat; flat while
      t < lookback. It reads only closes up to t, so it has no look-ahead.
    """
    closes = checked_prices("close", close)
    actions = [float(a) for a in action_map]
    if not actions:
        raise ValueError("action_map must not be empty")
    long, short = max(actions), min(min(actions), 0.0)
    if name == "buy_and_hold":
        return np.full(closes.shape[0], long)
    if name == "flat":
        return np.zeros(closes.shape[0])
    if name == "momentum":
        if lookback < 1:
            raise ValueError(f"momentum lookback must be >= 1, got {lookback}")
        positions = np.zeros(closes.shape[0])
        if closes.shape[0] > lookback:
            rising = closes[lookback:] / closes[:-lookback] > 1.0
            positions[lookback:] = np.where(rising, long, short)
        return positions
    raise ValueError(f"unknown baseline {name!r}; known baselines: {', '.join(BASELINES)}")


def evaluate_policy(
    policy: Callable[[np.ndarray], np.ndarray],
    features: np.ndarray,
    ts: npt.ArrayLike,
    open: npt.ArrayLike,
    close: npt.ArrayLike,
    action_map: Sequence[float],
    timeframe_ms: int,
    cost: CostModel = CostModel(),
    name: str = "policy",
    scale: npt.ArrayLike | None = None,
    rule: str = "argmax",
) -> dict[str, Backtest]:
    """Backtest the policy (positions by `rule`, see `greedy_positions`) and every
    baseline on the same window and costs.

    `features` has one row per decision index (n rows); ts/open/close have n + 1.
    `scale` (n values, see `VolatilityTarget`) sizes the policy's positions; the walk
    itself runs on the unscaled positions the policy observes. All start flat.
    Returns {name: policy backtest, then one entry per baseline}.
    """
    if name in BASELINES:
        raise ValueError(f"policy name {name!r} collides with a baseline {BASELINES}")
    feats = np.asarray(features)
    closes = np.asarray(close, dtype=np.float64)
    if feats.ndim != 2 or closes.shape != (feats.shape[0] + 1,):
        raise ValueError(
            f"features [n, F] need n + 1 candles; got features {feats.shape}, close {closes.shape}"
        )
    runs = {name: greedy_positions(policy, feats, action_map, rule=rule)}
    if scale is not None:
        sizes = np.asarray(scale, dtype=np.float64)
        if sizes.shape != (feats.shape[0],):
            raise ValueError(f"scale {sizes.shape} must have one value per row {feats.shape[0]}")
        require_finite("scale", sizes)
        runs[name] = runs[name] * sizes
    for baseline in BASELINES:
        runs[baseline] = baseline_positions(baseline, closes, action_map)[:-1]
    return {
        key: backtest_positions(key, ts, open, closes, positions, timeframe_ms, cost)
        for key, positions in runs.items()
    }

"""The trading environment, vectorized over N parallel episodes as TensorFlow tensors.

Functional: `reset` and `step` take and return an `EnvState` of tensors, so a
whole rollout (policy, step, replay writes, updates) compiles into one graph on
GPU or CPU. The same semantics in numpy, one episode at a time, live in
`TradingGymEnv` (gymnasium) for comparisons with other libraries.

Semantics (the cost model of `pipeline.learn.evaluate`, tested against it):
- The observation at decision index t is the feature row of candle t (data up to
  its close) followed by the position currently held.
- The action indexes the action map of target positions (fractions of equity).
  The decision at t fills at the open of candle t+1: the old position is held
  from close t to open t+1, then fee + slippage are charged on the turnover
  |target - old|, then the target is held over candle t+1.
- reward = log of the equity growth over that step, net of costs (a losing step
  weighs 1 + `downside_penalty` times when that is set).
- Episodes start at a uniformly random index of the window (position flat) and
  last `episode_length` steps, ending no later than the last decision row (whose
  observation is the final one); the last step is *truncated* (a time limit, not
  an end of the world): learners bootstrap from `final_obs`, the observation the
  episode would have continued from. The env then resets that episode by itself.
  There is no natural termination (`terminated` is always False); it exists so
  algorithms handle both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import tensorflow as tf

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate import CostModel
from pipeline.learn.rl.arrays import MarketArrays

LONG_FLAT = (0.0, 1.0)
LONG_FLAT_SHORT = (0.0, 1.0, -1.0)


def action_map(steps: int = 1, shorting: bool = False) -> tuple[float, ...]:
    """Flat, the long positions k/steps for k = 1..steps, then their negatives when
    shorting: steps=1 is LONG_FLAT or LONG_FLAT_SHORT."""
    longs = tuple(k / steps for k in range(1, steps + 1))
    return (0.0, *longs, *(-p for p in longs)) if shorting else (0.0, *longs)


@dataclass(frozen=True)
class EnvConfig:
    """How episodes are drawn and what trading costs."""

    num_envs: int = 64
    """Parallel episodes stepped together."""
    episode_length: int = 168
    """Decisions per episode (168 = one week of 1h candles)."""
    action_map: tuple[float, ...] = LONG_FLAT
    """Target position of each action index; must contain 0.0 (episodes start flat)."""
    fee_bps: float = 10.0
    """Taker fee in basis points of the traded notional."""
    slippage_bps: float = 5.0
    """Slippage in basis points of the traded notional."""
    borrow_per_step: float = 0.0
    """A short's borrow interest per step, a fraction of its notional."""
    downside_penalty: float = 0.0
    """Extra weight of a losing step in the reward: reward = g + penalty * min(g, 0),
    g the step's log growth (0: plain log growth). Shapes learning only; episode
    returns and every backtest stay plain."""

    def __post_init__(self) -> None:
        if self.num_envs < 1 or self.episode_length < 1:
            raise ValueError("num_envs and episode_length must be at least 1")
        if self.downside_penalty < 0:
            raise ValueError(f"downside_penalty must be >= 0, got {self.downside_penalty}")
        if 0.0 not in self.action_map or len(set(self.action_map)) != len(self.action_map):
            raise ValueError(
                f"action map {self.action_map} must list distinct positions including 0.0 "
                "(flat), e.g. (0.0, 1.0) or (0.0, 1.0, -1.0)"
            )

    @property
    def cost(self) -> CostModel:
        """The cost model shared with the backtest."""
        return CostModel(self.fee_bps, self.slippage_bps, self.borrow_per_step)


def _check_fits(data: MarketArrays, config: EnvConfig) -> None:
    if len(data) < config.episode_length + 1:
        raise DataValidationError(
            f"the window has {len(data)} decision candles but an episode needs "
            f"{config.episode_length + 1}: widen the window, decide more often or shorten "
            "episode_length"
        )


@dataclass(frozen=True)
class Spec:
    """Shape, dtype and bounds of an observation or action (TF-Agents style)."""

    shape: tuple[int, ...]
    dtype: tf.DType
    minimum: float | None = None
    maximum: float | None = None


class EnvState(NamedTuple):
    """Per-episode state: decision index, steps taken, position held, return so far."""

    index: tf.Tensor
    step: tf.Tensor
    position: tf.Tensor
    episode_return: tf.Tensor


class StepResult(NamedTuple):
    """One step of every episode; `obs` is after auto-reset, `final_obs` before it."""

    state: EnvState
    obs: tf.Tensor
    reward: tf.Tensor
    terminated: tf.Tensor
    truncated: tf.Tensor
    final_obs: tf.Tensor


class TradingEnv:
    """N parallel trading episodes over one market window, stepped as tensors."""

    def __init__(self, data: MarketArrays, config: EnvConfig = EnvConfig()) -> None:
        _check_fits(data, config)
        self.config = config
        self.data = data
        self.features = tf.constant(data.features)
        self.gap = tf.constant(data.gap)
        self.bar = tf.constant(data.bar)
        self.scale = tf.constant(data.sizes)
        self.action_positions = tf.constant(config.action_map, dtype=tf.float32)
        self.cost_rate = tf.constant(config.cost.rate, dtype=tf.float32)
        self.borrow = tf.constant(config.borrow_per_step, dtype=tf.float32)
        self.num_starts = len(data) - config.episode_length
        self.observation_spec = Spec((data.features.shape[1] + 1,), tf.float32)
        self.action_spec = Spec((), tf.int32, 0, len(config.action_map) - 1)

    @property
    def num_envs(self) -> int:
        """Parallel episodes."""
        return self.config.num_envs

    @property
    def num_actions(self) -> int:
        """Size of the action map."""
        return len(self.config.action_map)

    def _starts(self, rng: tf.random.Generator, n: int) -> tf.Tensor:
        return rng.uniform([n], 0, self.num_starts, dtype=tf.int32)

    def observe(self, state: EnvState) -> tf.Tensor:
        """Observation of each episode: features at its index, then its position."""
        rows = tf.gather(self.features, state.index)
        return tf.concat([rows, state.position[:, None]], axis=1)

    def reset(self, rng: tf.random.Generator) -> tuple[EnvState, tf.Tensor]:
        """Fresh episodes at random starts, flat."""
        n = self.config.num_envs
        zeros = tf.zeros([n], tf.float32)
        state = EnvState(self._starts(rng, n), tf.zeros([n], tf.int32), zeros, zeros)
        return state, self.observe(state)

    def step(self, state: EnvState, action: tf.Tensor, rng: tf.random.Generator) -> StepResult:
        """Fill every episode's target at the next open, earn the candle, auto-reset ends.

        The state holds the unscaled position (what the policy observes); what is held
        is that position times the row's scale."""
        action = tf.cast(action, tf.int32)
        chosen = tf.gather(self.action_positions, action)
        target = chosen * tf.gather(self.scale, state.index)
        old = state.position * tf.gather(self.scale, tf.maximum(state.index - 1, 0))
        growth = (
            (1.0 + old * tf.gather(self.gap, state.index))
            * (1.0 - self.cost_rate * tf.abs(target - old))
            * (1.0 + target * tf.gather(self.bar, state.index))
            * (1.0 - self.borrow * tf.nn.relu(-target))
        )
        logged = tf.math.log(tf.maximum(growth, 1e-9))
        reward = logged + self.config.downside_penalty * tf.minimum(logged, 0.0)
        moved = EnvState(state.index + 1, state.step + 1, chosen, state.episode_return + logged)
        final_obs = self.observe(moved)
        truncated = moved.step >= self.config.episode_length
        terminated = tf.zeros_like(truncated)
        fresh = self._starts(rng, self.config.num_envs)
        zeros = tf.zeros_like(chosen)
        next_state = EnvState(
            tf.where(truncated, fresh, moved.index),
            tf.where(truncated, tf.zeros_like(moved.step), moved.step),
            tf.where(truncated, zeros, chosen),
            tf.where(truncated, zeros, moved.episode_return),
        )
        obs = tf.where(truncated[:, None], self.observe(next_state), final_obs)
        return StepResult(next_state, obs, reward, terminated, truncated, final_obs)


def check_env(env: TradingEnv, steps: int | None = None, seed: int = 0) -> None:
    """Conformance check: specs hold, values are finite, auto-reset works, seeds repeat.

    Raises AssertionError naming the first broken promise.
    """
    steps = steps or env.config.episode_length + 2
    results = []
    for _ in range(2):
        rng = tf.random.Generator.from_seed(seed)
        state, obs = env.reset(rng)
        _check_obs(env, obs, "reset")
        trace = []
        for i in range(steps):
            action = rng.uniform([env.num_envs], 0, env.num_actions, dtype=tf.int32)
            out = env.step(state, action, rng)
            _check_obs(env, out.obs, f"step {i}")
            _check_obs(env, out.final_obs, f"step {i} final_obs")
            _expect(out.reward.shape == (env.num_envs,), f"reward shape {out.reward.shape}")
            _expect(bool(tf.reduce_all(tf.math.is_finite(out.reward))), f"reward at step {i}")
            _expect(out.terminated.dtype == tf.bool and out.truncated.dtype == tf.bool, "flags")
            ended = out.truncated.numpy()
            _expect(
                bool(np.all(out.state.position.numpy()[ended] == 0.0)),
                f"episodes reset at step {i} must start flat",
            )
            expected_end = (i + 1) % env.config.episode_length == 0
            _expect(bool(np.all(ended == expected_end)), f"truncation at step {i}")
            index = out.state.index.numpy()
            _expect(
                bool(np.all((index >= 0) & (index < len(env.data)))),
                f"index inside the window at step {i}",
            )
            trace.append(out.reward.numpy())
            state = out.state
        results.append(np.stack(trace))
    _expect(np.array_equal(results[0], results[1]), "the same seed must give the same episodes")


def _check_obs(env: TradingEnv, obs: tf.Tensor, where: str) -> None:
    spec = env.observation_spec
    _expect(obs.dtype == spec.dtype, f"{where}: observation dtype {obs.dtype} != {spec.dtype}")
    _expect(
        tuple(obs.shape) == (env.num_envs, *spec.shape),
        f"{where}: observation shape {tuple(obs.shape)} != {(env.num_envs, *spec.shape)}",
    )
    _expect(bool(tf.reduce_all(tf.math.is_finite(obs))), f"{where}: observation not finite")
    positions = obs[:, -1].numpy()
    _expect(
        bool(np.all(np.isin(positions, np.asarray(env.config.action_map, np.float32)))),
        f"{where}: position outside the action map",
    )


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"environment check failed: {what}")


class TradingGymEnv(gym.Env):
    """The same environment as a gymnasium env: one episode, numpy, for comparisons."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, data: MarketArrays, config: EnvConfig = EnvConfig()) -> None:
        _check_fits(data, config)
        self.data = data
        self.config = config
        self.positions = np.asarray(config.action_map, dtype=np.float32)
        self.rate = np.float32(config.cost.rate)
        self.borrow = np.float32(config.borrow_per_step)
        self.num_starts = len(data) - config.episode_length
        dim = data.features.shape[1] + 1
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Discrete(len(config.action_map))
        self._index = 0
        self._step = 0
        self._position = np.float32(0.0)

    def _obs(self) -> np.ndarray:
        return np.append(self.data.features[self._index], self._position).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at a random index, flat."""
        super().reset(seed=seed)
        start = None if options is None else options.get("start")
        self._index = int(self.np_random.integers(self.num_starts)) if start is None else start
        self._step = 0
        self._position = np.float32(0.0)
        return self._obs(), {"index": self._index}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Fill the target at the next open, earn the candle; truncate at the episode length."""
        chosen = self.positions[int(action)]
        t = self._index
        sizes = self.data.sizes
        target = chosen * sizes[t]
        old = self._position * sizes[max(t - 1, 0)]
        growth = (
            (np.float32(1.0) + old * self.data.gap[t])
            * (np.float32(1.0) - self.rate * np.abs(target - old))
            * (np.float32(1.0) + target * self.data.bar[t])
            * (np.float32(1.0) - self.borrow * max(-target, np.float32(0.0)))
        )
        logged = float(np.log(max(growth, np.float32(1e-9))))
        reward = logged + self.config.downside_penalty * min(logged, 0.0)
        self._index += 1
        self._step += 1
        self._position = chosen
        truncated = self._step >= self.config.episode_length
        return self._obs(), reward, False, truncated, {"index": self._index}

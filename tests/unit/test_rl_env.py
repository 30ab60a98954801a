"""The trading environment: the cost model of the backtest, fill timing, episodes, specs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate import CostModel, backtest_positions, step_growth
from pipeline.learn.rl.env import (
    LONG_FLAT_SHORT,
    EnvConfig,
    EnvState,
    MarketArrays,
    TradingEnv,
    TradingGymEnv,
    action_map,
    check_env,
)

HOUR = 3_600_000


def market(n: int = 400, seed: int = 0, features: int = 3) -> tuple[MarketArrays, dict]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    ts = np.arange(n, dtype=np.int64) * HOUR
    feats = rng.normal(size=(n, features))
    raw = {"ts": ts, "open": open_, "close": close, "features": feats}
    return MarketArrays.from_candles(ts, open_, close, feats), raw


def one_env(data: MarketArrays, **options: object) -> TradingEnv:
    config = EnvConfig(num_envs=1, **{"episode_length": 5, **options})
    return TradingEnv(data, config)


def step_from(env: TradingEnv, index: int, position: float, action: int):
    state = EnvState(
        tf.constant([index]), tf.constant([0]), tf.constant([position]), tf.constant([0.0])
    )
    return env.step(state, tf.constant([action]), tf.random.Generator.from_seed(0))


def test_reward_is_log_growth_filled_at_next_open_with_costs_on_turnover() -> None:
    ts = np.arange(4, dtype=np.int64) * HOUR
    open_ = np.array([100.0, 102.0, 99.0, 100.0])
    close = np.array([101.0, 104.0, 100.0, 100.0])
    data = MarketArrays.from_candles(ts, open_, close, np.zeros((4, 1)))
    env = one_env(data, episode_length=1)
    # flat at close 0, go long: fill at open 1 (102) paying 15 bps, earn 104/102
    out = step_from(env, 0, 0.0, 1)
    assert out.reward.numpy()[0] == pytest.approx(np.log((1 - 0.0015) * 104 / 102), abs=1e-6)
    # long at close 1 (104), go flat: the old position earns the gap 104 -> 99, then pays
    out = step_from(env, 1, 1.0, 0)
    assert out.reward.numpy()[0] == pytest.approx(np.log(99 / 104 * (1 - 0.0015)), abs=1e-6)


def test_short_position_earns_when_price_falls() -> None:
    data, _ = market()
    env = one_env(data, action_map=LONG_FLAT_SHORT)
    t = int(np.argmin(data.bar))
    out = step_from(env, t, -1.0, 2)
    assert data.bar[t] < 0
    assert out.reward.numpy()[0] == pytest.approx(
        np.log((1 - data.gap[t]) * (1 - data.bar[t])), abs=1e-6
    )


def test_rewards_equal_the_backtest_of_the_same_positions() -> None:
    data, raw = market(n=60)
    actions = np.random.default_rng(1).integers(0, 3, size=40)
    action_map = LONG_FLAT_SHORT
    env = one_env(data, action_map=action_map, episode_length=40)
    state = EnvState(tf.constant([0]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    rng = tf.random.Generator.from_seed(0)
    rewards = []
    for action in actions:
        out = env.step(state, tf.constant([int(action)]), rng)
        rewards.append(out.reward.numpy()[0])
        state = out.state
    positions = np.asarray(action_map)[actions]
    reference = backtest_positions(
        "same", raw["ts"][:41], raw["open"][:41], raw["close"][:41], positions, HOUR
    )
    np.testing.assert_allclose(np.exp(rewards), 1 + reference.returns, rtol=2e-6)


def sized(n: int, seed: int = 3) -> tuple[MarketArrays, dict]:
    _, raw = market(n=n)
    raw["scale"] = np.random.default_rng(seed).uniform(0.2, 1.0, n)
    data = MarketArrays.from_candles(
        raw["ts"], raw["open"], raw["close"], raw["features"], scale=raw["scale"]
    )
    return data, raw


def test_sized_rewards_equal_the_backtest_of_the_scaled_positions() -> None:
    data, raw = sized(60)
    actions = np.random.default_rng(1).integers(0, 3, size=40)
    env = one_env(data, action_map=LONG_FLAT_SHORT, episode_length=40)
    state = EnvState(tf.constant([0]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    rng = tf.random.Generator.from_seed(0)
    rewards, observed = [], []
    for action in actions:
        out = env.step(state, tf.constant([int(action)]), rng)
        rewards.append(out.reward.numpy()[0])
        observed.append(out.final_obs.numpy()[0, -1])
        state = out.state
    chosen = np.asarray(LONG_FLAT_SHORT)[actions]
    reference = backtest_positions(
        "sized",
        raw["ts"][:41],
        raw["open"][:41],
        raw["close"][:41],
        chosen * raw["scale"][:40],
        HOUR,
    )
    np.testing.assert_allclose(np.exp(rewards), 1 + reference.returns, rtol=2e-6)
    np.testing.assert_array_equal(observed, chosen.astype(np.float32))  # unscaled in the obs


def test_sized_gym_twin_gives_the_same_rewards() -> None:
    data, _ = sized(80)
    config = EnvConfig(num_envs=1, episode_length=30, action_map=LONG_FLAT_SHORT)
    env, gym_env = TradingEnv(data, config), TradingGymEnv(data, config)
    gym_env.reset(seed=0, options={"start": 7})
    state = EnvState(tf.constant([7]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    rng = tf.random.Generator.from_seed(0)
    for action in np.random.default_rng(2).integers(0, 3, size=30):
        out = env.step(state, tf.constant([int(action)]), rng)
        _, reward, _, _, _ = gym_env.step(int(action))
        assert reward == pytest.approx(float(out.reward.numpy()[0]), abs=1e-6)
        state = out.state


def test_gym_twin_gives_the_same_rewards_and_observations() -> None:
    data, _ = market(n=80)
    config = EnvConfig(num_envs=1, episode_length=30, action_map=LONG_FLAT_SHORT)
    env, gym_env = TradingEnv(data, config), TradingGymEnv(data, config)
    obs, _ = gym_env.reset(seed=0, options={"start": 7})
    state = EnvState(tf.constant([7]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    np.testing.assert_array_equal(obs, env.observe(state).numpy()[0])
    rng = tf.random.Generator.from_seed(0)
    for action in np.random.default_rng(2).integers(0, 3, size=30):
        out = env.step(state, tf.constant([int(action)]), rng)
        obs, reward, terminated, truncated, _ = gym_env.step(int(action))
        assert reward == pytest.approx(float(out.reward.numpy()[0]), abs=1e-6)
        np.testing.assert_array_equal(obs, out.final_obs.numpy()[0])
        assert truncated == bool(out.truncated.numpy()[0])
        assert not terminated
        state = out.state


def test_a_downside_penalty_weighs_losing_steps_more_in_both_twins_not_in_the_return() -> None:
    data, _ = market(n=80)
    plain_config = EnvConfig(num_envs=1, episode_length=30, action_map=LONG_FLAT_SHORT)
    shaped_config = dataclasses.replace(plain_config, downside_penalty=1.5)
    plain, shaped = TradingEnv(data, plain_config), TradingEnv(data, shaped_config)
    gym_env = TradingGymEnv(data, shaped_config)
    gym_env.reset(seed=0, options={"start": 7})
    start = EnvState(tf.constant([7]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    state_plain = state_shaped = start
    rng = tf.random.Generator.from_seed(0)
    losses = 0
    for action in np.random.default_rng(2).integers(0, 3, size=29):
        a = tf.constant([int(action)])
        out_plain, out_shaped = plain.step(state_plain, a, rng), shaped.step(state_shaped, a, rng)
        g = float(out_plain.reward.numpy()[0])
        expected = g + 1.5 * min(g, 0.0)
        assert float(out_shaped.reward.numpy()[0]) == pytest.approx(expected, abs=1e-6)
        assert gym_env.step(int(action))[1] == pytest.approx(expected, abs=1e-6)
        losses += g < 0
        state_plain, state_shaped = out_plain.state, out_shaped.state
    assert losses > 0
    np.testing.assert_allclose(
        state_shaped.episode_return.numpy(), state_plain.episode_return.numpy(), atol=1e-6
    )


def test_a_negative_downside_penalty_is_refused() -> None:
    with pytest.raises(ValueError, match="downside_penalty must be >= 0"):
        EnvConfig(downside_penalty=-0.5)


def test_observation_is_the_feature_row_and_the_position_held() -> None:
    data, _ = market()
    env = one_env(data)
    out = step_from(env, 10, 0.0, 1)
    np.testing.assert_array_equal(out.obs.numpy()[0, :-1], data.features[11])
    assert out.obs.numpy()[0, -1] == 1.0


def test_episode_truncates_after_its_length_and_restarts_flat() -> None:
    data, _ = market()
    env = TradingEnv(data, EnvConfig(num_envs=4, episode_length=3))
    rng = tf.random.Generator.from_seed(3)
    state, _ = env.reset(rng)
    for step in range(3):
        out = env.step(state, tf.ones([4], tf.int32), rng)
        assert bool(tf.reduce_all(out.truncated)) == (step == 2)
        assert not bool(tf.reduce_any(out.terminated))
        state = out.state
    np.testing.assert_array_equal(out.final_obs.numpy()[:, -1], 1.0)
    np.testing.assert_array_equal(out.obs.numpy()[:, -1], 0.0)
    np.testing.assert_array_equal(state.step.numpy(), 0)
    np.testing.assert_array_equal(state.episode_return.numpy(), 0.0)


def test_episodes_never_step_past_the_window() -> None:
    data, _ = market(n=30)
    env = TradingEnv(data, EnvConfig(num_envs=256, episode_length=20))
    rng = tf.random.Generator.from_seed(0)
    state, _ = env.reset(rng)
    for _ in range(45):
        out = env.step(state, tf.ones([256], tf.int32), rng)
        assert int(tf.reduce_max(out.state.index)) < len(data)
        state = out.state


def test_conformance_check_passes() -> None:
    data, _ = market()
    check_env(TradingEnv(data, EnvConfig(num_envs=8, episode_length=10)))


def test_conformance_check_names_a_broken_promise() -> None:
    class Leaky(TradingEnv):
        def observe(self, state: EnvState) -> tf.Tensor:
            return tf.cast(super().observe(state), tf.float64)

    data, _ = market()
    with pytest.raises(AssertionError, match="observation dtype"):
        check_env(Leaky(data, EnvConfig(num_envs=2, episode_length=4)))


def test_features_that_are_not_finite_are_refused_naming_the_row() -> None:
    _, raw = market(n=20)
    raw["features"][5, 1] = np.nan
    with pytest.raises(DataValidationError, match=f"ts {5 * HOUR}"):
        MarketArrays.from_candles(raw["ts"], raw["open"], raw["close"], raw["features"])


def test_window_shorter_than_an_episode_is_refused() -> None:
    data, _ = market(n=20)
    with pytest.raises(DataValidationError, match="episode needs"):
        TradingEnv(data, EnvConfig(num_envs=1, episode_length=50))


def test_action_map_without_flat_is_refused() -> None:
    with pytest.raises(ValueError, match=r"including 0\.0"):
        EnvConfig(action_map=(1.0, -1.0))


@pytest.mark.parametrize(
    ("steps", "shorting", "expected"),
    [
        (1, False, (0.0, 1.0)),
        (1, True, (0.0, 1.0, -1.0)),
        (2, False, (0.0, 0.5, 1.0)),
        (4, True, (0.0, 0.25, 0.5, 0.75, 1.0, -0.25, -0.5, -0.75, -1.0)),
    ],
)
def test_action_map_steps_from_flat_to_all_in(steps, shorting, expected) -> None:
    assert action_map(steps, shorting) == expected
    EnvConfig(action_map=action_map(steps, shorting))


def test_cost_model_of_the_env_is_the_backtest_one() -> None:
    config = EnvConfig(fee_bps=7, slippage_bps=3)
    assert config.cost == CostModel(fee_bps=7, slippage_bps=3)
    assert step_growth(1.0, 1.0, 1.0, 0.0, 1.0, config.cost) == pytest.approx(0.999)


def test_a_short_pays_borrow_interest_in_the_env_as_in_the_backtest() -> None:
    data, raw = market(n=60)
    actions = np.random.default_rng(4).integers(0, 3, size=40)
    borrow = 0.002  # exaggerated, so that a missing charge cannot hide in the tolerance
    env = one_env(data, action_map=LONG_FLAT_SHORT, episode_length=40, borrow_per_step=borrow)
    state = EnvState(tf.constant([0]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    rng = tf.random.Generator.from_seed(0)
    rewards = []
    for action in actions:
        out = env.step(state, tf.constant([int(action)]), rng)
        rewards.append(out.reward.numpy()[0])
        state = out.state
    positions = np.asarray(LONG_FLAT_SHORT)[actions]
    assert (positions < 0).any()
    charged = backtest_positions(
        "same", raw["ts"][:41], raw["open"][:41], raw["close"][:41], positions, HOUR,
        CostModel(borrow_per_step=borrow),
    )  # fmt: skip
    free = backtest_positions(
        "same", raw["ts"][:41], raw["open"][:41], raw["close"][:41], positions, HOUR
    )
    np.testing.assert_allclose(np.exp(rewards), 1 + charged.returns, rtol=2e-6)
    assert charged.returns.sum() < free.returns.sum()


def test_the_gym_twin_charges_a_short_the_same_borrow_interest() -> None:
    data, _ = market(n=80)
    config = EnvConfig(
        num_envs=1, episode_length=30, action_map=LONG_FLAT_SHORT, borrow_per_step=0.002
    )
    env, gym_env = TradingEnv(data, config), TradingGymEnv(data, config)
    gym_env.reset(seed=0, options={"start": 7})
    state = EnvState(tf.constant([7]), tf.constant([0]), tf.constant([0.0]), tf.constant([0.0]))
    rng = tf.random.Generator.from_seed(0)
    for action in np.random.default_rng(5).integers(0, 3, size=30):
        out = env.step(state, tf.constant([int(action)]), rng)
        _, reward, _, _, _ = gym_env.step(int(action))
        assert reward == pytest.approx(float(out.reward.numpy()[0]), abs=1e-6)
        state = out.state


def test_borrow_interest_per_step_follows_the_steps_hours() -> None:
    cost = CostModel.per_step(10.0, 5.0, borrow_bps_per_hour=0.1, step_ms=4 * HOUR)
    assert cost.borrow_per_step == pytest.approx(0.4e-4)
    short = step_growth(1.0, 1.0, 1.0, -1.0, -1.0, cost)
    assert short == pytest.approx(1 - 0.4e-4)
    assert step_growth(1.0, 1.0, 1.0, 1.0, 1.0, cost) == pytest.approx(1.0), "longs pay none"

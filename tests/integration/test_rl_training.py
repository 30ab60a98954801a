"""DQN and A2C: they learn a planted pattern, repeat with a seed, resume after a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import ConfigurationError
from pipeline.learn.evaluate import evaluate_policy
from pipeline.learn.rl import actor_critic, dqn
from pipeline.learn.rl.env import EnvConfig, MarketArrays, TradingEnv
from pipeline.learn.rl.runtime import training_device

HOUR = 3_600_000


def planted(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A market whose next candle follows a visible regime (+0.5% or -0.5%), plus noise."""
    rng = np.random.default_rng(seed)
    regime = np.empty(n)
    regime[0] = 1.0
    for t in range(1, n):
        regime[t] = regime[t - 1] if rng.random() < 0.8 else -regime[t - 1]
    bar = np.r_[0.0, 0.005 * regime[:-1]] + rng.normal(0, 0.002, n)
    close = 100 * np.cumprod(1 + bar)
    open_ = np.r_[100.0, close[:-1]]
    features = np.column_stack([regime, rng.normal(size=n), rng.normal(size=n)])
    return {"ts": np.arange(n, dtype=np.int64) * HOUR, "open": open_, "close": close, "x": features}


def split(series: dict[str, np.ndarray], cut: int) -> tuple[MarketArrays, dict]:
    train = MarketArrays.from_candles(
        series["ts"][:cut], series["open"][:cut], series["close"][:cut], series["x"][:cut]
    )
    valid = {k: v[cut:] for k, v in series.items()}
    return train, valid


def validate(model, valid: dict) -> dict:
    def policy(obs: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(obs))

    return evaluate_policy(
        policy, valid["x"][:-1], valid["ts"], valid["open"], valid["close"], (0.0, 1.0), HOUR
    )


MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def small_dqn(**overrides: object) -> dqn.DQNConfig:
    options = {
        "total_steps": 6_000,
        "learning_starts": 500,
        "buffer_size": 4_000,
        "target_update_interval": 500,
        "chunk_steps": 2_000,
        "learning_rate": 1e-3,
        "seed": 7,
    }
    return dqn.DQNConfig(**{**options, **overrides})


def small_a2c(**overrides: object) -> actor_critic.A2CConfig:
    options = {"total_steps": 48_000, "chunk_steps": 16_000, "seed": 7}
    return actor_critic.A2CConfig(**{**options, **overrides})


def weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def test_dqn_learns_a_planted_pattern_and_beats_buy_and_hold(tmp_path: Path) -> None:
    train, valid = split(planted(3_000), 2_000)
    env = TradingEnv(train, EnvConfig(num_envs=8, episode_length=64))
    config = small_dqn(total_steps=40_000, exploration_fraction=0.2, updates_per_step=0.5)
    result = dqn.train(config, env, MEAN, STD, tmp_path / "dqn")
    backtests = validate(result.model, valid)
    assert result.updates == pytest.approx(0.5 * (40_000 - 500), abs=8)
    assert backtests["policy"].metrics["sharpe"] > backtests["buy_and_hold"].metrics["sharpe"] + 1
    assert backtests["policy"].metrics["total_return"] > 0.5


def test_a2c_learns_a_planted_pattern_and_beats_buy_and_hold(tmp_path: Path) -> None:
    train, valid = split(planted(3_000), 2_000)
    env = TradingEnv(train, EnvConfig(num_envs=256, episode_length=64))
    config = small_a2c(total_steps=1_500_000, chunk_steps=500_000, learning_rate=2e-3)
    result = actor_critic.train(config, env, MEAN, STD, tmp_path / "a2c")
    backtests = validate(result.model, valid)
    assert backtests["policy"].metrics["sharpe"] > backtests["buy_and_hold"].metrics["sharpe"] + 1
    assert backtests["policy"].metrics["total_return"] > 0.5


@pytest.mark.parametrize("algorithm", ["dqn", "a2c"])
def test_same_seed_gives_the_same_weights(tmp_path: Path, algorithm: str) -> None:
    train, _ = split(planted(600), 500)
    runs = []
    for name in ("first", "second"):
        if algorithm == "dqn":
            env = TradingEnv(train, EnvConfig(num_envs=4, episode_length=32))
            result = dqn.train(small_dqn(), env, MEAN, STD, tmp_path / name)
        else:
            env = TradingEnv(train, EnvConfig(num_envs=64, episode_length=32))
            result = actor_critic.train(small_a2c(), env, MEAN, STD, tmp_path / name)
        runs.append(weights(result.model))
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)


class Crash(Exception):
    pass


def crash_after(chunks: int):
    seen = []

    def on_chunk(record: dict) -> None:
        seen.append(record)
        if len(seen) == chunks:
            raise Crash

    return on_chunk


@pytest.mark.parametrize("algorithm", ["dqn", "a2c"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, algorithm: str) -> None:
    train_data, _ = split(planted(600), 500)

    def run(run_dir: Path, on_chunk=None):
        if algorithm == "dqn":
            env = TradingEnv(train_data, EnvConfig(num_envs=4, episode_length=32))
            return dqn.train(small_dqn(), env, MEAN, STD, run_dir, on_chunk=on_chunk)
        env = TradingEnv(train_data, EnvConfig(num_envs=64, episode_length=32))
        return actor_critic.train(small_a2c(), env, MEAN, STD, run_dir, on_chunk=on_chunk)

    whole = run(tmp_path / "whole")
    with pytest.raises(Crash):
        run(tmp_path / "interrupted", on_chunk=crash_after(1))
    resumed = run(tmp_path / "interrupted")
    assert resumed.env_steps == whole.env_steps
    assert len(resumed.history) == len(whole.history) - 1
    for a, b in zip(weights(whole.model), weights(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("algorithm", ["dqn", "a2c"])
def test_a_run_lost_with_its_worker_resumes_on_another_from_the_checkpoint_store(
    tmp_path: Path, algorithm: str
) -> None:
    train_data, _ = split(planted(600), 500)
    store = (tmp_path / "artifacts" / "checkpoints" / "run-1").as_uri()

    def run(run_dir: Path, on_chunk=None, checkpoint_store=None):
        if algorithm == "dqn":
            env = TradingEnv(train_data, EnvConfig(num_envs=4, episode_length=32))
            config, module = small_dqn(), dqn
        else:
            env = TradingEnv(train_data, EnvConfig(num_envs=64, episode_length=32))
            config, module = small_a2c(), actor_critic
        return module.train(
            config, env, MEAN, STD, run_dir, on_chunk=on_chunk, checkpoint_store=checkpoint_store
        )

    whole = run(tmp_path / "whole")
    with pytest.raises(Crash):
        run(tmp_path / "worker-a", on_chunk=crash_after(1), checkpoint_store=store)
    resumed = run(tmp_path / "worker-b", checkpoint_store=store)
    assert len(resumed.history) == len(whole.history) - 1, "it went on from the first chunk"
    for a, b in zip(weights(whole.model), weights(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    kept = sorted(p.name for p in (tmp_path / "artifacts" / "checkpoints" / "run-1").iterdir())
    assert kept == sorted(p.name for p in (tmp_path / "worker-b" / "checkpoints").iterdir())


def test_run_logs_hyperparameters_and_summaries(tmp_path: Path) -> None:
    train, _ = split(planted(600), 500)
    env = TradingEnv(train, EnvConfig(num_envs=4, episode_length=32))
    result = dqn.train(small_dqn(total_steps=2_000), env, MEAN, STD, tmp_path)
    params = (tmp_path / "params.json").read_text()
    assert '"n_step": 3' in params
    assert '"device": "CPU"' in params
    assert result.device == "CPU"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert result.history[-1]["env_steps"] == 2_000


def test_mixed_precision_path_trains(tmp_path: Path) -> None:
    train, _ = split(planted(600), 500)
    env = TradingEnv(train, EnvConfig(num_envs=64, episode_length=32))
    agent = actor_critic.A2CAgent(small_a2c(), env, MEAN, STD, mixed_precision=True)
    metrics = agent.learn(np.int64(3))
    assert np.isfinite(float(metrics["value_loss"]))
    assert agent.model.get_layer("policy_0").compute_dtype == "float16"


@pytest.mark.skipif(training_device() != "CPU", reason="this machine has a GPU")
def test_training_that_requires_a_gpu_refuses_to_run_on_cpu() -> None:
    with pytest.raises(ConfigurationError, match="require_gpu"):
        training_device(require_gpu=True)


def test_gae_bootstraps_a_truncated_step_from_its_final_value_not_the_next_episode() -> None:
    train, _ = split(planted(600), 500)
    env = TradingEnv(train, EnvConfig(num_envs=1, episode_length=2))
    agent = actor_critic.A2CAgent(small_a2c(n_steps=2, gamma=0.5, gae_lambda=0.5), env, MEAN, STD)
    advantages = agent.advantages(
        values=tf.constant([[0.0], [0.0]]),
        rewards=tf.constant([[1.0], [1.0]]),
        ended=tf.constant([[0.0], [1.0]]),
        terminated=tf.constant([[0.0], [0.0]]),
        final_values=tf.constant([[10.0], [10.0]]),
        last_value=tf.constant([5.0]),
    ).numpy()[:, 0]
    last = 1.0 + 0.5 * 10.0
    np.testing.assert_allclose(advantages, [1.0 + 0.25 * last, last])


def test_rollouts_longer_than_an_episode_are_refused() -> None:
    train, _ = split(planted(600), 500)
    env = TradingEnv(train, EnvConfig(num_envs=1, episode_length=4))
    with pytest.raises(ValueError, match="at most once per rollout"):
        actor_critic.A2CAgent(small_a2c(n_steps=8), env, MEAN, STD)

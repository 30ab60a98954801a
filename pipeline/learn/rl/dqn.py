"""Double DQN with n-step returns, a target network and a replay buffer on the device.

Reads top to bottom: the config, the agent's state (networks, buffer, environment
and counters, all variables of one checkpoint), the n-step target and the update,
the compiled collection loop, then `train`.

The replay buffer is a ring of 1-step transitions laid out [capacity, num_envs]
in the order they happened, so n-step returns are assembled when a batch is
sampled: rewards are summed until an episode ended; a time-limit end bootstraps
from the observation the episode would have continued from, a true termination
does not. One compiled call runs a whole chunk of environment steps and updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipeline.learn.rl.env import EnvState, TradingEnv
from pipeline.learn.rl.networks import q_network
from pipeline.learn.rl.runtime import (
    TrainResult,
    env_variables,
    make_optimizer,
    scaled,
    train_agent,
    training_device,
    uses_gpu,
)


@dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of a DQN run (all logged with the run)."""

    total_steps: int = 200_000
    """Environment steps over all parallel episodes."""
    learning_rate: float = 2.5e-4
    """Adam step size."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (rounded down to a multiple of num_envs)."""
    batch_size: int = 64
    """Transitions per gradient update."""
    gamma: float = 0.95
    """Discount per decision (0.95: a horizon of about 20 decisions)."""
    n_step: int = 3
    """Rewards summed before bootstrapping."""
    updates_per_step: float = 0.25
    """Gradient updates per environment step (0.25 = one update every 4 steps)."""
    learning_starts: int = 5_000
    """Environment steps collected before the first update."""
    target_update_interval: int = 2_000
    """Environment steps between copies of the online network into the target."""
    exploration_fraction: float = 0.3
    """Share of total_steps over which epsilon decays linearly."""
    epsilon_start: float = 1.0
    """Exploration rate at the start."""
    epsilon_end: float = 0.05
    """Exploration rate after the decay."""
    hidden: tuple[int, ...] = (64, 64)
    """Units of the hidden layers."""
    dueling: bool = False
    """Separate value and advantage heads."""
    max_grad_norm: float = 10.0
    """Global gradient norm clip."""
    seed: int = 0
    """Seeds weights, exploration and episode starts."""
    chunk_steps: int = 10_000
    """Environment steps per compiled call, summary and checkpoint."""
    jit_compile: bool = True
    """Compile the chunk with XLA."""

    def __post_init__(self) -> None:
        if self.n_step < 1 or self.batch_size < 1 or not 0 < self.gamma <= 1:
            raise ValueError("n_step and batch_size must be >= 1 and gamma in (0, 1]")


class DQNAgent:
    """Networks, optimizer, replay buffer, environment state and counters as variables."""

    def __init__(
        self,
        config: DQNConfig,
        env: TradingEnv,
        mean: Any,
        std: Any,
        mixed_precision: bool = False,
    ) -> None:
        self.config = config
        self.env = env
        n, dim = env.num_envs, env.observation_spec.shape[0]
        self.capacity = max(config.buffer_size // n, config.n_step + 1)

        def network(name: str) -> keras.Model:
            return q_network(
                dim,
                env.num_actions,
                mean,
                std,
                hidden=config.hidden,
                dueling=config.dueling,
                seed=config.seed,
                mixed_precision=mixed_precision,
                name=name,
            )

        self.q = network("q_network")
        self.target = network("target_network")
        self.target.set_weights(self.q.get_weights())
        self.optimizer = make_optimizer(
            config.learning_rate, config.max_grad_norm, self.q.trainable_variables, mixed_precision
        )

        self.rng = tf.random.Generator.from_seed(config.seed)
        self.state, self.obs = env_variables(env, self.rng)

        def ring(shape: tuple[int, ...], dtype: tf.DType) -> tf.Variable:
            return tf.Variable(tf.zeros((self.capacity, n, *shape), dtype), trainable=False)

        self.buf_obs = ring((dim,), tf.float32)
        self.buf_next_obs = ring((dim,), tf.float32)
        self.buf_action = ring((), tf.int32)
        self.buf_reward = ring((), tf.float32)
        self.buf_ended = ring((), tf.float32)
        self.buf_terminated = ring((), tf.float32)
        self.written = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.env_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)

    def checkpoint(self) -> tf.train.Checkpoint:
        """Everything that must survive an interruption."""
        return tf.train.Checkpoint(
            q=self.q,
            target=self.target,
            optimizer=self.optimizer,
            rng=self.rng,
            state=list(self.state),
            obs=self.obs,
            buffer=[
                self.buf_obs,
                self.buf_next_obs,
                self.buf_action,
                self.buf_reward,
                self.buf_ended,
                self.buf_terminated,
            ],
            counters=[self.written, self.env_steps, self.updates, self.iterations],
        )

    def epsilon(self, env_steps: tf.Tensor) -> tf.Tensor:
        """Linear decay from epsilon_start to epsilon_end over the exploration fraction."""
        c = self.config
        span = max(c.exploration_fraction * c.total_steps, 1.0)
        frac = tf.minimum(tf.cast(env_steps, tf.float32) / span, 1.0)
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    def sample(self) -> tuple[tf.Tensor, ...]:
        """A batch of n-step transitions: obs, action, return, bootstrap obs and discount."""
        c, n_envs = self.config, self.env.num_envs
        written = self.written.value()
        oldest = tf.maximum(written - self.capacity, 0)
        count = written - c.n_step + 1 - oldest
        first = oldest + self.rng.uniform([c.batch_size], 0, count, dtype=tf.int64)
        column = self.rng.uniform([c.batch_size], 0, n_envs, dtype=tf.int64)
        rows = (first[:, None] + tf.range(c.n_step, dtype=tf.int64)[None, :]) % self.capacity
        index = tf.stack([rows, tf.broadcast_to(column[:, None], tf.shape(rows))], axis=-1)
        reward = tf.gather_nd(self.buf_reward.value(), index)
        ended = tf.gather_nd(self.buf_ended.value(), index)
        terminated = tf.gather_nd(self.buf_terminated.value(), index)
        alive = tf.math.cumprod(1.0 - ended, axis=1, exclusive=True)
        discounts = tf.pow(tf.constant(c.gamma, tf.float32), tf.range(c.n_step, dtype=tf.float32))
        returns = tf.reduce_sum(alive * discounts * reward, axis=1)
        last_step = tf.concat(
            [ended[:, :-1], tf.ones_like(ended[:, -1:])], axis=1
        )  # the first step that ended the episode, else the n-th
        last = tf.argmax(last_step, axis=1, output_type=tf.int64)
        pick = tf.stack([tf.range(c.batch_size, dtype=tf.int64), last], axis=1)
        last_index = tf.gather_nd(index, pick)
        bootstrap_obs = tf.gather_nd(self.buf_next_obs.value(), last_index)
        bootstrap = tf.pow(tf.constant(c.gamma, tf.float32), tf.cast(last + 1, tf.float32)) * (
            1.0 - tf.gather_nd(terminated, pick)
        )
        obs = tf.gather_nd(self.buf_obs.value(), index[:, 0])
        action = tf.gather_nd(self.buf_action.value(), index[:, 0])
        return obs, action, returns, bootstrap_obs, bootstrap

    def update(self) -> tf.Tensor:
        """One double-DQN gradient step with the Huber loss; returns the loss."""
        obs, action, returns, bootstrap_obs, bootstrap = self.sample()
        next_action = tf.argmax(self.q(bootstrap_obs), axis=1, output_type=tf.int32)
        next_q = tf.gather(self.target(bootstrap_obs), next_action, batch_dims=1)
        target = tf.stop_gradient(returns + bootstrap * next_q)
        variables = self.q.trainable_variables
        with tf.GradientTape() as tape:
            q = tf.gather(self.q(obs, training=True), action, batch_dims=1)
            loss = tf.reduce_mean(tf.keras.losses.huber(target[:, None], q[:, None]))
            objective = scaled(self.optimizer, loss)
        grads = tape.gradient(objective, variables)
        self.optimizer.apply(grads, variables)
        return loss

    def sync_target(self) -> None:
        """Copy the online weights into the target network."""
        for target, online in zip(self.target.weights, self.q.weights, strict=True):
            target.assign(online)

    def collect_and_learn(self, iterations: tf.Tensor) -> dict[str, tf.Tensor]:
        """`iterations` vectorized env steps, each followed by its share of updates."""
        c, env = self.config, self.env
        n = env.num_envs
        loss_sum = tf.constant(0.0)
        loss_count = tf.constant(0.0)
        return_sum = tf.constant(0.0)
        return_count = tf.constant(0.0)
        step = tf.constant(0, tf.int64)
        while step < iterations:
            step += 1
            before = self.env_steps.value()
            obs = self.obs.value()
            greedy = tf.argmax(self.q(obs), axis=1, output_type=tf.int32)
            random_action = self.rng.uniform([n], 0, env.num_actions, dtype=tf.int32)
            explore = self.rng.uniform([n]) < self.epsilon(before)
            action = tf.where(explore, random_action, greedy)
            state = EnvState(*(v.value() for v in self.state))
            out = env.step(state, action, self.rng)
            row = self.written % self.capacity
            self.buf_obs.scatter_nd_update([[row]], obs[None])
            self.buf_next_obs.scatter_nd_update([[row]], out.final_obs[None])
            self.buf_action.scatter_nd_update([[row]], action[None])
            self.buf_reward.scatter_nd_update([[row]], out.reward[None])
            ended = tf.cast(out.terminated | out.truncated, tf.float32)
            self.buf_ended.scatter_nd_update([[row]], ended[None])
            self.buf_terminated.scatter_nd_update(
                [[row]], tf.cast(out.terminated, tf.float32)[None]
            )
            self.written.assign_add(1)
            finished = state.episode_return + out.reward
            return_sum += tf.reduce_sum(ended * finished)
            return_count += tf.reduce_sum(ended)
            for var, value in zip(self.state, out.state, strict=True):
                var.assign(value)
            self.obs.assign(out.obs)
            after = self.env_steps.assign_add(n)
            due = _crossed(before, after, c.updates_per_step)
            ready = (after >= c.learning_starts) & (self.written >= c.n_step)
            todo = tf.where(ready, due, tf.zeros_like(due))
            while todo > 0:
                todo -= 1
                loss_sum += self.update()
                loss_count += 1.0
                self.updates.assign_add(1)
            if _crossed(before, after, 1.0 / c.target_update_interval) > 0:
                self.sync_target()
        return {
            "loss": loss_sum / tf.maximum(loss_count, 1.0),
            "episode_return": return_sum / tf.maximum(return_count, 1.0),
            "epsilon": self.epsilon(self.env_steps.value()),
        }


def _crossed(before: tf.Tensor, after: tf.Tensor, rate: float) -> tf.Tensor:
    """How many multiples of 1/rate lie in (before, after]: due events, without float drift."""
    scale = tf.constant(rate, tf.float64)
    after_count = tf.floor(tf.cast(after, tf.float64) * scale)
    before_count = tf.floor(tf.cast(before, tf.float64) * scale)
    return tf.cast(after_count - before_count, tf.int64)


def train(
    config: DQNConfig,
    env: TradingEnv,
    mean: Any,
    std: Any,
    run_dir: Path,
    *,
    require_gpu: bool = False,
    progress: bool = False,
    on_chunk: Any = None,
    checkpoint_store: str | None = None,
) -> TrainResult:
    """Train (or resume) a DQN agent in `run_dir` (checkpoints mirrored at `checkpoint_store`
    when given); returns its greedy Q network."""
    device = training_device(require_gpu)
    agent = DQNAgent(config, env, mean, std, mixed_precision=uses_gpu(device))
    return train_agent(
        "dqn",
        config,
        env,
        agent,
        step=agent.collect_and_learn,
        done=agent.iterations,
        per_iteration=env.num_envs,
        model=agent.q,
        device=device,
        run_dir=run_dir,
        progress=progress,
        on_chunk=on_chunk,
        checkpoint_store=checkpoint_store,
    )

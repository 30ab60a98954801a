"""Advantage actor-critic (A2C): synchronous n-step rollouts over the vectorized env.

Reads top to bottom: the config, the agent's state (network, optimizer,
environment and counters as variables of one checkpoint), the rollout, the
advantage estimate (GAE), the loss and update, then `train`.

Each update collects `n_steps` steps of every parallel episode inside one
compiled loop, estimates advantages with GAE (a time-limit end bootstraps from
the value of the observation the episode would have continued from), and takes
one gradient step on policy loss + value loss - entropy bonus. One compiled call
runs a whole chunk of updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipeline.learn.rl.env import EnvState, TradingEnv
from pipeline.learn.rl.networks import actor_critic_network, policy_of
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
class A2CConfig:
    """Hyperparameters of an A2C run (all logged with the run)."""

    total_steps: int = 2_000_000
    """Environment steps over all parallel episodes."""
    n_steps: int = 8
    """Steps of every episode collected per update."""
    learning_rate: float = 7e-4
    """Adam step size."""
    gamma: float = 0.95
    """Discount per decision (0.95: a horizon of about 20 decisions)."""
    gae_lambda: float = 0.95
    """GAE trade-off between bias (0) and variance (1)."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (exploration)."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient norm clip."""
    normalize_advantage: bool = False
    """Standardize advantages per update."""
    hidden: tuple[int, ...] = (64, 64)
    """Units of the hidden layers of each trunk."""
    shared_trunk: bool = False
    """One trunk for policy and value, or one each."""
    seed: int = 0
    """Seeds weights, actions and episode starts."""
    chunk_steps: int = 1_000_000
    """Environment steps per compiled call, summary and checkpoint."""
    jit_compile: bool = True
    """Compile the chunk with XLA."""

    def __post_init__(self) -> None:
        if self.n_steps < 1 or not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("n_steps must be >= 1, gamma in (0, 1], gae_lambda in [0, 1]")


class A2CAgent:
    """Network, optimizer, environment state and counters as variables."""

    def __init__(
        self,
        config: A2CConfig,
        env: TradingEnv,
        mean: Any,
        std: Any,
        mixed_precision: bool = False,
    ) -> None:
        self.config = config
        self.env = env
        self.model = actor_critic_network(
            env.observation_spec.shape[0],
            env.num_actions,
            mean,
            std,
            hidden=config.hidden,
            shared_trunk=config.shared_trunk,
            seed=config.seed,
            mixed_precision=mixed_precision,
        )
        if config.n_steps > env.config.episode_length:
            raise ValueError(
                f"n_steps {config.n_steps} exceeds the episode length "
                f"{env.config.episode_length}: an episode may end at most once per rollout"
            )
        self.policy = policy_of(self.model)
        self.critic = keras.Model(self.model.inputs[0], self.model.outputs[1], name="critic")
        self.optimizer = make_optimizer(
            config.learning_rate,
            config.max_grad_norm,
            self.model.trainable_variables,
            mixed_precision,
        )
        self.rng = tf.random.Generator.from_seed(config.seed)
        self.state, self.obs = env_variables(env, self.rng)
        self.env_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)
        """Counted by the training loop, one per update."""

    def checkpoint(self) -> tf.train.Checkpoint:
        """Everything that must survive an interruption."""
        return tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            rng=self.rng,
            state=list(self.state),
            obs=self.obs,
            counters=[self.env_steps, self.updates],
        )

    def sample_actions(self, logits: tf.Tensor) -> tf.Tensor:
        """Categorical draws by the Gumbel-max trick on the agent's own generator."""
        uniform = self.rng.uniform(tf.shape(logits), 1e-9, 1.0)
        return tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=1, output_type=tf.int32)

    def rollout(self) -> tuple[tf.Tensor, ...]:
        """n_steps of every episode: obs, actions, rewards, ended/terminated flags, and per
        episode the observation its truncated step would have continued from (an episode
        ends at most once per rollout, so one row per episode holds it)."""
        n = self.config.n_steps
        obs_ta = tf.TensorArray(tf.float32, size=n)
        action_ta = tf.TensorArray(tf.int32, size=n)
        reward_ta = tf.TensorArray(tf.float32, size=n)
        ended_ta = tf.TensorArray(tf.float32, size=n)
        terminated_ta = tf.TensorArray(tf.float32, size=n)
        return_sum = tf.constant(0.0)
        return_count = tf.constant(0.0)
        state = EnvState(*(v.value() for v in self.state))
        obs = self.obs.value()
        truncated_obs = obs
        for t in tf.range(n):
            logits = self.policy(obs)
            action = self.sample_actions(tf.cast(logits, tf.float32))
            out = self.env.step(state, action, self.rng)
            ended = tf.cast(out.terminated | out.truncated, tf.float32)
            return_sum += tf.reduce_sum(ended * (state.episode_return + out.reward))
            return_count += tf.reduce_sum(ended)
            obs_ta = obs_ta.write(t, obs)
            action_ta = action_ta.write(t, action)
            reward_ta = reward_ta.write(t, out.reward)
            ended_ta = ended_ta.write(t, ended)
            terminated_ta = terminated_ta.write(t, tf.cast(out.terminated, tf.float32))
            truncated_obs = tf.where(out.truncated[:, None], out.final_obs, truncated_obs)
            state, obs = out.state, out.obs
        for var, value in zip(self.state, state, strict=True):
            var.assign(value)
        self.obs.assign(obs)
        self.env_steps.assign_add(n * self.env.num_envs)
        return (
            obs_ta.stack(),
            action_ta.stack(),
            reward_ta.stack(),
            ended_ta.stack(),
            terminated_ta.stack(),
            truncated_obs,
            obs,
            return_sum,
            return_count,
        )

    def advantages(
        self,
        values: tf.Tensor,
        rewards: tf.Tensor,
        ended: tf.Tensor,
        terminated: tf.Tensor,
        final_values: tf.Tensor,
        last_value: tf.Tensor,
    ) -> tf.Tensor:
        """GAE over [n_steps, num_envs]; truncated steps bootstrap from the final value."""
        c = self.config
        truncated = ended * (1.0 - terminated)
        rewards = rewards + c.gamma * final_values * truncated
        next_values = tf.concat([values[1:], last_value[None]], axis=0)
        deltas = rewards + c.gamma * next_values * (1.0 - ended) - values

        def backwards(carry: tf.Tensor, step: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            delta, end = step
            return delta + c.gamma * c.gae_lambda * (1.0 - end) * carry

        return tf.scan(
            backwards, (deltas, ended), initializer=tf.zeros_like(last_value), reverse=True
        )

    def update(self) -> dict[str, tf.Tensor]:
        """One rollout and one gradient step."""
        c = self.config
        (obs, actions, rewards, ended, terminated, truncated_obs, last_obs, ret_sum, ret_n) = (
            self.rollout()
        )
        n, envs, dim = c.n_steps, self.env.num_envs, self.env.observation_spec.shape[0]
        bootstrap = tf.cast(self.critic(tf.concat([truncated_obs, last_obs], axis=0)), tf.float32)
        final_values = tf.broadcast_to(bootstrap[None, :envs], [n, envs])
        last_value = bootstrap[envs:]
        flat_obs = tf.reshape(obs, [n * envs, dim])
        flat_actions = tf.reshape(actions, [n * envs])
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits, values = self.model(flat_obs, training=True)
            logits = tf.cast(logits, tf.float32)
            values = tf.cast(values, tf.float32)
            advantages = tf.stop_gradient(
                self.advantages(
                    tf.reshape(values, [n, envs]),
                    rewards,
                    ended,
                    terminated,
                    final_values,
                    last_value,
                )
            )
            returns = tf.reshape(advantages, [-1]) + tf.stop_gradient(values)
            flat_adv = tf.reshape(advantages, [-1])
            if c.normalize_advantage:
                mean, var = tf.nn.moments(flat_adv, axes=[0])
                flat_adv = (flat_adv - mean) / (tf.sqrt(var) + 1e-8)
            log_probs = tf.nn.log_softmax(logits)
            taken = tf.gather(log_probs, flat_actions, batch_dims=1)
            policy_loss = -tf.reduce_mean(taken * flat_adv)
            value_loss = tf.reduce_mean(tf.square(returns - values))
            entropy = -tf.reduce_mean(tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=1))
            loss = policy_loss + c.value_coef * value_loss - c.entropy_coef * entropy
            objective = scaled(self.optimizer, loss)
        grads = tape.gradient(objective, variables)
        self.optimizer.apply(grads, variables)
        return {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "return_sum": ret_sum,
            "return_count": ret_n,
        }

    def learn(self, iterations: tf.Tensor) -> dict[str, tf.Tensor]:
        """`iterations` updates; returns their mean losses and finished-episode return."""
        totals = {
            k: tf.constant(0.0)
            for k in ("policy_loss", "value_loss", "entropy", "return_sum", "return_count")
        }
        step = tf.constant(0, tf.int64)
        while step < iterations:
            step += 1
            out = self.update()
            totals = {k: totals[k] + out[k] for k in totals}
        count = tf.cast(tf.maximum(iterations, 1), tf.float32)
        return {
            "policy_loss": totals["policy_loss"] / count,
            "value_loss": totals["value_loss"] / count,
            "entropy": totals["entropy"] / count,
            "episode_return": totals["return_sum"] / tf.maximum(totals["return_count"], 1.0),
        }


def train(
    config: A2CConfig,
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
    """Train (or resume) an A2C agent in `run_dir` (checkpoints mirrored at `checkpoint_store`
    when given); returns its greedy policy (logits)."""
    device = training_device(require_gpu)
    agent = A2CAgent(config, env, mean, std, mixed_precision=uses_gpu(device))
    return train_agent(
        "a2c",
        config,
        env,
        agent,
        step=agent.learn,
        done=agent.updates,
        per_iteration=config.n_steps * env.num_envs,
        model=policy_of(agent.model),
        device=device,
        run_dir=run_dir,
        progress=progress,
        on_chunk=on_chunk,
        checkpoint_store=checkpoint_store,
    )

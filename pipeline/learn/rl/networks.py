"""Keras 3 networks of the agents: raw observation in, normalization inside the graph.

The first layer standardizes the observation with the FeatureSpec's statistics
(the position column passes through), so the exported policy takes the raw
features that `pipeline.learn.features` computes. Hidden layers run in mixed precision
on a GPU; outputs stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np


def normalizer(mean: Sequence[float], std: Sequence[float]) -> keras.layers.Layer:
    """Standardize features with fitted statistics; the trailing position column is kept."""
    mean_ = np.append(np.asarray(mean, np.float32), np.float32(0.0))
    var_ = np.append(np.square(np.asarray(std, np.float32)), np.float32(1.0))
    return keras.layers.Normalization(mean=mean_, variance=var_, name="normalize")


def _dense(units: int, seed: int, name: str, dtype: str | None, activation: str):
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.Orthogonal(gain=np.sqrt(2.0), seed=seed),
        bias_initializer="zeros",
        dtype=dtype,
        name=name,
    )


def _head(units: int, seed: int, name: str, gain: float) -> keras.layers.Layer:
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.Orthogonal(gain=gain, seed=seed),
        bias_initializer="zeros",
        dtype="float32",
        name=name,
    )


def _trunk(x, hidden: Sequence[int], seed: int, prefix: str, dtype: str | None, activation: str):
    for i, units in enumerate(hidden):
        x = _dense(units, seed + i, f"{prefix}_{i}", dtype, activation)(x)
    return x


def q_network(
    obs_dim: int,
    num_actions: int,
    mean: Sequence[float],
    std: Sequence[float],
    hidden: Sequence[int] = (64, 64),
    dueling: bool = False,
    seed: int = 0,
    mixed_precision: bool = False,
    name: str = "q_network",
) -> keras.Model:
    """obs [B, obs_dim] -> q_values [B, num_actions]; dueling splits value and advantage."""
    dtype = "mixed_float16" if mixed_precision else None
    obs = keras.Input((obs_dim,), name="obs", dtype="float32")
    x = _trunk(normalizer(mean, std)(obs), hidden, seed, "hidden", dtype, "relu")
    if dueling:
        value = _head(1, seed + 101, "value", 1.0)(x)
        advantage = _head(num_actions, seed + 102, "advantage", 1.0)(x)
        centered = advantage - keras.ops.mean(advantage, axis=1, keepdims=True)
        q = keras.layers.Identity(name="q_values", dtype="float32")(value + centered)
    else:
        q = _head(num_actions, seed + 100, "q_values", 1.0)(x)
    return keras.Model(obs, q, name=name)


def actor_critic_network(
    obs_dim: int,
    num_actions: int,
    mean: Sequence[float],
    std: Sequence[float],
    hidden: Sequence[int] = (64, 64),
    shared_trunk: bool = False,
    seed: int = 0,
    mixed_precision: bool = False,
) -> keras.Model:
    """obs -> (logits [B, num_actions], value [B]); one trunk shared, or one each."""
    dtype = "mixed_float16" if mixed_precision else None
    obs = keras.Input((obs_dim,), name="obs", dtype="float32")
    x = normalizer(mean, std)(obs)
    if shared_trunk:
        policy_x = value_x = _trunk(x, hidden, seed, "shared", dtype, "tanh")
    else:
        policy_x = _trunk(x, hidden, seed, "policy", dtype, "tanh")
        value_x = _trunk(x, hidden, seed + 50, "value", dtype, "tanh")
    logits = _head(num_actions, seed + 100, "logits", 0.01)(policy_x)
    value = _head(1, seed + 101, "value_out", 1.0)(value_x)
    value = keras.layers.Reshape((), name="value_flat", dtype="float32")(value)
    return keras.Model(obs, [logits, value], name="actor_critic")


def policy_of(model: keras.Model) -> keras.Model:
    """The greedy policy's scoring network: the model itself, or its logits output."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs[0], model.outputs[0], name="policy")


def ensemble_of(policies: Sequence[keras.Model], kind: str) -> keras.Model:
    """One policy network averaging several trained ones: obs -> scores of the same kind.

    Q-values (`kind` "q_values") are averaged. Logits ("logits") are combined so that
    their softmax is the average of the members' action probabilities: the log of the
    mean probability, computed as logsumexp of the members' log-softmax minus log K (no
    log of zero). One member is returned unchanged.
    """
    if not policies:
        raise ValueError("an ensemble needs at least one member")
    if kind not in ("q_values", "logits"):
        raise ValueError(f"unknown score kind {kind!r}: q_values or logits")
    if len(policies) == 1:
        return policies[0]
    obs = keras.Input(tuple(policies[0].inputs[0].shape[1:]), name="obs", dtype="float32")
    scores = [
        keras.ops.cast(
            keras.Model(policy.inputs[0], policy.outputs[0], name=f"member_{k}")(obs), "float32"
        )
        for k, policy in enumerate(policies)
    ]
    stacked = keras.ops.stack(scores, axis=0)
    if kind == "q_values":
        combined = keras.ops.mean(stacked, axis=0)
    else:
        log_probs = keras.ops.log_softmax(stacked, axis=-1)
        combined = keras.ops.logsumexp(log_probs, axis=0) - np.log(len(policies))
    return keras.Model(obs, keras.layers.Identity(name=kind, dtype="float32")(combined))

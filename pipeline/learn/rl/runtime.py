"""What every training run shares: the device, the chunked loop, checkpoints, summaries.

A run advances in chunks: one compiled call per chunk, then TensorBoard scalars,
a checkpoint and the progress bar. Chunk boundaries are fixed multiples of the
chunk size, and every piece of state (networks, optimizer, environment, replay
buffer, random generator, counters) lives in variables of one
`tf.train.Checkpoint`; so a run interrupted anywhere resumes from its last chunk
and ends with exactly the weights of an uninterrupted run. Given a checkpoint store
(a folder of the artifact store, any fsspec URL), every checkpoint is mirrored there,
and a run that finds none in its own folder starts from the store's: a task retried on
another worker resumes too.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from pipeline.errors import ConfigurationError


def training_device(require_gpu: bool = False) -> str:
    """The device TensorFlow trains on, in words ('GPU:0 NVIDIA H100 ...' or 'CPU')."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU:0 {details.get('device_name', gpus[0].name)}".strip()
    if require_gpu:
        raise ConfigurationError(
            "require_gpu is set but TensorFlow sees no GPU: install requirements-gpu.txt on a "
            "machine with an NVIDIA driver (python -m pipeline doctor shows why), or unset "
            "CRYPTOBOTS_REQUIRE_GPU to train on the CPU"
        )
    return "CPU"


def make_optimizer(
    learning_rate: float, max_grad_norm: float, variables: list, mixed_precision: bool
) -> Any:
    """Adam with a global norm clip, built for `variables`; loss-scaled in mixed precision
    (the clip then applies to the unscaled gradients)."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate, global_clipnorm=max_grad_norm)
    if mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def scaled(optimizer: Any, loss: tf.Tensor) -> tf.Tensor:
    """The loss to differentiate: scaled when the optimizer scales losses."""
    return optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss


def env_variables(env: Any, rng: tf.random.Generator) -> tuple[Any, tf.Variable]:
    """Fresh episodes of `env` held in variables (state tuple, current observation)."""
    state, obs = env.reset(rng)
    variables = type(state)(*(tf.Variable(x, trainable=False) for x in state))
    return variables, tf.Variable(obs, trainable=False)


def pull_checkpoints(store: str, folder: Path) -> bool:
    """Copy the checkpoints mirrored at `store` into `folder` when it holds none (the
    state file that names the latest comes last); whether there were any."""
    import fsspec

    if (folder / "checkpoint").exists():
        return False
    fs, base = fsspec.core.url_to_fs(store)
    if not fs.exists(f"{base}/checkpoint"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(_stored_names(fs, base), key=lambda n: n == "checkpoint"):
        fs.get(f"{base}/{name}", str(folder / name))
    return True


def push_checkpoints(folder: Path, store: str) -> None:
    """Mirror the checkpoints of `folder` at `store`: new files first, then the state
    file that names the latest, then away with what the manager deleted; so the store
    always names a checkpoint it holds whole."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(store)
    fs.makedirs(base, exist_ok=True)
    stored = _stored_names(fs, base)
    local = {path.name for path in folder.iterdir() if path.is_file()}
    for name in sorted(local - stored - {"checkpoint"}):
        _put_whole(fs, folder / name, f"{base}/{name}")
    _put_whole(fs, folder / "checkpoint", f"{base}/checkpoint")
    for name in sorted(stored - local):
        fs.rm(f"{base}/{name}")


def _stored_names(fs: Any, base: str) -> set[str]:
    if not fs.exists(base):
        return set()
    return {
        path.rstrip("/").rsplit("/", 1)[-1]
        for path in fs.ls(base, detail=False)
        if ".tmp-" not in path
    }


def _put_whole(fs: Any, local: Path, target: str) -> None:
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    fs.put_file(str(local), temporary)
    fs.mv(temporary, target)


def uses_gpu(device: str) -> bool:
    """Whether `training_device` named a GPU (mixed precision pays off there only)."""
    return device.startswith("GPU")


@dataclass
class TrainResult:
    """What a finished run hands on: the greedy policy network and how it got there."""

    algorithm: str
    model: Any
    env_steps: int
    updates: int
    device: str
    seconds: float
    params: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def run_chunks(
    *,
    total: int,
    chunk: int,
    advance: Callable[[tf.Tensor], Mapping[str, tf.Tensor]],
    done: tf.Variable,
    checkpoint: tf.train.Checkpoint,
    run_dir: Path,
    params: Mapping[str, Any],
    unit_steps: int,
    progress: bool = False,
    on_chunk: Callable[[dict[str, float]], None] | None = None,
    checkpoint_store: str | None = None,
) -> tuple[list[dict[str, float]], float]:
    """Advance `done` to `total` iterations, `chunk` per compiled call; resume if checkpointed
    (in `run_dir`, else at `checkpoint_store`, where every checkpoint is mirrored).

    `unit_steps` converts iterations into environment steps for summaries and the
    progress bar. Returns the per-chunk metrics and the seconds spent in this call.
    """
    from tqdm.auto import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    folder = run_dir / "checkpoints"
    if checkpoint_store:
        pull_checkpoints(checkpoint_store, folder)
    manager = tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    else:
        (run_dir / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default():
        tf.summary.text("hyperparameters", json.dumps(params, sort_keys=True), step=0)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(
        total=total * unit_steps,
        initial=int(done.numpy()) * unit_steps,
        disable=not progress,
        unit="step",
        unit_scale=True,
        desc=str(params.get("algorithm", "train")),
    )
    try:
        while int(done.numpy()) < total:
            n = min(chunk, total - int(done.numpy()))
            metrics = advance(tf.constant(n, tf.int64))
            done.assign_add(n)
            record = {name: float(value) for name, value in metrics.items()}
            steps = int(done.numpy()) * unit_steps
            record["env_steps"] = float(steps)
            with writer.as_default():
                for name, value in record.items():
                    tf.summary.scalar(name, value, step=steps)
            manager.save(checkpoint_number=int(done.numpy()))
            if checkpoint_store:
                push_checkpoints(folder, checkpoint_store)
            bar.update(n * unit_steps)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "env_steps"})
            history.append(record)
            if on_chunk is not None:
                on_chunk(record)
    finally:
        bar.close()
        writer.flush()
    return history, time.perf_counter() - started


def train_agent(
    algorithm: str,
    config: Any,
    env: Any,
    agent: Any,
    *,
    step: Callable[[tf.Tensor], Mapping[str, tf.Tensor]],
    done: tf.Variable,
    per_iteration: int,
    model: Any,
    device: str,
    run_dir: Path,
    progress: bool = False,
    on_chunk: Callable[[dict[str, float]], None] | None = None,
    checkpoint_store: str | None = None,
) -> TrainResult:
    """Run `step` (one compiled call per chunk) until `config.total_steps` env steps.

    `done` counts iterations of `per_iteration` environment steps; the agent exposes
    `env_steps` and `updates` counters; `model` is the greedy policy network returned.
    """
    params = {
        "algorithm": algorithm,
        **dataclasses.asdict(config),
        "env": dataclasses.asdict(env.config),
        "device": device,
    }
    history, seconds = run_chunks(
        total=max(config.total_steps // per_iteration, 1),
        chunk=max(config.chunk_steps // per_iteration, 1),
        advance=tf.function(step, jit_compile=config.jit_compile),
        done=done,
        checkpoint=agent.checkpoint(),
        run_dir=run_dir,
        params=params,
        unit_steps=per_iteration,
        progress=progress,
        on_chunk=on_chunk,
        checkpoint_store=checkpoint_store,
    )
    return TrainResult(
        algorithm=algorithm,
        model=model,
        env_steps=int(agent.env_steps.numpy()),
        updates=int(agent.updates.numpy()),
        device=device,
        seconds=seconds,
        params=params,
        history=history,
    )

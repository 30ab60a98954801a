"""Train one agent on a snapshot, export its policy to ONNX, register it: the train task.

`train_candidate` records a `training_runs` row and runs three steps in turn, each a
function of its own: `train_policy` trains the request's ensemble on the snapshot's
training window (checkpoints mirrored to the artifact store, so a retry resumes),
`export_policy` saves the policy, exports it to ONNX with its lineage and checks the
file against TensorFlow, and `register_policy` records the file as a candidate version
in the registry. The rest of the train stage lives beside it: `snapshot` (the data),
`onnx_evaluation` (the validation backtest), `selection` (the run to ship).
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from pipeline.errors import ConfigurationError
from pipeline.learn.export import (
    OUTPUT_NAMES,
    Lineage,
    Parity,
    check_parity,
    export_onnx,
    parity_observations,
)
from pipeline.learn.prepare import Prepared, prepare
from pipeline.learn.run_files import checkpoint_store, drop_checkpoints, local_copy, run_dir
from pipeline.learn.snapshot import load_snapshot, slug
from pipeline.learn.train_request import TrainRequest
from pipeline.learn.training_runs import ms_to_datetime, start_run, update_run
from pipeline.models.registry import model_name, register, store_artifact
from pipeline.settings import PROJECT_ROOT, Market, Settings

if TYPE_CHECKING:
    from pipeline.learn.rl.actor_critic import A2CConfig
    from pipeline.learn.rl.dqn import DQNConfig
    from pipeline.learn.rl.env import EnvConfig


@dataclass(frozen=True)
class Trained:
    """An ensemble policy and what training each of its members gave (device, steps,
    updates, seconds)."""

    policy: Any
    results: list[Any]

    @property
    def device(self) -> str:
        """The device the first member trained on."""
        return self.results[0].device

    @property
    def env_steps(self) -> int:
        """Environment steps of all members."""
        return sum(r.env_steps for r in self.results)

    @property
    def updates(self) -> int:
        """Gradient updates of all members."""
        return sum(r.updates for r in self.results)

    @property
    def seconds(self) -> float:
        """Training time of all members."""
        return sum(r.seconds for r in self.results)


@dataclass(frozen=True)
class Exported:
    """A trained policy's files: the Keras model and feature spec in the run's folder, the
    parity-checked ONNX file there and in the artifact store."""

    model: Path
    feature_spec: Path
    onnx: Path
    onnx_uri: str
    parity: Parity


def new_run_id(algorithm: str, market: Market, orchestrator_run: str | None = None) -> str:
    """A readable id; the same Airflow run and algorithm always give the same id (retries
    resume from the checkpoint), a CLI run gets a fresh one."""
    stem = f"{algorithm}-{slug(str(market))}"
    if orchestrator_run:
        return f"{stem}-{hashlib.sha256(orchestrator_run.encode()).hexdigest()[:12]}"
    return f"{stem}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def code_version() -> str:
    """The git commit of the checkout when there is one, else the package version."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"cryptobots {version('cryptobots')}"


def env_config(request: TrainRequest) -> EnvConfig:
    """The trading environment `request` trains in."""
    from pipeline.learn.evaluate.costs import CostModel
    from pipeline.learn.rl.env import EnvConfig

    step_ms = request.market.timeframe_ms * request.decision_every
    cost = CostModel.per_step(
        request.fee_bps, request.slippage_bps, request.borrow_bps_per_hour, step_ms
    )
    return EnvConfig(
        num_envs=request.num_envs,
        episode_length=request.episode_length,
        action_map=request.action_map,
        fee_bps=request.fee_bps,
        slippage_bps=request.slippage_bps,
        borrow_per_step=cost.borrow_per_step,
        downside_penalty=request.downside_penalty,
    )


def member_configs(request: TrainRequest) -> list[DQNConfig | A2CConfig]:
    """The algorithm's config of each ensemble member: the budget, a member seed and the
    request's overrides."""
    from pipeline.learn.rl import actor_critic, dqn

    make_config = dqn.DQNConfig if request.algorithm == "dqn" else actor_critic.A2CConfig
    return [
        make_config(total_steps=request.steps, seed=seed, **request.overrides)
        for seed in request.member_seeds
    ]


def run_params(request: TrainRequest) -> dict[str, Any]:
    """The hyperparameters a run records: algorithm config, environment, decisions,
    ensemble, sizing and position rule."""
    return {
        "algorithm": request.algorithm,
        "config": dataclasses.asdict(member_configs(request)[0]),
        "env": dataclasses.asdict(env_config(request)),
        "decision_every": request.decision_every,
        "ensemble": request.ensemble,
        "member_seeds": list(request.member_seeds),
        "sizing": None if request.sizing is None else request.sizing.to_dict(),
        "position_rule": request.position_rule,
    }


def train_policy(
    settings: Settings,
    request: TrainRequest,
    prepared: Prepared,
    run_id: str,
    *,
    progress: bool = False,
    on_chunk: Callable[[dict[str, float]], None] | None = None,
) -> Trained:
    """Train each ensemble member on the prepared training window in the run's folder
    (checkpoints mirrored to the artifact store), then average them into one policy."""
    from pipeline.learn.rl import actor_critic, dqn
    from pipeline.learn.rl.env import TradingEnv
    from pipeline.learn.rl.networks import ensemble_of

    directory = run_dir(settings, run_id)
    module: Any = dqn if request.algorithm == "dqn" else actor_critic
    env = TradingEnv(prepared.train, env_config(request))
    results = [
        module.train(
            config,
            env,
            prepared.spec.mean,
            prepared.spec.std,
            directory / f"member-{k}" if request.ensemble > 1 else directory,
            require_gpu=settings.require_gpu,
            progress=progress,
            on_chunk=on_chunk,
            checkpoint_store=checkpoint_store(
                settings, run_id, k if request.ensemble > 1 else None
            ),
        )
        for k, config in enumerate(member_configs(request))
    ]
    policy = ensemble_of([r.model for r in results], OUTPUT_NAMES[request.algorithm])
    return Trained(policy=policy, results=results)


def export_policy(
    settings: Settings, request: TrainRequest, prepared: Prepared, policy: Any, run_id: str
) -> Exported:
    """Save the policy and its feature spec in the run's folder, export it to ONNX with its
    lineage, refuse the file unless it agrees with TensorFlow on real observations, and
    store it in the artifact store."""
    directory = run_dir(settings, run_id)
    model_path = directory / "model.keras"
    policy.save(model_path)
    spec_path = directory / "feature_spec.json"
    spec_path.write_text(prepared.spec.to_json() + "\n")
    onnx_path = export_onnx(
        policy,
        Lineage(
            algorithm=request.algorithm,
            feature_spec=prepared.spec,
            action_map=request.action_map,
            training_run=run_id,
            data_window={
                "market": str(request.market),
                "train": [request.train.start, request.train.end],
                "valid": [request.valid.start, request.valid.end],
                "decision_every": request.decision_every,
            },
            code_version=code_version(),
            sizing=None if request.sizing is None else request.sizing.to_dict(),
            position_rule=request.position_rule,
        ),
        directory / "policy.onnx",
    )
    parity = check_parity(
        policy,
        onnx_path,
        parity_observations(prepared.parity_features, request.action_map),
    )
    onnx_uri, _, _ = store_artifact(settings.artifact_root, onnx_path)
    return Exported(
        model=model_path, feature_spec=spec_path, onnx=onnx_path, onnx_uri=onnx_uri, parity=parity
    )


def register_policy(
    settings: Settings, engine: Engine, request: TrainRequest, exported: Exported, run_id: str
) -> int:
    """Record the exported ONNX file as a candidate version of the market's model; its
    version number."""
    return register(
        engine,
        settings.artifact_root,
        exported.onnx,
        model_name(str(request.market)),
        metrics={"parity_max_abs_diff": exported.parity.max_abs_diff},
        training_run=run_id,
    )


def train_candidate(
    settings: Settings,
    engine: Engine,
    request: TrainRequest,
    snapshot_path: Path | str,
    *,
    run_id: str | None = None,
    orchestrator_run: str | None = None,
    progress: bool = False,
    on_chunk: Callable[[dict[str, float]], None] | None = None,
    register_version: bool = True,
) -> str:
    """Train one agent on the snapshot's training window, export it and register it; record
    and return its run id.

    Every run is exported and parity-checked; `register_version` makes it a candidate
    in the registry (an older walk-forward fold's run is evidence only, never shipped)."""
    snapshot = load_snapshot(local_copy(settings, snapshot_path, "snapshots"))
    if (snapshot.market, snapshot.train, snapshot.valid) != (
        request.market,
        request.train,
        request.valid,
    ):
        raise ConfigurationError(
            f"snapshot {snapshot_path} holds {snapshot.market} {snapshot.train}/{snapshot.valid}, "
            f"not the requested {request.market} {request.train}/{request.valid}"
        )
    run_id = run_id or new_run_id(request.algorithm, request.market, orchestrator_run)
    directory = run_dir(settings, run_id)
    prepared = prepare(snapshot, request.spec, request.decision_every, request.sizing)
    params = run_params(request)
    start_run(
        engine,
        run_id,
        {
            "algorithm": request.algorithm,
            "market": str(request.market),
            "params": params,
            "feature_spec": prepared.spec.to_dict(),
            "action_map": list(request.action_map),
            "train_start": ms_to_datetime(request.train.start),
            "train_end": ms_to_datetime(request.train.end),
            "valid_start": ms_to_datetime(request.valid.start),
            "valid_end": ms_to_datetime(request.valid.end),
            "seed": request.seed,
            "code_version": code_version(),
            "orchestrator_run": orchestrator_run,
            "artifacts": {"run_dir": str(directory), "snapshot": str(snapshot_path)},
        },
    )
    try:
        trained = train_policy(
            settings, request, prepared, run_id, progress=progress, on_chunk=on_chunk
        )
        exported = export_policy(settings, request, prepared, trained.policy, run_id)
        version = (
            register_policy(settings, engine, request, exported, run_id)
            if register_version
            else None
        )
    except BaseException as error:
        update_run(engine, run_id, "failed", error=f"{type(error).__name__}: {error}"[:4000])
        raise
    update_run(
        engine,
        run_id,
        "trained",
        device=trained.device,
        env_steps=trained.env_steps,
        updates=trained.updates,
        train_seconds=trained.seconds,
        params={**params, "device": trained.device},
        artifacts={
            "run_dir": str(directory),
            "snapshot": str(snapshot_path),
            "model": str(exported.model),
            "onnx": exported.onnx_uri,
            "model_name": model_name(str(request.market)),
            "model_version": version,
            "feature_spec": str(exported.feature_spec),
            "tensorboard": str(directory / "tensorboard"),
        },
        metrics={
            "parity_max_abs_diff": exported.parity.max_abs_diff,
            "parity_rows": exported.parity.rows,
        },
    )
    drop_checkpoints(settings, run_id)
    return run_id

"""Train agents on stored candles and evaluate them out of sample: the train stage.

Four steps, each a function the `train` DAG calls as one task and the CLI calls in
a row: `snapshot_window` reads a market's candles for the training and validation
windows from the database into a file (so every algorithm trains on the same
data), `train_candidate` trains one algorithm on the training window and records
a `training_runs` row, `evaluate_run` backtests the greedy policy on the later,
disjoint validation window beside the baselines (same cost model) and saves the
equity plot, and `select_best` picks the run with the best validation Sharpe.

Normalization statistics are fitted on the training window only; features of the
validation window use earlier candles as their look-back, never later ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import ohlcv
from pipeline.errors import ConfigurationError, DataValidationError
from pipeline.learn.evaluate import (
    POSITION_RULES,
    Backtest,
    CostModel,
    VolatilityTarget,
    evaluate_policy,
    metrics_table,
    plot_equity,
)
from pipeline.learn.evidence import MIN_RETURNS, drawdown_expectations
from pipeline.learn.export import (
    OUTPUT_NAMES,
    Lineage,
    check_parity,
    export_onnx,
    parity_observations,
)
from pipeline.learn.features import (
    Candles,
    FeatureSpec,
    compute_features,
    fill_gaps,
    fit_normalization,
)
from pipeline.learn.training_runs import get_run, ms_to_datetime, start_run, update_run
from pipeline.models.registry import (
    fetch_artifact,
    model_name,
    register,
    set_metrics,
    store_artifact,
)
from pipeline.settings import PROJECT_ROOT, Market, Settings
from pipeline.timeutil import DAY_MS, iso

ALGORITHMS = ("dqn", "a2c")
DEFAULT_SPEC = FeatureSpec()


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in ms since the epoch, UTC."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ConfigurationError(f"window {self} ends before it starts")

    def __str__(self) -> str:
        return f"[{iso(self.start)}, {iso(self.end)})"


def windows_before(
    end_ms: int,
    train_days: int,
    valid_days: int,
    timeframe_ms: int,
    *,
    train_start: int | None = None,
    train_end: int | None = None,
    valid_start: int | None = None,
) -> tuple[Window, Window]:
    """(train, valid) windows ending at `end_ms` (floored to the timeframe), valid last:
    `valid_days` of validation after `train_days` of training, unless a boundary is given
    (a given training end is also where validation starts)."""
    end = end_ms - end_ms % timeframe_ms
    valid_start = valid_start or train_end or end - valid_days * DAY_MS
    train_end = train_end or valid_start
    train_start = train_start or train_end - train_days * DAY_MS
    return Window(train_start, train_end), Window(valid_start, end)


_FLAGS = {"num_envs": "envs"}
_SETTINGS = {"steps": "dqn_steps/a2c_steps", "num_envs": "dqn_envs/a2c_envs"}


@dataclass(frozen=True)
class TrainRequest:
    """One agent to train: algorithm, market, windows, budget and environment."""

    algorithm: str
    market: Market
    train: Window
    valid: Window
    steps: int
    num_envs: int
    episode_length: int = 60
    decision_every: int = 1
    features: tuple[str, ...] = DEFAULT_SPEC.features
    shorting: bool = False
    position_steps: int = 1
    position_rule: str = "argmax"
    fee_bps: float = 10.0
    slippage_bps: float = 5.0
    seed: int = 0
    ensemble: int = 1
    target_volatility: float | None = None
    volatility_features: tuple[str, ...] = ("vol_168",)
    downside_penalty: float = 0.0
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"algorithm {self.algorithm!r} is not known: use one of {', '.join(ALGORITHMS)}"
            )
        for name, low in (
            ("steps", 1),
            ("num_envs", 1),
            ("episode_length", 1),
            ("decision_every", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < low:
                raise ConfigurationError(
                    f"{name} must be a whole number >= {low}, got {getattr(self, name)}: "
                    f"set it (flag --{_FLAGS.get(name, name).replace('_', '-')} or "
                    f"training.{_SETTINGS.get(name, name)}) to {low} or more"
                )
        if self.ensemble < 1:
            raise ConfigurationError(
                f"ensemble must be at least 1 member, got {self.ensemble}: set "
                "training.ensemble (CRYPTOBOTS_TRAINING__ENSEMBLE) to 1 or more"
            )
        if self.position_steps < 1:
            raise ConfigurationError(
                f"position_steps must be at least 1, got {self.position_steps}: set "
                "training.position_steps (CRYPTOBOTS_TRAINING__POSITION_STEPS) to 1 or more"
            )
        if self.position_rule not in POSITION_RULES:
            raise ConfigurationError(
                f"position_rule {self.position_rule!r} is not known: set "
                "training.position_rule (CRYPTOBOTS_TRAINING__POSITION_RULE) to one of "
                f"{', '.join(POSITION_RULES)}"
            )
        if self.position_rule == "expected" and self.algorithm != "a2c":
            raise ConfigurationError(
                f"position_rule expected weighs positions by action probabilities, which "
                f"{self.algorithm}'s Q-values are not: use it with a2c, or set "
                "training.position_rule (CRYPTOBOTS_TRAINING__POSITION_RULE) to argmax"
            )
        if self.valid.start < self.train.end:
            raise ConfigurationError(
                f"validation window {self.valid} overlaps the training window {self.train}: "
                "validate on a later, disjoint window"
            )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        algorithm: str,
        market: Market,
        train: Window,
        valid: Window,
        **changes: Any,
    ) -> TrainRequest:
        """A request with the budget and environment of `settings.training`, then `changes`."""
        t = settings.training
        defaults: dict[str, Any] = {
            "steps": t.dqn_steps if algorithm == "dqn" else t.a2c_steps,
            "num_envs": t.dqn_envs if algorithm == "dqn" else t.a2c_envs,
            "episode_length": t.episode_length,
            "decision_every": t.decision_every,
            "features": t.features,
            "shorting": t.shorting,
            "position_steps": t.position_steps,
            "position_rule": t.position_rule if algorithm == "a2c" else "argmax",
            "fee_bps": t.fee_bps,
            "slippage_bps": t.slippage_bps,
            "seed": t.seed,
            "ensemble": t.ensemble,
            "target_volatility": t.target_volatility,
            "volatility_features": t.volatility_features,
            "downside_penalty": t.downside_penalty,
        }
        chosen = {**defaults, **{k: v for k, v in changes.items() if v is not None}}
        return cls(algorithm=algorithm, market=market, train=train, valid=valid, **chosen)

    @property
    def spec(self) -> FeatureSpec:
        """The (unfitted) feature spec of this request."""
        return FeatureSpec(features=tuple(self.features))

    @property
    def action_map(self) -> tuple[float, ...]:
        """Flat, then long positions in `position_steps` steps up to 1, then the same short
        when shorting is allowed: (0, 1), (0, 1, -1), (0, 0.5, 1), ..."""
        from pipeline.learn.rl.env import action_map

        return action_map(self.position_steps, self.shorting)

    @property
    def sizing(self) -> VolatilityTarget | None:
        """Position sizing by volatility target, or None for the action map's positions."""
        if self.target_volatility is None:
            return None
        return VolatilityTarget(
            target=self.target_volatility, features=tuple(self.volatility_features)
        )

    @property
    def member_seeds(self) -> tuple[int, ...]:
        """Seeds of the ensemble's members: disjoint for different master seeds, and the
        master seed itself for a single model."""
        return tuple(self.seed * self.ensemble + k for k in range(self.ensemble))


@dataclass(frozen=True)
class Snapshot:
    """The candles of one market covering a training window (with look-back) and a
    validation window, frozen in a file so that every algorithm sees the same data."""

    market: Market
    train: Window
    valid: Window
    candles: Candles
    filled: np.ndarray


def load_candles(engine: Engine, market: Market, start: int, end: int) -> Candles:
    """Stored candles of `market` with open time in [start, end), ascending."""
    query = (
        sa.select(
            ohlcv.c.ts, ohlcv.c.open, ohlcv.c.high, ohlcv.c.low, ohlcv.c.close, ohlcv.c.volume
        )
        .where(
            ohlcv.c.exchange == market.exchange,
            ohlcv.c.symbol == market.symbol,
            ohlcv.c.timeframe == market.timeframe,
            ohlcv.c.ts >= start,
            ohlcv.c.ts < end,
        )
        .order_by(ohlcv.c.ts)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return Candles.from_rows(rows)


def _stored_ts(engine: Engine, market: Market, bound: Callable[..., Any]) -> int | None:
    """`bound` (sa.func.min or max) of the stored open times of `market`."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(bound(ohlcv.c.ts)).where(
                ohlcv.c.exchange == market.exchange,
                ohlcv.c.symbol == market.symbol,
                ohlcv.c.timeframe == market.timeframe,
            )
        ).scalar()
    return None if found is None else int(found)


def latest_candle_end(engine: Engine, market: Market) -> int | None:
    """Close time (ms) of the newest stored candle of `market`, or None when none is."""
    latest = _stored_ts(engine, market, sa.func.max)
    return None if latest is None else latest + market.timeframe_ms


def snapshot_window(
    settings: Settings,
    engine: Engine,
    market: Market,
    train: Window,
    valid: Window,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> Path:
    """Write the candles both windows need to a file: from `spec.window - 1` candles
    before the training window (the features' look-back) to the validation end."""
    tf_ms = market.timeframe_ms
    start = train.start - (spec.window - 1) * tf_ms
    candles = load_candles(engine, market, start, valid.end)
    hint = (
        f"backfill it first: python -m pipeline backfill --market {market} "
        f"--start {iso(start)} --end {iso(valid.end)}"
    )
    if len(candles) == 0:
        raise DataValidationError(
            f"no stored candles of {market} in {Window(start, valid.end)}: {hint}"
        )
    if candles.ts[0] > start or candles.ts[-1] < valid.end - 2 * tf_ms:
        raise DataValidationError(
            f"stored candles of {market} cover only [{iso(int(candles.ts[0]))}, "
            f"{iso(int(candles.ts[-1]) + tf_ms)}) of the needed {Window(start, valid.end)}: {hint}"
        )
    filled_candles, filled = fill_gaps(candles, tf_ms)
    coverage = 1.0 - filled.mean()
    if coverage < 0.9:
        raise DataValidationError(
            f"{market} has only {coverage:.0%} of its candles in {Window(start, valid.end)} "
            f"(the rest are gaps): {hint}"
        )
    path = (
        settings.var_dir
        / "snapshots"
        / (f"{_slug(str(market))}_{train.start}_{train.end}_{valid.start}_{valid.end}.npz")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "market": str(market),
        "train": [train.start, train.end],
        "valid": [valid.start, valid.end],
    }
    temporary = path.with_suffix(".tmp.npz")
    np.savez(
        temporary,
        meta=np.array(json.dumps(meta)),
        filled=filled,
        **{
            name: getattr(filled_candles, name)
            for name in ("ts", "open", "high", "low", "close", "volume")
        },
    )
    temporary.replace(path)
    return path


def load_snapshot(path: Path | str) -> Snapshot:
    """Read a snapshot written by `snapshot_window`."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"snapshot {path} does not exist: run snapshot_window again")
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        candles = Candles(
            *(data[name] for name in ("ts", "open", "high", "low", "close", "volume"))
        )
        filled = data["filled"]
    return Snapshot(
        market=Market.model_validate(meta["market"]),
        train=Window(*meta["train"]),
        valid=Window(*meta["valid"]),
        candles=candles,
        filled=filled,
    )


@dataclass(frozen=True)
class Prepared:
    """Features and price arrays of both windows, normalization fitted on training.

    Decisions fall every `decision_every` candles; the validation arrays hold one row
    per decision plus the candle that closes the last step.
    """

    spec: FeatureSpec
    train: Any
    valid_features: np.ndarray
    valid_ts: np.ndarray
    valid_open: np.ndarray
    valid_close: np.ndarray
    decision_every: int = 1
    valid_scale: np.ndarray | None = None
    """Position size of each validation decision (None: unscaled)."""
    parity_features: np.ndarray | None = None
    """Hourly feature rows for the ONNX parity check: the validation window's first,
    then the training window's (so short windows still give enough)."""


def decision_steps(
    candles: Candles, features: np.ndarray, window: Window, timeframe_ms: int, every: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts, open, close, features) of the decision candles of `window`, as one step each.

    A decision is taken at the close of every candle whose close time is a multiple of
    `every` candles since the epoch (1h x 24: daily at 00:00 UTC), so training,
    evaluation and serving decide at the same moments. The open of step i is the open
    of the candle after decision i-1 (the fill of the previous decision) and its close
    the close at decision i: the backtest's fill-at-next-open rule, on coarser steps.
    """
    inside = np.flatnonzero((candles.ts >= window.start) & (candles.ts < window.end))
    closes_at = candles.ts[inside] // timeframe_ms + 1
    rows = inside[closes_at % every == 0]
    if len(rows) < 2:
        raise DataValidationError(
            f"window {window} holds {len(rows)} decision candles (one every {every}): "
            "widen the window or decide more often"
        )
    opens = np.r_[candles.open[rows[0]], candles.open[rows[:-1] + 1]]
    return candles.ts[rows], opens, candles.close[rows], features[rows]


def prepare(
    snapshot: Snapshot,
    spec: FeatureSpec = DEFAULT_SPEC,
    decision_every: int = 1,
    sizing: VolatilityTarget | None = None,
) -> Prepared:
    """Compute features once, cut both windows into decision steps, fit normalization on
    the training window's candles, size positions by `sizing` when given."""
    from pipeline.learn.rl.env import MarketArrays

    candles, tf_ms = snapshot.candles, snapshot.market.timeframe_ms
    matrix = compute_features(candles, spec)
    train_rows = (candles.ts >= snapshot.train.start) & (candles.ts < snapshot.train.end)
    valid_rows = (candles.ts >= snapshot.valid.start) & (candles.ts < snapshot.valid.end)
    fitted = fit_normalization(spec, matrix[train_rows])

    def sizes(rows: np.ndarray) -> np.ndarray | None:
        return None if sizing is None else sizing.scale(rows, spec.features, tf_ms)

    steps = decision_steps(candles, matrix, snapshot.train, tf_ms, decision_every)
    train = MarketArrays.from_candles(*steps, scale=sizes(steps[3]))
    ts, opens, closes, features = decision_steps(
        candles, matrix, snapshot.valid, tf_ms, decision_every
    )
    return Prepared(
        spec=fitted,
        train=train,
        valid_features=features[:-1],
        valid_ts=ts,
        valid_open=opens,
        valid_close=closes,
        decision_every=decision_every,
        valid_scale=sizes(features[:-1]),
        parity_features=np.concatenate([matrix[valid_rows], matrix[train_rows]]),
    )


def new_run_id(algorithm: str, market: Market, orchestrator_run: str | None = None) -> str:
    """A readable id; the same Airflow run and algorithm always give the same id (retries
    resume from the checkpoint), a CLI run gets a fresh one."""
    stem = f"{algorithm}-{_slug(str(market))}"
    if orchestrator_run:
        return f"{stem}-{hashlib.sha256(orchestrator_run.encode()).hexdigest()[:12]}"
    return f"{stem}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_dir(settings: Settings, run_id: str) -> Path:
    """Where a run keeps its checkpoints, summaries, model and plots on this worker (its
    scratch space: what another task needs goes through the artifact store)."""
    return settings.var_dir / "runs" / run_id


def local_copy(settings: Settings, uri: str | Path, kind: str) -> Path:
    """A file of the artifact store on this worker (itself when the store is a local
    folder, else downloaded once into this worker's scratch space)."""
    return fetch_artifact(str(uri), settings.var_dir / "cache" / kind)


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
    """Train one agent on the snapshot's training window; record and return its run id.

    Every run is exported and parity-checked; `register_version` makes it a candidate
    in the registry (an older walk-forward fold's run is evidence only, never shipped)."""
    from pipeline.learn.rl import actor_critic, dqn
    from pipeline.learn.rl.env import EnvConfig, TradingEnv
    from pipeline.learn.rl.networks import ensemble_of

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
    env_config = EnvConfig(
        num_envs=request.num_envs,
        episode_length=request.episode_length,
        action_map=request.action_map,
        fee_bps=request.fee_bps,
        slippage_bps=request.slippage_bps,
        downside_penalty=request.downside_penalty,
    )
    module: Any = dqn if request.algorithm == "dqn" else actor_critic
    make_config = dqn.DQNConfig if request.algorithm == "dqn" else actor_critic.A2CConfig
    configs = [
        make_config(total_steps=request.steps, seed=seed, **request.overrides)
        for seed in request.member_seeds
    ]
    params = {
        "algorithm": request.algorithm,
        "config": dataclasses.asdict(configs[0]),
        "env": dataclasses.asdict(env_config),
        "decision_every": request.decision_every,
        "ensemble": request.ensemble,
        "member_seeds": list(request.member_seeds),
        "sizing": None if request.sizing is None else request.sizing.to_dict(),
        "position_rule": request.position_rule,
    }
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
        env = TradingEnv(prepared.train, env_config)
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
            for k, config in enumerate(configs)
        ]
        policy = ensemble_of([r.model for r in results], OUTPUT_NAMES[request.algorithm])
        model_path = directory / "model.keras"
        policy.save(model_path)
        (directory / "feature_spec.json").write_text(prepared.spec.to_json() + "\n")
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
        name = model_name(str(request.market))
        onnx_uri, _, _ = store_artifact(settings.artifact_root, onnx_path)
        version = (
            register(
                engine,
                settings.artifact_root,
                onnx_path,
                name,
                metrics={"parity_max_abs_diff": parity.max_abs_diff},
                training_run=run_id,
            )
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
        device=results[0].device,
        env_steps=sum(r.env_steps for r in results),
        updates=sum(r.updates for r in results),
        train_seconds=sum(r.seconds for r in results),
        params={**params, "device": results[0].device},
        artifacts={
            "run_dir": str(directory),
            "snapshot": str(snapshot_path),
            "model": str(model_path),
            "onnx": onnx_uri,
            "model_name": name,
            "model_version": version,
            "feature_spec": str(directory / "feature_spec.json"),
            "tensorboard": str(directory / "tensorboard"),
        },
        metrics={"parity_max_abs_diff": parity.max_abs_diff, "parity_rows": parity.rows},
    )
    drop_checkpoints(settings, run_id)
    return run_id


def checkpoint_store(settings: Settings, run_id: str, member: int | None = None) -> str:
    """Where a run's training checkpoints are mirrored in the artifact store (per ensemble
    member), so that a training task retried on another worker resumes from them."""
    folder = f"{settings.artifact_root.rstrip('/')}/checkpoints/{run_id}"
    return folder if member is None else f"{folder}/member-{member}"


def drop_checkpoints(settings: Settings, run_id: str) -> None:
    """Remove a trained run's mirrored checkpoints: its exported policy is what lasts."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(checkpoint_store(settings, run_id))
    if fs.exists(path):
        fs.rm(path, recursive=True)


@dataclass(frozen=True)
class Evaluation:
    """Validation backtests of one run: the policy and the baselines, same window."""

    run_id: str
    backtests: dict[str, Backtest]
    plot: Path

    @property
    def metrics(self) -> dict[str, float]:
        """The policy's metrics."""
        return self.backtests["policy"].metrics

    def table(self) -> str:
        """Policy and baselines side by side."""
        return metrics_table(self.backtests)


def evaluate_run(settings: Settings, engine: Engine, run_id: str) -> Evaluation:
    """Backtest a trained run's exported ONNX policy (the artifact that ships, run by ONNX
    Runtime) on its validation window; record the metrics."""
    import onnxruntime as ort

    run = get_run(engine, run_id)
    if run["status"] not in ("trained", "evaluated"):
        raise ConfigurationError(
            f"training run {run_id} is {run['status']}, not trained: train it first"
        )
    artifacts = dict(run["artifacts"])
    snapshot = load_snapshot(local_copy(settings, artifacts["snapshot"], "snapshots"))
    spec = FeatureSpec.from_dict(run["feature_spec"])
    every = int(run["params"].get("decision_every", 1))
    sizing = VolatilityTarget.from_dict(run["params"].get("sizing"))
    prepared = prepare(
        snapshot,
        FeatureSpec(name=spec.name, version=spec.version, features=spec.features),
        every,
        sizing,
    )
    onnx = local_copy(settings, artifacts["onnx"], "onnx")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    env = run["params"]["env"]

    def policy(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.asarray(obs, np.float32)})[0]

    backtests = evaluate_policy(
        policy,
        prepared.valid_features,
        prepared.valid_ts,
        prepared.valid_open,
        prepared.valid_close,
        tuple(run["action_map"]),
        snapshot.market.timeframe_ms * every,
        CostModel(fee_bps=env["fee_bps"], slippage_bps=env["slippage_bps"]),
        scale=prepared.valid_scale,
        rule=run["params"].get("position_rule", "argmax"),
    )
    directory = run_dir(settings, run_id)  # this worker's: training may have run on another
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_equity(
        backtests,
        directory / "equity.png",
        f"{run['algorithm']} {snapshot.market} validation {snapshot.valid} (run {run_id})",
    )
    (directory / "metrics.json").write_text(
        json.dumps({name: b.metrics for name, b in backtests.items()}, indent=2) + "\n"
    )
    plot_uri, _, _ = store_artifact(settings.artifact_root, plot, kind="plots", suffix=".png")
    update_run(
        engine,
        run_id,
        "evaluated",
        metrics={
            **(run["metrics"] or {}),
            **backtests["policy"].metrics,
            "series": series_of(backtests),
        },
        baselines={name: b.metrics for name, b in backtests.items() if name != "policy"},
        artifacts={
            **artifacts,
            "equity_plot": plot_uri,
        },
    )
    if artifacts.get("model_version"):
        returns = backtests["policy"].returns
        set_metrics(
            engine,
            artifacts["model_name"],
            int(artifacts["model_version"]),
            {
                "validation": backtests["policy"].metrics,
                "validation_plot": plot_uri,
                **(
                    {"expectations": drawdown_expectations(returns, "the validation window")}
                    if len(returns) >= MIN_RETURNS
                    else {}
                ),
            },
        )
    return Evaluation(run_id=run_id, backtests=backtests, plot=plot)


def series_of(backtests: Mapping[str, Backtest]) -> dict[str, Any]:
    """The step returns and positions of each backtest, JSON-able: what a walk-forward
    score chains across folds."""
    first = next(iter(backtests.values()))
    return {
        "ts": first.ts.tolist(),
        **{
            name: {"returns": b.returns.tolist(), "positions": b.positions.tolist()}
            for name, b in backtests.items()
        },
    }


def window_steps(
    engine: Engine,
    market: Market,
    window: Window,
    features: tuple[str, ...],
    every: int,
    what: str = "the model",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts, open, close, features) of the decision steps of a window of stored candles
    (see `decision_steps`), the features' look-back read from before the window."""
    tf_ms = market.timeframe_ms
    spec = FeatureSpec(features=features)
    start = window.start - (spec.window - 1) * tf_ms
    candles = load_candles(engine, market, start, window.end)
    if len(candles) == 0 or candles.ts[0] > start:
        raise DataValidationError(
            f"{what}: the stored candles of {market} do not cover {window} and its feature "
            f"look-back: backfill it (python -m pipeline backfill --market {market} "
            f"--start {iso(start)} --end {iso(window.end)})"
        )
    candles, _ = fill_gaps(candles, tf_ms)
    return decision_steps(candles, compute_features(candles, spec), window, tf_ms, every)


def backtest_onnx(
    engine: Engine,
    onnx_path: Path | str,
    market: Market,
    window: Window,
    features: tuple[str, ...],
    action_map: tuple[float, ...],
    every: int,
    cost: CostModel,
    what: str = "the model",
    sizing: VolatilityTarget | None = None,
    rule: str = "argmax",
) -> dict[str, Backtest]:
    """Backtest an ONNX policy file (run by ONNX Runtime) and the baselines on any window
    of stored candles, the features computed from candles before it as look-back, the
    positions taken and sized as the model was trained (`rule`, `sizing`)."""
    import onnxruntime as ort

    ts, opens, closes, rows = window_steps(engine, market, window, features, every, what)
    tf_ms = market.timeframe_ms
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def policy(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.asarray(obs, np.float32)})[0]

    scale = None if sizing is None else sizing.scale(rows[:-1], features, tf_ms)
    return evaluate_policy(
        policy,
        rows[:-1],
        ts,
        opens,
        closes,
        action_map,
        tf_ms * every,
        cost,
        scale=scale,
        rule=rule,
    )


def select_best(engine: Engine, run_ids: list[str]) -> dict[str, Any]:
    """The evaluated run with the best validation Sharpe: id, algorithm, market, metrics."""
    runs = [get_run(engine, run_id) for run_id in run_ids]
    evaluated = [run for run in runs if run["status"] == "evaluated" and run["metrics"]]
    if not evaluated:
        raise DataValidationError(
            f"none of the runs {run_ids} has been evaluated: nothing to select"
        )
    best = max(evaluated, key=lambda run: run["metrics"]["sharpe"])
    return {
        "run_id": best["id"],
        "algorithm": best["algorithm"],
        "market": best["market"],
        "sharpe": best["metrics"]["sharpe"],
        "beats_baselines": all(
            best["metrics"]["sharpe"] > baseline["sharpe"]
            for baseline in best["baselines"].values()
        ),
    }


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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def select_walk_forward(engine: Engine, run_ids: list[str]) -> dict[str, Any]:
    """Per market, the algorithm with the best walk-forward score over its folds (see
    `pipeline.learn.walk_forward`); its newest fold's run is the candidate, and the evidence
    (folds, chained metrics, PSR, DSR, bootstrap interval) is stored on the candidate's
    model version for the promotion gate and the Models page.

    Returns {"markets": {market: summary}} and, at the top level, the summary of the
    market with the best median fold Sharpe.
    """
    from pipeline.learn import walk_forward

    runs = [get_run(engine, run_id) for run_id in run_ids]
    evaluated = [
        r for r in runs if r["status"] == "evaluated" and (r["metrics"] or {}).get("series")
    ]
    if not evaluated:
        raise DataValidationError(
            f"none of the runs {run_ids} has been evaluated: nothing to select"
        )
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in evaluated:
        groups.setdefault(run["market"], {}).setdefault(run["algorithm"], []).append(run)
    summaries = {}
    for market, by_algorithm in groups.items():
        step_ms = Market.model_validate(market).timeframe_ms * int(
            next(iter(by_algorithm.values()))[0]["params"].get("decision_every", 1)
        )
        folds = {
            algorithm: [
                {
                    "valid": [ms_of(r["valid_start"]), ms_of(r["valid_end"])],
                    "series": r["metrics"]["series"],
                }
                for r in algorithm_runs
            ]
            for algorithm, algorithm_runs in by_algorithm.items()
        }
        chosen = walk_forward.select(folds, step_ms)
        best = chosen["best"]
        candidate = max(by_algorithm[best], key=lambda r: ms_of(r["valid_end"]))
        evidence = {**chosen["scores"][best], "algorithm": best, "candidates": sorted(folds)}
        artifacts = candidate["artifacts"] or {}
        if artifacts.get("model_version"):
            returns, _ = walk_forward.chain(
                sorted(folds[best], key=lambda f: f["valid"][0]), "policy", step_ms
            )
            set_metrics(
                engine,
                artifacts["model_name"],
                int(artifacts["model_version"]),
                {
                    "walk_forward": evidence,
                    "expectations": drawdown_expectations(
                        returns, f"{len(folds[best])} walk-forward folds"
                    ),
                },
            )
        summaries[market] = {
            "run_id": candidate["id"],
            "algorithm": best,
            "market": market,
            "model_name": artifacts.get("model_name"),
            "model_version": artifacts.get("model_version"),
            "folds": len(folds[best]),
            "median_sharpe": evidence["median_sharpe"],
            "worst_drawdown": evidence["worst_drawdown"],
            "chained_sharpe": evidence["chained"]["sharpe"],
            "psr": evidence["confidence"]["psr"],
            "dsr": evidence["confidence"]["dsr"],
            "scores": {
                algorithm: {
                    "median_sharpe": score["median_sharpe"],
                    "chained_sharpe": score["chained"]["sharpe"],
                    "worst_drawdown": score["worst_drawdown"],
                }
                for algorithm, score in chosen["scores"].items()
            },
        }
    top = max(summaries.values(), key=lambda s: s["median_sharpe"])
    return {**top, "markets": summaries}


def ms_of(value: Any) -> int:
    """A datetime or ms value as ms since the epoch."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    return int(value)


MIN_TRAIN_DAYS = 180


def walk_forward_folds(
    end_ms: int,
    folds: int,
    train_days: int,
    valid_days: int,
    timeframe_ms: int,
    earliest_ms: int | None = None,
    min_train_days: int = MIN_TRAIN_DAYS,
) -> list[tuple[Window, Window]]:
    """`folds` consecutive validation windows ending at `end_ms`, each with the training
    window right before it (chronological; validation windows never overlap).

    With `earliest_ms` (the first candle a training window may start at, after the
    features' look-back), a training window reaching further back starts there
    instead: an early fold trains on the history there is. A fold left with fewer than
    `min_train_days` (or `train_days`, if smaller) of training is refused by name.
    """
    if folds < 1:
        raise ConfigurationError(f"walk-forward needs at least one fold, got {folds}")
    end = end_ms - end_ms % timeframe_ms
    result = []
    for i in range(folds, 0, -1):
        fold_end = end - (i - 1) * valid_days * DAY_MS
        train, valid = windows_before(fold_end, train_days, valid_days, timeframe_ms)
        if earliest_ms is not None and train.start < earliest_ms:
            start = earliest_ms + (-earliest_ms) % DAY_MS
            need = min(min_train_days, train_days)
            if train.end - start < need * DAY_MS:
                raise DataValidationError(
                    f"walk-forward fold {folds - i + 1} of {folds} (validation {valid}) has "
                    f"only {max(train.end - start, 0) / DAY_MS:.0f} days of candles to train "
                    f"on after {iso(earliest_ms)}, fewer than {need}: use fewer folds, "
                    "shorter validation windows, or backfill earlier history"
                )
            train = Window(start, train.end)
        result.append((train, valid))
    return result


def first_candle(engine: Engine, market: Market) -> int | None:
    """Open time (ms) of the oldest stored candle of `market`, or None when none is."""
    return _stored_ts(engine, market, sa.func.min)


def earliest_training_start(engine: Engine, market: Market, spec: FeatureSpec) -> int | None:
    """The first time a training window of `market` can start: the oldest stored candle
    plus the features' look-back."""
    first = first_candle(engine, market)
    return None if first is None else first + (spec.window - 1) * market.timeframe_ms


def verdict(metrics: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]) -> str:
    """'wins' when the policy's Sharpe beats every baseline's and its drawdown is no deeper
    than buy-and-hold's; otherwise what it lost to."""
    lost = [name for name, b in baselines.items() if metrics["sharpe"] <= b["sharpe"]]
    if "buy_and_hold" in baselines and (
        metrics["max_drawdown"] > baselines["buy_and_hold"]["max_drawdown"]
    ):
        lost.append("drawdown")
    return "wins" if not lost else "loses to " + ", ".join(lost)


def fold_summary(evaluations: Mapping[str, Evaluation], valid: Window) -> list[list[str]]:
    """Rows of a walk-forward summary: one per algorithm of one fold."""
    rows = []
    for algorithm, evaluation in evaluations.items():
        tests = evaluation.backtests
        baselines = {name: b.metrics for name, b in tests.items() if name != "policy"}
        rows.append(
            [
                f"{iso(valid.start)[:10]}..{iso(valid.end)[:10]}",
                algorithm,
                f"{evaluation.metrics['sharpe']:.2f}",
                f"{baselines['buy_and_hold']['sharpe']:.2f}",
                f"{baselines['momentum']['sharpe']:.2f}",
                f"{evaluation.metrics['total_return']:+.1%}",
                f"{baselines['buy_and_hold']['total_return']:+.1%}",
                f"{evaluation.metrics['max_drawdown']:.1%}",
                f"{baselines['buy_and_hold']['max_drawdown']:.1%}",
                verdict(evaluation.metrics, baselines),
            ]
        )
    return rows


WALK_FORWARD_HEADER = [
    "validation",
    "algo",
    "sharpe",
    "b&h sharpe",
    "mom sharpe",
    "return",
    "b&h return",
    "max dd",
    "b&h dd",
    "verdict",
]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned fixed-width columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)

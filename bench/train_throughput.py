"""Training throughput of our DQN and A2C against Stable-Baselines3 (PyTorch CPU).

Environment steps per second and gradient updates per second of our agents
(TensorFlow, the vectorized `TradingEnv`, one compiled call per chunk) and, in
the same process, of Stable-Baselines3's DQN and A2C on `TradingGymEnv`, the
gymnasium twin of the same environment, over the same data: binance BTC/USDT 1h,
training window 2018-01-01 .. 2020-01-01. Same network sizes (64, 64), batch
size, n-step, update frequency, learning starts and target interval; SB3 A2C
steps a `DummyVecEnv` of 16 envs, SB3 DQN one env.

How it times: every run records the clock after each chunk (ours: the `on_chunk`
callback after each compiled call, its summary and checkpoint; SB3: a callback
after an eighth of its steps, not before DQN's learning starts, and at the end).
Throughput counts from the end of the first chunk to the end of the run, so the
first chunk, which holds our XLA compile, SB3's first torch calls and DQN's
learning-starts phase, is left out on both sides. Each run is repeated
(--repeats, default 2), ours and SB3 taking turns, and the faster kept: the
machine is shared.

Floors on this CPU (issue 4): our A2C >= 50x SB3 A2C env-steps/s with many
parallel envs; our DQN >= 10x SB3 DQN at equal update frequency (0.25 gradient
updates per env step). Then the wall time of one default nightly training run of
each algorithm as `pipeline.learn.training` sets it up from the `TrainingSettings`
defaults (features, decision interval, episode length, steps, envs), agent setup
and compile included, on the same window.

SB3 runs with one torch thread by default (--torch-threads): with torch's default
of one thread per core it ran 3-7x slower here (2 cores, batches of 16 to 128
rows), and the baseline should be SB3 at its best. SB3 needs the bench-only
requirements: `.venv/bin/pip install -r requirements-bench.txt` (pip, not uv).

    python -m bench.train_throughput [--quick] [--no-sb3] [--no-nightly]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Floors
from pipeline.arguments import Parser, non_negative_int, positive_int
from pipeline.exchanges.simulator.recordings import read_recording
from pipeline.learn.features import (
    Candles,
    FeatureSpec,
    compute_features,
    fill_gaps,
    fit_normalization,
)
from pipeline.settings import TrainingSettings, load_settings

RECORDING = "binance_BTC-USDT_1h.csv.gz"
HOUR_MS = 3_600_000
WINDOW = ("2018-01-01", "2020-01-01")
HIDDEN = (64, 64)
SB3_A2C_ENVS = 16
FLOORS = {"a2c": 50.0, "dqn": 10.0}
INSTALL_HINT = (
    "install the bench-only requirements with pip (uv would fetch a CUDA torch build): "
    ".venv/bin/pip install -r requirements-bench.txt"
)


@dataclass
class Measurement:
    """One timed run: the steps and updates counted after its first chunk."""

    label: str
    algorithm: str
    envs: int
    steps: int
    updates: int
    seconds: float
    total_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds


@dataclass(frozen=True)
class TrainingData:
    """The window every run trains on, as the env and the gym env take it."""

    data: Any  # MarketArrays
    spec: FeatureSpec


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def load_window(
    data_dir: Path,
    start: str,
    end: str,
    features: tuple[str, ...] | None = None,
    decision_every: int = 1,
) -> TrainingData:
    """Recorded candles of [start, end), deduplicated (last row wins) and gap-filled, with
    features from one feature window before `start`, normalization fitted on the window's
    candles and one decision every `decision_every` candles (as `pipeline.learn.prepare` cuts)."""
    from pipeline.learn.prepare import decision_steps
    from pipeline.learn.rl.env import MarketArrays
    from pipeline.learn.windows import Window

    recording = read_recording(data_dir / RECORDING)
    spec = FeatureSpec() if features is None else FeatureSpec(features=features)
    window = Window(_ms(start), _ms(end))
    lead = (spec.window - 1) * HOUR_MS
    keep = (recording.ts >= window.start - lead) & (recording.ts < window.end)
    ts, text = recording.ts[keep], recording.text[keep]
    last = np.append(ts[1:] != ts[:-1], True)  # sorted stably: the last recorded row wins
    rows = np.column_stack([ts[last], text[last].astype(np.float64)])
    candles, _ = fill_gaps(Candles.from_rows(rows), HOUR_MS)
    matrix = compute_features(candles, spec)
    spec = fit_normalization(spec, matrix[candles.ts >= window.start])
    steps = decision_steps(candles, matrix, window, HOUR_MS, decision_every)
    return TrainingData(data=MarketArrays.from_candles(*steps), spec=spec)


def best(runs: list[Measurement]) -> Measurement:
    """The faster of repeated runs (others on the machine only ever slow one down)."""
    return max(runs, key=lambda run: run.steps_per_s)


def _steady(stamps: list[tuple[float, int, int]], label: str) -> tuple[int, int, float]:
    """Steps, updates and seconds from the first stamp to the last one."""
    if len(stamps) < 2:
        raise SystemExit(f"{label}: too few chunks to time past the first; give it more steps")
    (t0, s0, u0), (t1, s1, u1) = stamps[0], stamps[-1]
    return s1 - s0, u1 - u0, t1 - t0


# -- ours --------------------------------------------------------------------------------


def ours(
    algorithm: str, market: TrainingData, envs: int, total_steps: int, **overrides: Any
) -> Measurement:
    """One run of our agent; updates are counted from its own schedule (exact)."""
    from pipeline.learn.rl import actor_critic, dqn
    from pipeline.learn.rl.env import EnvConfig, TradingEnv

    env = TradingEnv(market.data, EnvConfig(num_envs=envs))
    if algorithm == "a2c":
        module: Any = actor_critic
        config: Any = actor_critic.A2CConfig(total_steps=total_steps, hidden=HIDDEN, **overrides)
        per_step = 1.0 / (config.n_steps * envs)
    else:
        module = dqn
        config = dqn.DQNConfig(total_steps=total_steps, hidden=HIDDEN, **overrides)
        per_step = config.updates_per_step
        if config.learning_starts > config.chunk_steps:
            raise SystemExit("learning_starts must fall in the first (untimed) chunk")
    stamps: list[tuple[float, int, int]] = []

    def on_chunk(record: dict[str, float]) -> None:
        steps = int(record["env_steps"])
        stamps.append((time.perf_counter(), steps, round(steps * per_step)))

    with tempfile.TemporaryDirectory(prefix="cb_bench_train_") as run_dir:
        result = module.train(
            config, env, market.spec.mean, market.spec.std, Path(run_dir), on_chunk=on_chunk
        )
    label = f"our {algorithm.upper()}"
    steps, updates, seconds = _steady(stamps, label)
    return Measurement(
        label, algorithm, envs, steps, updates, seconds, result.seconds, {"config": config}
    )


# -- Stable-Baselines3 -------------------------------------------------------------------


def sb3_available() -> str | None:
    """SB3's version, or None when it (or torch) is not installed."""
    try:
        import stable_baselines3
        import torch  # noqa: F401
    except ImportError:
        return None
    return str(stable_baselines3.__version__)


def sb3(algorithm: str, market: TrainingData, total_steps: int, first_chunk: int) -> Measurement:
    """One `learn` of SB3's agent, configured like ours; stamps after `first_chunk` steps."""
    from stable_baselines3 import A2C, DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from pipeline.learn.rl import actor_critic, dqn
    from pipeline.learn.rl.env import EnvConfig, TradingGymEnv

    def gym_env() -> TradingGymEnv:
        return TradingGymEnv(market.data, EnvConfig(num_envs=1))

    model: Any
    if algorithm == "a2c":
        c: Any = actor_critic.A2CConfig()
        envs = SB3_A2C_ENVS
        model = A2C(
            "MlpPolicy",
            DummyVecEnv([gym_env for _ in range(envs)]),
            n_steps=c.n_steps,
            learning_rate=c.learning_rate,
            gamma=c.gamma,
            gae_lambda=c.gae_lambda,
            ent_coef=c.entropy_coef,
            vf_coef=c.value_coef,
            max_grad_norm=c.max_grad_norm,
            normalize_advantage=c.normalize_advantage,
            policy_kwargs={"net_arch": {"pi": list(HIDDEN), "vf": list(HIDDEN)}},
            device="cpu",
            seed=c.seed,
        )
    else:
        c = dqn.DQNConfig(total_steps=total_steps)
        envs = 1
        first_chunk = max(first_chunk, c.learning_starts)
        model = DQN(
            "MlpPolicy",
            gym_env(),
            learning_rate=c.learning_rate,
            buffer_size=c.buffer_size,
            learning_starts=c.learning_starts,
            batch_size=c.batch_size,
            gamma=c.gamma,
            train_freq=round(1 / c.updates_per_step),
            gradient_steps=1,
            n_steps=c.n_step,
            target_update_interval=c.target_update_interval,
            exploration_fraction=c.exploration_fraction,
            exploration_initial_eps=c.epsilon_start,
            exploration_final_eps=c.epsilon_end,
            max_grad_norm=c.max_grad_norm,
            policy_kwargs={"net_arch": list(HIDDEN)},
            device="cpu",
            seed=c.seed,
        )
    stamps: list[tuple[float, int, int]] = []

    class Stamps(BaseCallback):
        def _on_step(self) -> bool:
            steps = self.model.num_timesteps
            if steps >= first_chunk and not stamps:
                stamps.append((time.perf_counter(), steps, self.model._n_updates))
            return True

        def _on_training_end(self) -> None:
            model = self.model
            stamps.append((time.perf_counter(), model.num_timesteps, model._n_updates))

    started = time.perf_counter()
    model.learn(total_timesteps=total_steps, callback=Stamps())
    total_seconds = time.perf_counter() - started
    label = f"SB3 {algorithm.upper()}"
    steps, updates, seconds = _steady(stamps, label)
    return Measurement(label, algorithm, envs, steps, updates, seconds, total_seconds)


# -- the default nightly run -------------------------------------------------------------


def nightly(algorithm: str, market: TrainingData, training: TrainingSettings) -> Measurement:
    """Wall time of one `train` call as `pipeline.learn.training` configures it from `training`
    (agent setup and compile included; the snapshot and the evaluation are not)."""
    from pipeline.learn.rl import actor_critic, dqn
    from pipeline.learn.rl.env import LONG_FLAT, LONG_FLAT_SHORT, EnvConfig, TradingEnv

    if algorithm == "dqn":
        module: Any = dqn
        config: Any = dqn.DQNConfig(total_steps=training.dqn_steps, seed=training.seed)
        envs = training.dqn_envs
    else:
        module = actor_critic
        config = actor_critic.A2CConfig(total_steps=training.a2c_steps, seed=training.seed)
        envs = training.a2c_envs
    started = time.perf_counter()
    env = TradingEnv(
        market.data,
        EnvConfig(
            num_envs=envs,
            episode_length=training.episode_length,
            action_map=LONG_FLAT_SHORT if training.shorting else LONG_FLAT,
            fee_bps=training.fee_bps,
            slippage_bps=training.slippage_bps,
        ),
    )
    with tempfile.TemporaryDirectory(prefix="cb_bench_nightly_") as run_dir:
        result = module.train(config, env, market.spec.mean, market.spec.std, Path(run_dir))
    wall = time.perf_counter() - started
    return Measurement(
        f"nightly {algorithm.upper()}",
        algorithm,
        envs,
        result.env_steps,
        result.updates,
        wall,
        result.seconds,
        {"config": config},
    )


# -- report ------------------------------------------------------------------------------


def repeat(times: int, run: Callable[[], Measurement]) -> Measurement:
    """The best of `times` runs."""
    return best([run() for _ in range(times)])


def interleaved(times: int, runs: dict[str, Callable[[], Measurement]]) -> dict[str, Measurement]:
    """Each run `times` times, taking turns (ours, SB3, ours, SB3, ...) so that a busy
    spell on the shared machine falls on both sides; the best of each."""
    done: dict[str, list[Measurement]] = {key: [] for key in runs}
    for _ in range(times):
        for key, run in runs.items():
            done[key].append(run())
    return {key: best(measured) for key, measured in done.items()}


def print_row(m: Measurement) -> None:
    """One throughput row."""
    print(
        f"  {m.label:<8} {m.envs:>6,} {m.steps:>11,} {m.seconds:>8.2f} {m.total_seconds:>8.2f} "
        f"{m.steps_per_s:>13,.0f} {m.updates_per_s:>10,.1f}"
    )


def print_ratio(m: Measurement, baseline: Measurement | None, floors: Floors) -> None:
    """Our run against SB3's, judged by the algorithm's floor."""
    floor = FLOORS[m.algorithm]
    head = f"  {m.label} {m.envs:>5,} envs / {m.algorithm.upper()} SB3: "
    if baseline is None:
        print(f"{head}n/a (SB3 not run), floor >= {floor:.0f}x")
        return
    ratio = m.steps_per_s / baseline.steps_per_s
    updates = m.updates_per_s / baseline.updates_per_s
    upe_ours, upe_sb3 = m.updates / m.steps, baseline.updates / baseline.steps
    print(
        f"{head}env-steps/s {ratio:6.1f}x, updates/s {updates:8.1f}x "
        f"(updates per env step {upe_ours:.4g} vs {upe_sb3:.4g}); floor >= {floor:.0f}x "
        f"env-steps/s -> {floors.check(f'{m.label} {m.envs} envs / SB3', ratio >= floor)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="python -m bench.train_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=None, help="recorded data folder")
    parser.add_argument("--quick", action="store_true", help="about 4x fewer steps, one repeat")
    parser.add_argument(
        "--repeats", type=positive_int, default=None, help="runs of each, best kept"
    )
    parser.add_argument("--no-sb3", action="store_true", help="skip the Stable-Baselines3 runs")
    parser.add_argument("--no-nightly", action="store_true", help="skip the default nightly runs")
    parser.add_argument(
        "--a2c-envs",
        type=positive_int,
        nargs="*",
        default=[1024, 4096],
        help="our A2C's parallel envs",
    )
    parser.add_argument(
        "--dqn-envs",
        type=positive_int,
        nargs="*",
        default=[1, 8, 32],
        help="our DQN's parallel envs",
    )
    parser.add_argument(
        "--no-jit", action="store_true", help="our agents with jit_compile=False (diagnosis)"
    )
    parser.add_argument(
        "--tf-threads",
        type=non_negative_int,
        default=0,
        help="TensorFlow intra/inter-op threads (0: default)",
    )
    parser.add_argument(
        "--torch-threads",
        type=non_negative_int,
        default=1,
        help="torch threads for SB3 (0: torch's default)",
    )
    args = parser.parse_args(argv)
    floors = Floors()
    repeats = args.repeats or (1 if args.quick else 2)
    jit = not args.no_jit
    scale = 4 if args.quick else 1
    steps = {"a2c": 8_000_000 // scale, "dqn": 160_000 // scale}
    sb3_steps = {"a2c": 400_000 // scale, "dqn": 50_000 // scale}
    envs = {"a2c": args.a2c_envs, "dqn": args.dqn_envs}

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.tf_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.tf_threads)

    data_dir = args.data or load_settings().data_dir
    if data_dir is None:
        raise SystemExit("no ../shared/data beside the checkout: pass --data")
    market = load_window(data_dir, *WINDOW)
    sb3_version = None if args.no_sb3 else sb3_available()
    torch_text = "torch: not run"
    if sb3_version is not None:
        import torch

        if args.torch_threads > 0:
            torch.set_num_threads(args.torch_threads)
        torch_text = (
            f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), SB3 {sb3_version}"
        )
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)"
    if args.tf_threads > 0:
        threads = f"{threads} (--tf-threads)"
    print(
        f"bench/train_throughput.py: {RECORDING}, window [{WINDOW[0]}, {WINDOW[1]}) = "
        f"{len(market.data):,} decisions, obs dim {market.data.features.shape[1] + 1}"
    )
    print(
        f"  CPU with {os.cpu_count()} cores; TensorFlow {tf.__version__}, intra-op threads "
        f"{threads}; {torch_text}"
    )
    if sb3_version is None and not args.no_sb3:
        print(f"  Stable-Baselines3 or torch is not installed, SB3 runs skipped: {INSTALL_HINT}")
    print(
        f"  timed from the end of each run's first chunk to its end (ours: first compiled call, "
        f"with the XLA compile; SB3: first {1 / 8:.1%} of its steps); best of {repeats}"
    )

    print(
        f"\nthroughput: hidden (64, 64), tanh A2C / relu DQN, DQN batch 64 and 0.25 updates per "
        f"env step; ours with jit_compile={jit}"
    )
    results = throughput(
        market, steps, envs, repeats, jit, None if sb3_version is None else sb3_steps
    )
    print("\nratios, ours / SB3 (same process, same data and window)")
    for measured in results.values():
        baseline = next((m for m in measured if m.label.startswith("SB3")), None)
        for m in measured:
            if m is not baseline:
                print_ratio(m, baseline, floors)

    if not args.no_nightly:
        training = TrainingSettings()
        daily = load_window(data_dir, *WINDOW, training.features, training.decision_every)
        print(
            f"\ndefault nightly run: TrainingSettings defaults ({len(daily.data):,} decisions, "
            f"one every {training.decision_every} candles, obs dim "
            f"{daily.data.features.shape[1] + 1}, episodes of {training.episode_length}), "
            f"DQNConfig/A2CConfig defaults otherwise; wall time of the train() call with agent "
            f"setup and XLA compile; best of {repeats}"
        )
        for m in nightly_runs(daily, training, repeats):
            print_nightly(m)
    floors.exit()


def throughput(
    market: TrainingData,
    steps: dict[str, int],
    envs: dict[str, list[int]],
    repeats: int,
    jit: bool,
    sb3_steps: dict[str, int] | None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, list[Measurement]]:
    """Per algorithm: our runs at each of `envs` and SB3's (when `sb3_steps`), taking
    turns, the best of `repeats` each, each row printed; `overrides` go to our configs."""
    print(
        f"  {'run':<8} {'envs':>6} {'timed steps':>11} {'timed s':>8} {'total s':>8} "
        f"{'env-steps/s':>13} {'updates/s':>10}"
    )
    results: dict[str, list[Measurement]] = {}
    for algorithm in envs:
        extra = (overrides or {}).get(algorithm, {})
        runs: dict[str, Callable[[], Measurement]] = {
            f"ours {n}": lambda a=algorithm, n=n, x=extra: ours(
                a, market, n, steps[a], jit_compile=jit, **x
            )
            for n in envs[algorithm]
        }
        if sb3_steps is not None:
            runs["sb3"] = lambda a=algorithm: sb3(a, market, sb3_steps[a], sb3_steps[a] // 8)
        measured = interleaved(repeats, runs)
        for m in measured.values():
            print_row(m)
        results[algorithm] = list(measured.values())
    return results


def nightly_runs(
    daily: TrainingData, training: TrainingSettings, repeats: int
) -> list[Measurement]:
    """One default nightly `train` call per algorithm of `training`, best of `repeats`."""
    return [
        repeat(repeats, lambda a=algorithm: nightly(a, daily, training))
        for algorithm in training.algorithms
    ]


def print_nightly(m: Measurement) -> None:
    """One nightly run's line."""
    c = m.notes["config"]
    minutes = m.seconds / 60
    print(
        f"  {m.algorithm.upper()}: {m.steps:,} env steps, {m.envs:,} envs, "
        f"{m.updates:,} updates, chunk {c.chunk_steps:,} steps: "
        f"wall {m.seconds:.1f} s ({minutes:.1f} min), "
        f"train() seconds {m.total_seconds:.1f}" + ("  -- over 5 minutes" if minutes > 5 else "")
    )


if __name__ == "__main__":
    main()

"""Time to quality: wall time on this machine's cores for Stable-Baselines3 PPO and A2C
and for the project's A2C ensemble to reach the same walk-forward score.

The score is the nightly's: the median Sharpe ratio over the `training.folds`
validation windows of `training.valid_days` ending at the recorded market's last
candle, each learner trained on the `training.train_days` before each window, with the
nightly's features, decisions (`training.decision_every`), costs, volatility sizing,
reward and position rule. Every learner trains in the same environment: ours in the
vectorized `TradingEnv` (TensorFlow), SB3's in its gymnasium twin `TradingGymEnv`
(same fills, costs and reward), over the same arrays; SB3 sees the features normalized
as ours do inside their networks. Every policy is scored by the same backtest
(`evaluate_policy`) on the same validation arrays.

Each learner gets the same wall budget per fold (`--budget` seconds, evaluation not
counted) and is scored after every chunk of training: ours the nightly's ensemble
(`training.ensemble` seeds, each given an equal share of the budget, trained one after
the other as the train DAG does, scored as the averaged ensemble after every chunk of
each member), SB3 PPO and A2C with their default hyperparameters (PPO one env, A2C 16
envs, as in `train_throughput`) and one torch thread. A learner's curve at time t is
the median over folds of each fold's latest score at or before t.

Printed: a reference (a policy always long, sized alike: in a rising market an
untrained policy scores about as well, so a learner's early best can be luck); each
curve's end points (best median score and when first reached, the score at the end of
the budget); then the same score for all: the lowest of the three bests with the time
each first reached it, and the lowest of the three final scores with the time from
which each held it to the end (reached for good, not by one lucky evaluation), and
the ratios of those times against each SB3 learner. SB3 needs `make bench-deps`.

    python -m bench.time_to_quality [--budget 120] [--folds N] [--quick] [--out F.json]
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Floors
from pipeline.arguments import Parser, positive_float, positive_int
from pipeline.settings import Market, Settings, load_settings

MARKET = Market.model_validate("binance:BTC/USDT:1h")
RECORDING = "binance_BTC-USDT_1h.csv.gz"
SB3_A2C_ENVS = 16
OUR_CHUNKS = 8  # scores per member within its share of the budget, at least
Curve = list[tuple[float, float]]  # (seconds of training, score)


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold, prepared as the nightly prepares it."""

    request: Any  # TrainRequest
    prepared: Any  # Prepared


class BudgetSpent(Exception):
    """Raised from a chunk callback to end a run whose share of the budget is spent."""


def recorded_folds(settings: Settings, data_dir: Path, folds: int) -> list[Fold]:
    """The nightly's folds ending at the recording's last candle."""
    from pipeline.exchanges.simulator.recordings import read_recording
    from pipeline.learn.features import Candles, FeatureSpec, fill_gaps
    from pipeline.learn.prepare import prepare
    from pipeline.learn.snapshot import Snapshot
    from pipeline.learn.train_request import TrainRequest
    from pipeline.learn.windows import walk_forward_folds

    recording = read_recording(data_dir / RECORDING)
    ts, text = recording.ts, recording.text
    last = np.append(ts[1:] != ts[:-1], True)  # sorted stably: the last recorded row wins
    rows = np.column_stack([ts[last], text[last].astype(np.float64)])
    tf = MARKET.timeframe_ms
    candles, _ = fill_gaps(Candles.from_rows(rows), tf)
    t = settings.training
    end = int(candles.ts[-1]) + tf
    made = []
    for train, valid in walk_forward_folds(end, folds, t.train_days, t.valid_days, tf):
        request = TrainRequest.from_settings(settings, "a2c", MARKET, train, valid)
        snapshot = Snapshot(MARKET, train, valid, candles, np.zeros(len(candles), bool))
        spec = FeatureSpec(features=request.features)
        prepared = prepare(snapshot, spec, request.decision_every, request.sizing)
        made.append(Fold(request, prepared))
    return made


def fold_score(fold: Fold, policy: Callable[[np.ndarray], np.ndarray]) -> float:
    """The fold's Sharpe ratio of `policy` (observations -> scores) on its validation window."""
    from pipeline.learn.evaluate import CostModel, evaluate_policy

    r, p = fold.request, fold.prepared
    step_ms = r.market.timeframe_ms * r.decision_every
    cost = CostModel.per_step(r.fee_bps, r.slippage_bps, r.borrow_bps_per_hour, step_ms)
    backtests = evaluate_policy(
        policy, p.valid_features, p.valid_ts, p.valid_open, p.valid_close, r.action_map,
        step_ms, cost, scale=p.valid_scale, rule=r.position_rule,
    )  # fmt: skip
    return float(backtests["policy"].metrics["sharpe"])


def ours(fold: Fold, budget: float) -> Curve:
    """The nightly's A2C ensemble within `budget` seconds: each member an equal share, a
    snapshot of its policy after every chunk; the ensemble scored at every chunk index."""
    from pipeline.learn.rl.env import TradingEnv
    from pipeline.learn.rl.networks import ensemble_of
    from pipeline.learn.training import env_config, member_configs

    r = fold.request
    env = TradingEnv(fold.prepared.train, env_config(r))
    share = budget / len(r.member_seeds)
    members = [_member(config, env, fold.prepared.spec, share) for config in member_configs(r)]
    curve = []
    for c in range(min(len(taken) for taken in members)):
        ensemble = ensemble_of([taken[c][1] for taken in members], "logits")
        seconds = sum(taken[c][0] for taken in members)
        curve.append((seconds, fold_score(fold, _keras_policy(ensemble))))
    return curve


def _member(config: Any, env: Any, spec: Any, share: float) -> list[tuple[float, Any]]:
    """One A2C member trained until `share` seconds are spent: (seconds, policy copy)
    after every chunk (the copying not timed)."""
    import contextlib
    import tempfile

    import keras

    from pipeline.learn.rl.actor_critic import A2CAgent
    from pipeline.learn.rl.networks import policy_of
    from pipeline.learn.rl.runtime import train_agent, training_device

    chunk = max(env.num_envs * config.n_steps, config.total_steps // OUR_CHUNKS)
    config = dataclasses.replace(config, chunk_steps=chunk, total_steps=10**9)
    agent = A2CAgent(config, env, spec.mean, spec.std)
    taken: list[tuple[float, Any]] = []
    clock = {"started": time.perf_counter(), "spent": 0.0}

    def on_chunk(record: dict[str, float]) -> None:
        clock["spent"] += time.perf_counter() - clock["started"]
        model = policy_of(agent.model)
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        taken.append((clock["spent"], copy))
        if clock["spent"] >= share:
            raise BudgetSpent
        clock["started"] = time.perf_counter()

    with (
        tempfile.TemporaryDirectory(prefix="cb_bench_quality_") as run_dir,
        contextlib.suppress(BudgetSpent),
    ):
        train_agent(
            "a2c", config, env, agent, step=agent.learn, done=agent.updates,
            per_iteration=config.n_steps * env.num_envs, model=policy_of(agent.model),
            device=training_device(), run_dir=Path(run_dir), on_chunk=on_chunk,
        )  # fmt: skip
    return taken


def _keras_policy(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda obs: np.asarray(model(obs))


def sb3(algorithm: str, fold: Fold, budget: float, chunk: int = 4096) -> Curve:
    """SB3 `algorithm` (ppo or a2c, default hyperparameters) within `budget` seconds on
    the gymnasium twin, scored after every `chunk` env steps."""
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from examples.sb3_ppo import contract_normalization, contract_policy
    from pipeline.learn.rl.env import TradingGymEnv
    from pipeline.learn.training import env_config

    torch.set_num_threads(1)
    r, p = fold.request, fold.prepared
    mean, std = contract_normalization(p.spec)
    normalized = dataclasses.replace(p.train, features=(p.train.features - mean[:-1]) / std[:-1])
    config = dataclasses.replace(env_config(r), num_envs=1)
    envs = 1 if algorithm == "ppo" else SB3_A2C_ENVS
    vec = DummyVecEnv([lambda: TradingGymEnv(normalized, config) for _ in range(envs)])
    learner = (PPO if algorithm == "ppo" else A2C)("MlpPolicy", vec, seed=r.seed, device="cpu")
    curve: Curve = []
    spent = 0.0
    while spent < budget:
        started = time.perf_counter()
        learner.learn(total_timesteps=chunk, reset_num_timesteps=False)
        spent += time.perf_counter() - started
        wrapped = contract_policy(learner.policy, mean, std)

        def policy(obs: np.ndarray, wrapped: Any = wrapped) -> np.ndarray:
            with torch.no_grad():
                return wrapped(torch.as_tensor(obs)).numpy()

        curve.append((spent, fold_score(fold, policy)))
    return curve


def median_curve(per_fold: Sequence[Curve]) -> Curve:
    """At each time any fold was scored: the median over folds of each fold's latest
    score at or before it (a fold not yet scored counts as -inf)."""
    times = sorted({t for curve in per_fold for t, _ in curve})
    merged = []
    for moment in times:
        latest = [next((s for t, s in reversed(c) if t <= moment), -np.inf) for c in per_fold]
        merged.append((moment, float(np.median(latest))))
    return merged


def time_to_reach(curve: Curve, quality: float) -> float | None:
    """The first time the curve reaches `quality`, or None."""
    return next((t for t, score in curve if score >= quality), None)


def time_to_hold(curve: Curve, quality: float) -> float | None:
    """The first time after which the curve never falls below `quality` again, or None:
    reached for good, not by one lucky evaluation."""
    held = None
    for t, score in curve:
        if score < quality:
            held = None
        elif held is None:
            held = t
    return held


def end_points(curve: Curve) -> dict[str, float]:
    """Best score and when first reached, the last score and the budget used."""
    best_t, best = max(curve, key=lambda point: (point[1], -point[0]))
    return {"best": best, "best_at": best_t, "last": curve[-1][1], "spent": curve[-1][0]}


def always_long(fold: Fold) -> float:
    """The fold's score of a policy that is always long, sized like the learners: the
    bar a learned policy has to clear to have learned more than the market's drift."""
    long = int(np.argmax(fold.request.action_map))

    def policy(obs: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(obs), len(fold.request.action_map)), np.float32)
        scores[:, long] = 10.0
        return scores

    return fold_score(fold, policy)


def compare(
    settings: Settings, folds: Sequence[Fold], budget: float, say: Callable[[str], object] = print
) -> dict[str, Any]:
    """Every learner's median curve on `folds`, the quality all reached, the time each
    took to reach it (printed through `say` as it goes)."""
    t = settings.training
    learners: dict[str, Callable[[Fold], Curve]] = {
        "SB3 PPO": lambda fold: sb3("ppo", fold, budget),
        "SB3 A2C": lambda fold: sb3("a2c", fold, budget),
        f"our A2C x{t.ensemble}": lambda fold: ours(fold, budget),
    }
    hold = float(np.median([always_long(fold) for fold in folds]))
    say(f"  always long (sized alike): median fold Sharpe {hold:+.2f}")
    curves = {}
    for name, learn in learners.items():
        curves[name] = median_curve([learn(fold) for fold in folds])
        ends = end_points(curves[name])
        say(
            f"  {name:<12} best median fold Sharpe {ends['best']:+.2f} at {ends['best_at']:.0f} s,"
            f" last {ends['last']:+.2f} at {ends['spent']:.0f} s ({len(curves[name])} scores)"
        )
    best = min(end_points(curve)["best"] for curve in curves.values())
    final = min(curve[-1][1] for curve in curves.values())
    reached = {name: time_to_reach(curve, best) for name, curve in curves.items()}
    held = {name: time_to_hold(curve, final) for name, curve in curves.items()}
    say(
        f"the same walk-forward score: first reached {best:+.2f} (the lowest best), held "
        f"{final:+.2f} (the lowest score at the end of the budget) from:"
    )
    for name in curves:
        ratios = ", ".join(
            f"{held[name] / held[other]:.2f}x {other}'s"
            for other in ("SB3 PPO", "SB3 A2C")
            if other != name and held[name] and held[other]
        )
        say(
            f"  {name:<12} reached at {reached[name]:.1f} s, held from {held[name]:.1f} s"
            + (f" ({ratios})" if ratios else "")
        )
    return {
        "curves": curves,
        "first_reached": best,
        "held": final,
        "reached": reached,
        "held_from": held,
        "always_long": hold,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.time_to_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=positive_float, default=120.0, help="seconds per fold")
    parser.add_argument("--folds", type=positive_int, help="default: training.folds")
    parser.add_argument("--quick", action="store_true", help="2 folds of 30 s: a smoke run")
    parser.add_argument("--out", type=Path, help="write the curves and figures as JSON here")
    args = parser.parse_args(argv)
    from bench.train_throughput import INSTALL_HINT, sb3_available
    from pipeline.settings import default_data_dir

    if sb3_available() is None:
        raise SystemExit(f"time_to_quality compares against SB3: {INSTALL_HINT}")
    settings = load_settings()
    data_dir = default_data_dir()
    if data_dir is None:
        raise SystemExit("recorded market data not found at ../shared/data (CRYPTOBOTS_DATA_DIR)")
    folds_n = 2 if args.quick else (args.folds or settings.training.folds)
    budget = 30.0 if args.quick else args.budget
    t = settings.training
    print(
        f"time to quality: {MARKET}, {folds_n} folds of {t.valid_days} days after "
        f"{t.train_days} training days, a decision every {t.decision_every} candles, "
        f"{budget:.0f} s of training per fold and learner"
    )
    result = compare(settings, recorded_folds(settings, data_dir, folds_n), budget)
    floors = Floors()
    printed = None not in [*result["reached"].values(), *result["held_from"].values()]
    print(f"floor: time to quality printed for all three: {floors.check('printed', printed)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"curves: {args.out}")
    floors.exit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

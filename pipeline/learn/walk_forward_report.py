"""The honest report: the nightly procedure replayed over past folds, beside the old one.

`python -m pipeline train --walk-forward N --seeds 0,1,2,3,4` asks: had the nightly
`train` DAG run at the start of each of the last N validation windows, with each
master seed, what would its champion have earned in the window that followed? Each
outer fold's champion is chosen only from what was known at its start:

- new procedure (today's `train` DAG): per algorithm an ensemble of
  `training.ensemble` seeds, scored on the `training.folds` folds before the outer
  fold; the algorithm with the best median fold Sharpe wins and its newest fold's
  model trades the outer fold;
- old procedure (before issue 15): one seed per algorithm, trained before the
  previous window and chosen by its Sharpe on that one window;
- baselines on the same candles and costs (`rule_baselines`): buy-and-hold, flat, 24h
  and 168h momentum, sized by the volatility target too.

Per seed it prints every outer fold, then chains the folds into one out-of-sample
equity curve (Sharpe, drawdown, worst fold, PSR and DSR), and across seeds how far
apart their fold returns lie. Every figure comes from ONNX files run by ONNX
Runtime on stored candles; nothing is hand-entered.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from pipeline.learn.evaluate import (
    Backtest,
    CostModel,
    VolatilityTarget,
    compute_metrics,
)
from pipeline.learn.evidence import confidence
from pipeline.learn.features import FeatureSpec
from pipeline.learn.onnx_evaluation import backtest_onnx, evaluate_run
from pipeline.learn.rule_baselines import baselines
from pipeline.learn.run_files import local_copy
from pipeline.learn.snapshot import earliest_training_start, snapshot_window
from pipeline.learn.tables import text_table
from pipeline.learn.train_request import TrainRequest
from pipeline.learn.training import train_candidate
from pipeline.learn.training_runs import get_run, ms_of
from pipeline.learn.walk_forward import select
from pipeline.learn.windows import Window, walk_forward_folds
from pipeline.settings import Market, Settings
from pipeline.timeutil import YEAR_MS

STABLE_POINTS = 0.10


@dataclass(frozen=True)
class FoldOutcome:
    """What one procedure's champion did in one outer fold."""

    window: Window
    algorithm: str
    backtest: Backtest


def _trained(
    settings: Settings,
    engine: Engine,
    market: Market,
    algorithm: str,
    train: Window,
    valid: Window,
    seed: int,
    ensemble: int,
    changes: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    spec = FeatureSpec(features=settings.training.features)
    snapshot = snapshot_window(settings, engine, market, train, valid, spec)
    request = TrainRequest.from_settings(
        settings, algorithm, market, train, valid, **{**changes, "seed": seed, "ensemble": ensemble}
    )
    run_id = train_candidate(
        settings, engine, request, snapshot, progress=progress, register_version=False
    )
    evaluate_run(settings, engine, run_id)
    _release_models()
    return get_run(engine, run_id)


def _release_models() -> None:
    """Free what TensorFlow keeps of finished runs: hundreds of runs in one process
    otherwise run out of memory (seen: LLVM "Cannot allocate memory" after about 200)."""
    import gc

    import keras

    keras.backend.clear_session(free_memory=True)
    gc.collect()


def _next_window(
    settings: Settings, engine: Engine, market: Market, run: dict[str, Any], window: Window
) -> Backtest:
    t = settings.training
    every = int(run["params"].get("decision_every", 1))
    return backtest_onnx(
        engine,
        local_copy(settings, run["artifacts"]["onnx"], "onnx"),
        market,
        window,
        tuple(run["feature_spec"]["features"]),
        tuple(run["action_map"]),
        every,
        CostModel.per_step(
            t.fee_bps, t.slippage_bps, t.borrow_bps_per_hour, market.timeframe_ms * every
        ),
        what=f"training run {run['id']}",
        sizing=VolatilityTarget.from_dict(run["params"].get("sizing")),
        rule=run["params"].get("position_rule", "argmax"),
    )["policy"]


def _fold(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "valid": [ms_of(run["valid_start"]), ms_of(run["valid_end"])],
        "series": run["metrics"]["series"],
    }


def replay_seed(
    settings: Settings,
    engine: Engine,
    market: Market,
    windows: Sequence[tuple[Window, Window]],
    outer: int,
    seed: int,
    algorithms: Sequence[str],
    changes: Mapping[str, Any],
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, list[FoldOutcome]]:
    """Both procedures over the last `outer` of `windows` for one master seed."""
    t = settings.training
    inner = len(windows) - outer
    step_ms = market.timeframe_ms * int(changes.get("decision_every", t.decision_every))
    new_runs: dict[int, dict[str, dict[str, Any]]] = {}
    old_runs: dict[int, dict[str, dict[str, Any]]] = {}
    for k, (train, valid) in enumerate(windows[:-1]):
        say(f"seed {seed}: window {k + 1}/{len(windows) - 1} {valid}")
        new_runs[k] = {
            a: _trained(
                settings, engine, market, a, train, valid, seed, t.ensemble, changes, progress
            )
            for a in algorithms
        }
        if k >= inner - 1:
            old_runs[k] = {
                a: _trained(settings, engine, market, a, train, valid, seed, 1, changes, progress)
                for a in algorithms
            }
    outcomes: dict[str, list[FoldOutcome]] = {"new": [], "old": []}
    for j in range(inner, len(windows)):
        window = windows[j][1]
        history = {a: [_fold(new_runs[k][a]) for k in range(j - inner, j)] for a in algorithms}
        best = select(history, step_ms)["best"]
        outcomes["new"].append(
            FoldOutcome(
                window, best, _next_window(settings, engine, market, new_runs[j - 1][best], window)
            )
        )
        old = max(algorithms, key=lambda a: old_runs[j - 1][a]["metrics"]["sharpe"])
        outcomes["old"].append(
            FoldOutcome(
                window, old, _next_window(settings, engine, market, old_runs[j - 1][old], window)
            )
        )
    return outcomes


def chained(backtests: Sequence[Backtest], step_ms: int, n_trials: int = 1) -> dict[str, Any]:
    """One out-of-sample equity curve of consecutive folds: metrics, worst fold, PSR/DSR."""
    returns = np.concatenate([b.returns for b in backtests])
    positions = np.concatenate([b.positions for b in backtests])
    metrics = compute_metrics(returns, positions, step_ms)
    sure = confidence(returns, YEAR_MS / step_ms, n_trials=n_trials)
    return {
        **metrics,
        "worst_fold_return": float(min(b.metrics["total_return"] for b in backtests)),
        "psr": sure.psr,
        "dsr": sure.dsr,
        "sharpe_low": sure.sharpe_low,
        "sharpe_high": sure.sharpe_high,
    }


def stable_folds(returns_by_seed: Sequence[Sequence[float]], points: float = STABLE_POINTS) -> int:
    """Folds in which every seed's return lies within `points` of the others'."""
    table = np.asarray(returns_by_seed, dtype=np.float64)
    return int(np.sum(table.max(axis=0) - table.min(axis=0) <= points))


def _replay_in_own_process(
    settings: Settings,
    db_url: str,
    market: Market,
    windows: Sequence[tuple[Window, Window]],
    outer: int,
    seed: int,
    algorithms: Sequence[str],
    changes: Mapping[str, Any],
    progress: bool,
) -> dict[str, list[FoldOutcome]]:
    """`replay_seed` in a fresh process that exits afterwards: TensorFlow gives back only
    part of each run's memory, and five seeds of ~100 trainings each in one process run
    out of it."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(
            _replay_seed_job,
            settings,
            db_url,
            market,
            list(windows),
            outer,
            seed,
            list(algorithms),
            dict(changes),
            progress,
        ).result()


def _replay_seed_job(
    settings: Settings,
    db_url: str,
    market: Market,
    windows: list[tuple[Window, Window]],
    outer: int,
    seed: int,
    algorithms: list[str],
    changes: dict[str, Any],
    progress: bool,
) -> dict[str, list[FoldOutcome]]:
    from pipeline.db.engine import create_engine

    engine = create_engine(db_url)
    try:
        return replay_seed(
            settings, engine, market, windows, outer, seed, algorithms, changes, progress
        )
    finally:
        engine.dispose()


def report(
    settings: Settings,
    engine: Engine,
    market: Market,
    end_ms: int,
    outer: int,
    seeds: Sequence[int],
    algorithms: Sequence[str],
    changes: Mapping[str, Any] | None = None,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay both procedures for every seed; print and return the comparison.

    `changes` override `training` settings of every run (steps, num_envs, ...)."""
    t = settings.training
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    every = int(changes.get("decision_every", t.decision_every))
    spec = FeatureSpec(features=t.features)
    windows = walk_forward_folds(
        end_ms,
        outer + t.folds,
        t.train_days,
        t.valid_days,
        market.timeframe_ms,
        earliest_training_start(engine, market, spec),
    )
    step_ms = market.timeframe_ms * every
    outer_windows = [valid for _, valid in windows[t.folds :]]
    base = baselines(settings, engine, market, outer_windows, every)
    if len(seeds) == 1:
        per_seed = {
            seeds[0]: replay_seed(
                settings,
                engine,
                market,
                windows,
                outer,
                seeds[0],
                algorithms,
                changes,
                progress,
                say,
            )
        }
    else:
        url = engine.url.render_as_string(hide_password=False)
        per_seed = {
            seed: _replay_in_own_process(
                settings, url, market, windows, outer, seed, algorithms, changes, progress
            )
            for seed in seeds
        }
    lines = []
    for seed, outcomes in per_seed.items():
        rows = []
        for i, window in enumerate(outer_windows):
            new, old = outcomes["new"][i], outcomes["old"][i]
            rows.append(
                [
                    str(window),
                    f"{new.algorithm} {new.backtest.metrics['total_return']:+.1%}",
                    f"{new.backtest.metrics['max_drawdown']:.1%}",
                    f"{old.algorithm} {old.backtest.metrics['total_return']:+.1%}",
                    f"{old.backtest.metrics['max_drawdown']:.1%}",
                    *(f"{base[n][i].metrics['total_return']:+.1%}" for n in base if n != "flat"),
                ]
            )
        header = ["fold", "new", "new dd", "old", "old dd", *(n for n in base if n != "flat")]
        lines.append(f"\nseed {seed}: each fold traded by the champion chosen before it")
        lines.append(text_table(header, rows))
    summary: dict[str, Any] = {"seeds": {}, "baselines": {}}
    table = []
    for seed, outcomes in per_seed.items():
        for procedure in ("new", "old"):
            figures = chained(
                [o.backtest for o in outcomes[procedure]], step_ms, n_trials=len(algorithms)
            )
            summary["seeds"].setdefault(seed, {})[procedure] = figures
            table.append(_summary_row(f"{procedure} seed {seed}", figures))
    for name, tests in base.items():
        if name == "flat":
            continue
        figures = chained(tests, step_ms)
        summary["baselines"][name] = figures
        table.append(_summary_row(name, figures))
    lines.append("\nchained out-of-sample folds (costs included)")
    lines.append(
        text_table(
            ["procedure", "sharpe", "90% interval", "max dd", "worst fold", "return", "psr", "dsr"],
            table,
        )
    )
    for procedure in ("new", "old"):
        returns = [
            [o.backtest.metrics["total_return"] for o in per_seed[s][procedure]] for s in seeds
        ]
        summary[f"{procedure}_stable_folds"] = stable_folds(returns) if len(seeds) > 1 else None
        if len(seeds) > 1:
            lines.append(
                f"{procedure}: seeds' fold returns within {STABLE_POINTS:.0%} points in "
                f"{summary[f'{procedure}_stable_folds']} of {outer} folds"
            )
    text = "\n".join(lines)
    say(text)
    summary["text"] = text
    return summary


def _summary_row(name: str, f: dict[str, Any]) -> list[str]:
    return [
        name,
        f"{f['sharpe']:.2f}",
        f"{f['sharpe_low']:.2f}..{f['sharpe_high']:.2f}",
        f"{f['max_drawdown']:.1%}",
        f"{f['worst_fold_return']:+.1%}",
        f"{f['total_return']:+.0%}",
        f"{f['psr']:.2f}",
        f"{f['dsr']:.2f}",
    ]

"""The nightly `train` DAG's tasks (snapshot the folds, plan the jobs, train one agent,
evaluate it, select the best per market by walk-forward score, optionally promote) and
`python -m pipeline train` (one fold, or the walk-forward report)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import Market, Settings

PLANNED_PARAMS = ("decision_every", "episode_length", "seed", "ensemble", "shorting")


def snapshot(
    settings: Settings,
    markets: Sequence[str],
    end_ms: int,
    train_days: int,
    valid_days: int,
    folds: int = 1,
) -> list[dict[str, Any]]:
    """Snapshot each market's walk-forward folds ending at `end_ms` (the newest fold's
    model is the candidate, the older ones are its evidence) into the artifact store."""
    from pipeline.db.engine import opened
    from pipeline.learn.features import FeatureSpec
    from pipeline.learn.snapshot import earliest_training_start, snapshot_window
    from pipeline.learn.windows import walk_forward_folds
    from pipeline.models.registry import store_artifact
    from pipeline.settings import Market

    spec = FeatureSpec(features=settings.training.features)
    snapshots = []
    with opened(settings.db_url) as engine:
        for market in markets:
            parsed = Market.model_validate(market)
            windows = walk_forward_folds(
                end_ms,
                folds,
                train_days,
                valid_days,
                parsed.timeframe_ms,
                earliest_training_start(engine, parsed, spec) if folds > 1 else None,
            )
            for fold, (train, valid) in enumerate(windows):
                path = snapshot_window(settings, engine, parsed, train, valid, spec)
                uri, _, _ = store_artifact(settings.artifact_root, path, "snapshots", ".npz")
                snapshots.append(
                    {
                        "market": str(parsed),
                        "snapshot": uri,
                        "train": [train.start, train.end],
                        "valid": [valid.start, valid.end],
                        "fold": fold,
                        "folds": folds,
                    }
                )
    return snapshots


def plan(snapshots: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> list[dict]:
    """One job per snapshot and algorithm, with the budget and environment of `params`
    (the DAG's: `algorithms`, `<algorithm>_steps` and PLANNED_PARAMS)."""
    return [
        {
            "snapshot": dict(snap),
            "algorithm": algorithm,
            "changes": {
                "steps": params[f"{algorithm}_steps"],
                **{name: params[name] for name in PLANNED_PARAMS},
            },
        }
        for snap in snapshots
        for algorithm in params["algorithms"]
    ]


def train_agent(
    settings: Settings, job: Mapping[str, Any], orchestrator_run: str | None = None
) -> str:
    """Train the job's algorithm on its snapshot; the training run's id. Only the newest
    fold's run registers a model version."""
    from pipeline.db.engine import opened
    from pipeline.learn.train_request import TrainRequest
    from pipeline.learn.training import train_candidate
    from pipeline.learn.windows import Window
    from pipeline.settings import Market

    snap = job["snapshot"]
    request = TrainRequest.from_settings(
        settings,
        job["algorithm"],
        Market.model_validate(snap["market"]),
        Window(*snap["train"]),
        Window(*snap["valid"]),
        **job["changes"],
    )
    with opened(settings.db_url) as engine:
        return train_candidate(
            settings,
            engine,
            request,
            snap["snapshot"],
            orchestrator_run=orchestrator_run,
            register_version=snap.get("fold", 0) == snap.get("folds", 1) - 1,
        )


def orchestrator_run(run_id: str, job: Mapping[str, Any]) -> str:
    """The name a training run keeps of the DAG run and job that made it."""
    snap = job["snapshot"]
    return f"{run_id}/{snap['market']}/{job['algorithm']}/fold-{snap['fold']}"


def evaluate(settings: Settings, run_id: str) -> dict[str, Any]:
    """Evaluate one run on its validation window: run id, policy and baseline Sharpe,
    total return, plot."""
    from pipeline.db.engine import opened
    from pipeline.learn.onnx_evaluation import evaluate_run

    with opened(settings.db_url) as engine:
        evaluation = evaluate_run(settings, engine, run_id)
    return {
        "run_id": run_id,
        "sharpe": evaluation.metrics["sharpe"],
        "total_return": evaluation.metrics["total_return"],
        "baseline_sharpe": {
            name: b.metrics["sharpe"]
            for name, b in evaluation.backtests.items()
            if name != "policy"
        },
        "plot": str(evaluation.plot),
    }


def select(settings: Settings, run_ids: Sequence[str]) -> dict[str, Any]:
    """The best algorithm per market by walk-forward score, its evidence stored on the
    candidate's model version (see `learn.selection.select_walk_forward`)."""
    from pipeline.db.engine import opened
    from pipeline.learn.selection import select_walk_forward

    with opened(settings.db_url) as engine:
        return select_walk_forward(engine, list(run_ids))


def auto_promote(
    settings: Settings, best: Mapping[str, Any], *, enabled: bool, who: str
) -> dict[str, Any]:
    """Gate and promote each market's chosen run when `enabled`; refusals are reported."""
    if not enabled:
        return {"promoted": False, "why": "auto_promote is off"}
    from pipeline.db.engine import opened
    from pipeline.models.promotion import promote_run

    with opened(settings.db_url) as engine:
        return {
            market: promote_run(settings, engine, chosen["run_id"], who=who)
            for market, chosen in best["markets"].items()
        }


def latest_end(engine: Any, market: Market) -> int:
    """The end of `market`'s newest stored candle; ConfigurationError naming the fix."""
    from pipeline.learn.snapshot import latest_candle_end

    end = latest_candle_end(engine, market)
    if end is None:
        raise ConfigurationError(
            f"no stored candles of {market}: backfill first (python -m pipeline backfill "
            f"--market {market} --start ... --end ...) or give --valid-end"
        )
    return end


def train_fold(
    settings: Settings,
    market: Market,
    algorithms: Sequence[str],
    changes: Mapping[str, Any],
    *,
    valid_end: int | None = None,
    train_start: int | None = None,
    train_end: int | None = None,
    valid_start: int | None = None,
    progress: bool = True,
    say: Callable[[str], object] = print,
) -> dict[str, Any]:
    """`python -m pipeline train`: train each algorithm on one training window, evaluate it
    on the validation window after it (default: the settings' days, ending at the newest
    candle), `say` each result as it comes; the runs and the best by validation Sharpe."""
    from pipeline.db.engine import opened
    from pipeline.learn.features import FeatureSpec
    from pipeline.learn.onnx_evaluation import evaluate_run
    from pipeline.learn.selection import select_best
    from pipeline.learn.snapshot import snapshot_window
    from pipeline.learn.train_request import TrainRequest
    from pipeline.learn.training import train_candidate
    from pipeline.learn.training_runs import get_run
    from pipeline.learn.windows import windows_before

    t = settings.training
    with opened(settings.db_url) as engine:
        train, valid = windows_before(
            valid_end or latest_end(engine, market),
            t.train_days,
            t.valid_days,
            market.timeframe_ms,
            train_start=train_start,
            train_end=train_end,
            valid_start=valid_start,
        )
        spec = FeatureSpec(features=t.features)
        snapshot = snapshot_window(settings, engine, market, train, valid, spec)
        say(f"\n{market}: training {train}, validation {valid}")
        runs = []
        for algorithm in algorithms:
            request = TrainRequest.from_settings(
                settings, algorithm, market, train, valid, **changes
            )
            run_id = train_candidate(settings, engine, request, snapshot, progress=progress)
            evaluation = evaluate_run(settings, engine, run_id)
            run = get_run(engine, run_id)
            say(
                f"\n{algorithm} run {run_id}: {run['env_steps']:,} steps, "
                f"{run['updates']:,} updates in {run['train_seconds']:.1f} s on {run['device']}"
            )
            say(evaluation.table())
            say(f"equity plot: {evaluation.plot}")
            runs.append({"algorithm": algorithm, "run_id": run_id, "plot": str(evaluation.plot)})
        best = select_best(engine, [r["run_id"] for r in runs])
    return {
        "market": str(market),
        "train": str(train),
        "valid": str(valid),
        "runs": runs,
        "best": best,
    }


def walk_forward(
    settings: Settings,
    market: Market,
    folds: int,
    seeds: Sequence[int],
    algorithms: Sequence[str],
    changes: Mapping[str, Any],
    *,
    valid_end: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`python -m pipeline train --walk-forward N`: the nightly procedure replayed over the
    N validation windows ending at `valid_end` (default: the newest candle), per seed,
    beside the old single-seed procedure and the baselines; printed and returned."""
    from pipeline.db.engine import opened
    from pipeline.learn.walk_forward_report import report

    with opened(settings.db_url) as engine:
        end = valid_end or latest_end(engine, market)
        end -= end % market.timeframe_ms
        return report(
            settings, engine, market, end, folds, seeds, algorithms, changes, progress=progress
        )

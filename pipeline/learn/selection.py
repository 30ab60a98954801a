"""Pick the run to ship: the best validation Sharpe of one window (`select_best`), or per
market the algorithm with the best walk-forward score, its evidence stored on the
candidate's model version (`select_walk_forward`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from pipeline.errors import DataValidationError
from pipeline.learn.evidence import drawdown_expectations
from pipeline.learn.training_runs import get_run, ms_of
from pipeline.models.registry import set_metrics
from pipeline.settings import Market


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

"""
# train

Nightly retraining of the trading agents on the candles stored by `market_data`.

For each market: **snapshot** the `folds` walk-forward folds ending at the run
date (or the `valid_end` param): consecutive validation windows of `valid_days`,
each with the training window right before it, into files so every algorithm sees
the same data -> **train** each algorithm on each fold (one mapped task per market,
fold and algorithm, routed to the `gpu` queue; `ensemble` seeds averaged into one
policy) -> **evaluate** each greedy policy on its fold beside buy-and-hold, flat and
momentum, with the same costs -> **select** per market the algorithm with the best
median fold Sharpe, with its evidence (chained out-of-sample Sharpe, worst fold,
probabilistic and deflated Sharpe ratios, bootstrap interval); the newest fold's
model is the candidate -> **auto_promote** it through the promotion gates when the
`auto_promote` param is on.

Every run is a row of `training_runs` (hyperparameters, data windows, feature
spec, device, metrics, artifacts). Edit the budget, windows, algorithms, markets
and seed in the trigger form. A retried train task resumes from its checkpoint.
Unpausing it schedules the next time its schedule fires, not a run for the last one.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from pipeline.settings import load_settings
from pipeline.settings.schedules import schedule_doc

SETTINGS = load_settings()
TRAINING = SETTINGS.training
MARKETS = [str(m) for m in (TRAINING.markets or SETTINGS.markets[:1])]


@dag(
    dag_id="train",
    schedule=CronTriggerTimetable(TRAINING.schedule, timezone=TRAINING.schedule_timezone),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "algorithms": Param(list(TRAINING.algorithms), type="array", description="dqn, a2c"),
        "markets": Param(MARKETS, type="array", description="exchange:BASE/QUOTE:timeframe"),
        "train_days": Param(TRAINING.train_days, type="integer", minimum=7),
        "valid_days": Param(TRAINING.valid_days, type="integer", minimum=2),
        "folds": Param(
            TRAINING.folds,
            type="integer",
            minimum=1,
            description="walk-forward folds of valid_days each; the newest is the candidate",
        ),
        "valid_end": Param(
            "",
            type="string",
            description="ISO date ending the validation window; empty = the run date",
        ),
        "dqn_steps": Param(TRAINING.dqn_steps, type="integer", minimum=1),
        "a2c_steps": Param(TRAINING.a2c_steps, type="integer", minimum=1),
        "decision_every": Param(
            TRAINING.decision_every,
            type="integer",
            minimum=1,
            description="candles between decisions",
        ),
        "episode_length": Param(
            TRAINING.episode_length, type="integer", minimum=2, description="decisions per episode"
        ),
        "seed": Param(TRAINING.seed, type="integer", minimum=0),
        "ensemble": Param(
            TRAINING.ensemble,
            type="integer",
            minimum=1,
            description="seeds trained per algorithm, exported as one averaged policy",
        ),
        "shorting": Param(TRAINING.shorting, type="boolean"),
        "auto_promote": Param(
            False, type="boolean", description="gate the best run and promote it if it passes"
        ),
    },
    tags=["cryptobots", "training"],
    doc_md=__doc__
    + schedule_doc(TRAINING.schedule, TRAINING.schedule_timezone, "training.schedule"),
)
def train() -> None:
    @task
    def snapshot(**context: object) -> list[dict]:
        from pipeline.tasks.train import snapshot

        params: dict = context["params"]  # type: ignore[assignment]
        if params["valid_end"]:
            end = pendulum.parse(params["valid_end"]).in_timezone("UTC")  # type: ignore[union-attr]
        else:
            # a run triggered without a logical date (the REST API's default) ends at its
            # run_after: when it was triggered
            end = context.get("logical_date") or context["dag_run"].run_after  # type: ignore[attr-defined]
        return snapshot(
            load_settings(),
            params["markets"],
            int(end.timestamp() * 1000),  # type: ignore[attr-defined]
            params["train_days"],
            params["valid_days"],
            params["folds"],
        )

    @task
    def plan(snapshots: list[dict], **context: object) -> list[dict]:
        from pipeline.tasks.train import plan

        return plan(snapshots, context["params"])  # type: ignore[arg-type]

    @task(queue="gpu", execution_timeout=timedelta(hours=6))
    def train_agent(job: dict, **context: object) -> str:
        from pipeline.tasks.train import orchestrator_run, train_agent

        return train_agent(load_settings(), job, orchestrator_run(str(context["run_id"]), job))

    @task
    def evaluate(training_run: str) -> dict:
        from pipeline.tasks.train import evaluate

        return evaluate(load_settings(), training_run)

    @task
    def select(evaluations: list[dict]) -> dict:
        from pipeline.tasks.train import select

        return select(load_settings(), [e["run_id"] for e in evaluations])

    @task
    def auto_promote(best: dict, **context: object) -> dict:
        from pipeline.tasks.train import auto_promote

        return auto_promote(
            load_settings(),
            best,
            enabled=context["params"]["auto_promote"],  # type: ignore[index]
            who=f"airflow:{context['run_id']}",
        )

    runs = train_agent.expand(job=plan(snapshot()))
    auto_promote(select(evaluate.expand(training_run=runs)))


dag_object = train()

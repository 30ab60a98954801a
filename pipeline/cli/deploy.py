"""`run` (the main job, `make run`) and `worker` (one more Celery worker on another host)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline import arguments as arg
from pipeline.settings import Settings


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`run`: the demo budgets, ports and executor of the bring-up (ops.launch.Options)."""
    launch = commands.add_parser(
        "run",
        help="the main job (make run): simulator, Airflow, backfill, first model, paper trader",
    )
    launch.add_argument(
        "--history-days",
        type=arg.positive_int,
        help="days backfilled (default: airflow.history_days, 150)",
    )
    launch.add_argument(
        "--train-days", type=arg.positive_int, default=60, help="demo training window"
    )
    launch.add_argument(
        "--valid-days", type=arg.positive_int, default=14, help="demo validation window"
    )
    launch.add_argument(
        "--folds",
        type=arg.positive_int,
        default=2,
        help="demo walk-forward folds of --valid-days each",
    )
    launch.add_argument(
        "--ensemble", type=arg.positive_int, default=2, help="demo seeds per algorithm"
    )
    launch.add_argument(
        "--dqn-steps", type=arg.positive_int, default=20_000, help="demo DQN budget"
    )
    launch.add_argument(
        "--a2c-steps", type=arg.positive_int, default=200_000, help="demo A2C budget"
    )
    launch.add_argument(
        "--algorithms",
        type=arg.choice_list(("dqn", "a2c")),
        default=("dqn", "a2c"),
        help="comma-separated agents to train (dqn, a2c)",
    )
    launch.add_argument(
        "--decision-every",
        type=arg.positive_int,
        default=1,
        help="candles between the demo model's decisions (1: the paper bot acts every hour)",
    )
    launch.add_argument(
        "--retrain", action="store_true", help="train and promote again though a champion exists"
    )
    launch.add_argument(
        "--simulator-speed",
        type=arg.positive_float,
        default=1.0,
        help="simulator clock speed (tests: 3600)",
    )
    launch.add_argument(
        "--executor",
        choices=("local", "celery"),
        help="Airflow's executor (default airflow.executor: local); celery needs "
        "airflow.metadata_db_url (Postgres) and a Redis at airflow.broker_url",
    )
    launch.add_argument("--airflow-port", type=arg.port, default=8080)
    launch.add_argument("--trader-port", type=arg.port, help="default: serving.port")
    launch.add_argument(
        "--status-every", type=arg.positive_float, default=60.0, help="seconds between status lines"
    )
    launch.set_defaults(handler=_run)


def add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`worker --api-url URL [--queue default|gpu]`."""
    worker = commands.add_parser(
        "worker",
        help="one more Celery worker, on another host, for a running celery deployment",
    )
    worker.add_argument("--queue", choices=("default", "gpu"), default="default")
    worker.add_argument(
        "--api-url",
        type=arg.http_url,
        required=True,
        help="the deployment's Airflow API server as this host reaches it, "
        "e.g. http://airflow-host:8080",
    )
    worker.add_argument(
        "--secrets",
        type=Path,
        help="a copy of the deployment's var/airflow/secrets.json "
        "(default: var_dir/airflow/secrets.json)",
    )
    worker.add_argument(
        "--concurrency",
        type=arg.positive_int,
        help="task slots (default: airflow.worker_concurrency, gpu_worker_concurrency for gpu)",
    )
    worker.set_defaults(handler=_worker)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ops.launch import Options, run

    options = Options(
        history_days=args.history_days or settings.airflow.history_days,
        train_days=args.train_days,
        valid_days=args.valid_days,
        folds=args.folds,
        ensemble=args.ensemble,
        dqn_steps=args.dqn_steps,
        a2c_steps=args.a2c_steps,
        algorithms=args.algorithms,
        decision_every=args.decision_every,
        retrain=args.retrain,
        simulator_speed=args.simulator_speed,
        airflow_port=args.airflow_port,
        trader_port=args.trader_port,
        status_every_seconds=args.status_every,
    )
    if args.executor:
        airflow = settings.airflow.model_copy(update={"executor": args.executor})
        settings = settings.model_copy(update={"airflow": airflow})
    return run(settings, options)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ops.deployment import remote_worker

    secrets_file = args.secrets or settings.var_dir / "airflow" / "secrets.json"
    process = remote_worker(settings, args.queue, args.api_url, secrets_file, args.concurrency)
    Path(process.env["CRYPTOBOTS_VAR_DIR"]).mkdir(parents=True, exist_ok=True)
    Path(process.env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    os.execve(process.argv[0], process.argv, process.env)

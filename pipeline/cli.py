"""`python -m pipeline ...`: the command line of the pipeline, usable without Airflow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import arguments as arg
from pipeline.errors import ConfigurationError, CryptobotsError
from pipeline.exchanges.simulator.faults import FAULT_KINDS
from pipeline.settings import Settings, load_settings
from pipeline.timeutil import iso


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return the exit code. Known errors print one line."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    import sqlalchemy.exc

    from pipeline.db.migrate import missing_table

    try:
        return int(args.handler(load_settings(), args) or 0)
    except CryptobotsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as error:
        table = missing_table(error)
        if table is None:
            raise
        print(
            f"error: the database has no table {table}: it is not migrated to this code's "
            "schema; run: python -m pipeline db upgrade",
            file=sys.stderr,
        )
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = arg.Parser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    db = commands.add_parser("db", help="database schema (Alembic)")
    db_commands = db.add_subparsers(title="db commands")
    upgrade = db_commands.add_parser("upgrade", help="migrate the database (no-op when current)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)
    current = db_commands.add_parser("current", help="print the database's schema revision")
    current.set_defaults(handler=_db_current)

    doctor = commands.add_parser("doctor", help="check packages, GPU, database, exchanges")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument(
        "--no-gpu-probe", action="store_true", help="skip importing TensorFlow (faster)"
    )
    doctor.set_defaults(handler=_doctor)

    sim = commands.add_parser("simulator", help="run the exchange simulator (Binance spot API)")
    sim.add_argument("--data", type=Path, help="recorded candles (default CRYPTOBOTS_DATA_DIR)")
    sim.add_argument("--exchange", default="binance", help="which files to serve, by prefix")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=arg.port, default=8900)
    sim.add_argument("--seed", type=arg.non_negative_int, default=0, help="seed of the fault draws")
    sim.add_argument("--shift-to-now", action="store_true", help="history ends now, then replays")
    sim.add_argument(
        "--history-end",
        type=arg.iso_time,
        help="with --shift-to-now: end history at this ISO time, not now, so that a restart "
        "serves the same candles at the same times",
    )
    sim.add_argument(
        "--speed", type=arg.positive_float, default=1.0, help="clock speed (2 = twice real time)"
    )
    sim.add_argument(
        "--weight-budget", type=arg.positive_int, default=6000, help="request weight per minute"
    )
    sim.add_argument("--fault-rate", type=arg.share, default=0.0, help="share of requests faulted")
    sim.add_argument(
        "--faults",
        type=arg.choice_list(FAULT_KINDS),
        default=FAULT_KINDS,
        help=f"comma-separated fault kinds to draw from (default all: {','.join(FAULT_KINDS)})",
    )
    sim.add_argument(
        "--fault-timeout",
        type=arg.positive_float,
        default=5.0,
        help="seconds a timeout fault stalls",
    )
    sim.add_argument(
        "--api-key",
        type=arg.key_secret,
        action="append",
        default=[],
        metavar="KEY:SECRET",
        help="an API key accepted on signed endpoints (repeatable)",
    )
    sim.add_argument("--state-file", type=Path, help="keep balances and orders across restarts")
    sim.add_argument(
        "--consistent-books",
        action="store_true",
        help="centre each cross market's book (ETH/BTC) on its two legs' mids (ETH/USDT, "
        "BTC/USDT), so triangles have no edge beyond the spreads",
    )
    sim.add_argument(
        "--plant",
        type=arg.plant,
        action="append",
        default=[],
        metavar="SYMBOL:BPS:SECONDS",
        help="plant a mispricing from the start, e.g. ETHBTC:40:600 (repeatable; at run "
        "time: POST /sim/plant)",
    )
    sim.add_argument(
        "--balance",
        type=arg.balance,
        action="append",
        default=[],
        metavar="ASSET=AMOUNT",
        help="starting balance of every account (repeatable; default USDT=10000)",
    )
    sim.set_defaults(handler=_simulator)

    fill = commands.add_parser("backfill", help="fetch, validate and store a market's history")
    fill.add_argument(
        "--market", type=arg.market, required=True, help="exchange:BASE/QUOTE:timeframe"
    )
    fill.add_argument(
        "--start", type=arg.iso_time, required=True, help="ISO date or datetime (UTC), inclusive"
    )
    fill.add_argument(
        "--end", type=arg.iso_time, required=True, help="ISO date or datetime (UTC), exclusive"
    )
    fill.set_defaults(handler=_backfill)

    train = commands.add_parser(
        "train", help="train agents on stored candles, print validation metrics vs baselines"
    )
    train.add_argument(
        "--algo",
        action="append",
        choices=("dqn", "a2c"),
        help="algorithm (repeatable; default: training.algorithms of the settings)",
    )
    train.add_argument(
        "--market", type=arg.market, help="exchange:BASE/QUOTE:timeframe (default: first market)"
    )
    train.add_argument("--train-start", type=arg.iso_time, help="ISO date (UTC), inclusive")
    train.add_argument("--train-end", type=arg.iso_time, help="ISO date (UTC), exclusive")
    train.add_argument(
        "--valid-start", type=arg.iso_time, help="ISO date (UTC), inclusive (default: --train-end)"
    )
    train.add_argument("--valid-end", type=arg.iso_time, help="ISO date (UTC), exclusive")
    train.add_argument(
        "--steps", type=arg.positive_int, help="environment steps (default per algorithm)"
    )
    train.add_argument(
        "--envs", type=arg.positive_int, help="parallel episodes (default per algorithm)"
    )
    train.add_argument("--episode-length", type=arg.positive_int, help="decisions per episode")
    train.add_argument(
        "--decision-every",
        type=arg.positive_int,
        help="candles between decisions (default 24: daily)",
    )
    train.add_argument(
        "--seed", type=arg.non_negative_int, help="seed of weights, exploration and episodes"
    )
    train.add_argument("--shorting", action="store_true", help="allow short positions")
    train.add_argument(
        "--ensemble",
        type=arg.positive_int,
        metavar="K",
        help="seeds per algorithm averaged into one policy (default training.ensemble)",
    )
    train.add_argument(
        "--walk-forward",
        type=arg.positive_int,
        metavar="N",
        help="replay the nightly procedure over the N validation windows ending at "
        "--valid-end (each champion chosen before its window), beside the old single-seed "
        "procedure and the baselines; prints per fold and chained",
    )
    train.add_argument(
        "--seeds",
        type=arg.int_list,
        help="with --walk-forward: comma-separated master seeds to replay (default --seed)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    models = commands.add_parser("models", help="the model registry: list, show, promote, rollback")
    models.add_argument(
        "--name", help="model name (default: the first market's, e.g. binance-btc-usdt-1h)"
    )
    model_commands = models.add_subparsers(title="models commands")
    listing = model_commands.add_parser("list", help="every version, newest first")
    listing.set_defaults(handler=_models_list)
    show_model = model_commands.add_parser("show", help="one version in full")
    show_model.add_argument("version", type=arg.positive_int)
    show_model.set_defaults(handler=_models_show)
    promote = model_commands.add_parser("promote", help="gate a version and make it champion")
    promote.add_argument("version", type=arg.positive_int)
    promote.add_argument("--force", action="store_true", help="override failed gates")
    promote.add_argument("--reason", help="why (required with --force)")
    promote.add_argument(
        "--end", type=arg.iso_time, help="end of the evaluation window (default: latest candle)"
    )
    promote.set_defaults(handler=_models_promote)
    back = model_commands.add_parser("rollback", help="champion back to the previous one")
    back.add_argument("--reason")
    back.set_defaults(handler=_models_rollback)

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

    arbitrage = commands.add_parser("arbitrage", help="arbitrage on recorded data")
    arbitrage_commands = arbitrage.add_subparsers(title="arbitrage commands")
    study = arbitrage_commands.add_parser(
        "study",
        help="triangle edges and cross-exchange spreads on stored candles: statistics, PNGs",
    )
    study.add_argument(
        "--days",
        type=arg.positive_int,
        help="days studied per group (default: arbitrage.study_days)",
    )
    study.add_argument(
        "--no-ingest",
        action="store_true",
        help="study what is stored; do not fill the windows from the recorded files first",
    )
    study.add_argument(
        "--threshold-bps",
        type=arg.non_negative_float,
        help="edge after fees that counts (default: arbitrage.study_threshold_bps)",
    )
    study.add_argument(
        "--out",
        type=Path,
        help="report folder (default: <var_dir>/reports/arbitrage/<UTC timestamp>/)",
    )
    study.set_defaults(handler=_arbitrage_study)
    scan = arbitrage_commands.add_parser(
        "scan",
        help="cross-exchange spreads on the venues' live books (report only: nothing is sent)",
    )
    scan.add_argument(
        "--min-spread-bps",
        type=arg.finite_float,
        help="net spread that counts (default: arbitrage.study_threshold_bps)",
    )
    scan.add_argument("--json", action="store_true", help="print JSON instead of text")
    scan.set_defaults(handler=_arbitrage_scan)

    pools = commands.add_parser("airflow-pools", help="create the pool of each exchange in Airflow")
    pools.set_defaults(handler=_airflow_pools)

    show = commands.add_parser("settings", help="print the effective settings (secrets masked)")
    show.set_defaults(handler=_settings)
    return parser


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.database import upgrade

    done = upgrade(settings, args.revision)
    state = (
        "already at"
        if done["before"] == done["after"]
        else f"migrated from {done['before'] or 'empty'} to"
    )
    print(f"database {done['database']}: {state} revision {done['after']}")
    return 0


def _db_current(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.database import current

    now = current(settings)
    print(f"database {now['database']}: revision {now['revision'] or 'none'} (head {now['head']})")
    return 0


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ops.doctor import as_dicts, healthy, render, run_checks

    checks = run_checks(settings, gpu=not args.no_gpu_probe)
    print(json.dumps(as_dicts(checks), indent=2) if args.json else render(checks))
    return 0 if healthy(checks) else 1


def _simulator(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.exchanges.simulator.app import SimulatorConfig, serve
    from pipeline.exchanges.simulator.market import Plant

    data = args.data or settings.data_dir
    if data is None:
        raise ConfigurationError("no market data: pass --data DIR or set CRYPTOBOTS_DATA_DIR")
    try:
        config = SimulatorConfig(
            data_dir=Path(data),
            exchange=args.exchange,
            seed=args.seed,
            shift_to_now=args.shift_to_now,
            history_end_ms=args.history_end,
            speed=args.speed,
            weight_budget=args.weight_budget,
            fault_rate=args.fault_rate,
            fault_kinds=tuple(args.faults),
            fault_timeout_seconds=args.fault_timeout,
            api_keys=tuple(args.api_key),
            state_file=args.state_file,
            consistent_books=args.consistent_books,
            plants=tuple(Plant(*spec) for spec in args.plant),
            initial_balances=tuple(args.balance) or (("USDT", 10_000.0),),
        )
        print(f"exchange simulator ({args.exchange}, {data}) on http://{args.host}:{args.port}")
        serve(config, args.host, args.port)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigurationError(f"simulator: {error}") from None
    return 0


def _backfill(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.exchanges.client import credentials_from_reference
    from pipeline.tasks.market_data import backfill_market

    market, start, end = args.market, args.start, args.end
    if end <= start:
        raise ConfigurationError(
            f"--end {iso(end)} is not after --start {iso(start)}: give an --end after --start"
        )
    exchange_config = settings.exchanges.get(market.exchange)
    if exchange_config is None:
        raise ConfigurationError(
            f"--market {market}: exchange {market.exchange!r} is not configured; "
            f"configured: {sorted(settings.exchanges)}"
        )
    credentials = credentials_from_reference(exchange_config.credentials, os.environ)
    total = len(range(start, end, market.timeframe_ms))
    with tqdm(total=total, unit="candle", desc=str(market)) as bar:
        result = backfill_market(
            settings, str(market), start, end, credentials=credentials, progress=bar.update
        )
    print(f"{result['line']}, {result['retries']} retries")
    return 0


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


def _arbitrage_study(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from pipeline.arbitrage.study_text import render_text
    from pipeline.tasks.arbitrage import study

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or settings.var_dir / "reports" / "arbitrage" / stamp
    report = study(
        settings, out, days=args.days, threshold_bps=args.threshold_bps, ingest=not args.no_ingest
    )
    print()
    print(render_text(report))
    print(f"\nreport: {out / 'report.txt'}, {out / 'report.json'}")
    return 0


def _arbitrage_scan(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.arbitrage.scan import render
    from pipeline.tasks.arbitrage import scan

    report = scan(settings, min_spread_bps=args.min_spread_bps)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _airflow_pools(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ops.airflow_setup import ensure_pools

    slots = settings.airflow.exchange_pool_slots
    for name in ensure_pools(settings):
        print(f"airflow pool {name}: {slots} slots")
    return 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.train import train_fold, walk_forward

    if args.seeds and not args.walk_forward:
        raise ConfigurationError(
            "--seeds replays several seeds of --walk-forward N: add --walk-forward, or train "
            "one seed with --seed"
        )
    market = args.market or settings.markets[0]
    algorithms = args.algo or list(settings.training.algorithms)
    changes = {
        "steps": args.steps,
        "num_envs": args.envs,
        "episode_length": args.episode_length,
        "decision_every": args.decision_every,
        "shorting": args.shorting or None,
    }
    if args.walk_forward:
        seeds = args.seeds or [args.seed if args.seed is not None else settings.training.seed]
        walk_forward(
            settings,
            market,
            args.walk_forward,
            seeds,
            algorithms,
            changes,
            valid_end=args.valid_end,
            progress=not args.quiet,
        )
        return 0
    changes |= {"seed": args.seed, "ensemble": args.ensemble}
    result = train_fold(
        settings,
        market,
        algorithms,
        changes,
        valid_end=args.valid_end,
        train_start=args.train_start,
        train_end=args.train_end,
        valid_start=args.valid_start,
        progress=not args.quiet,
    )
    best = result["best"]
    verdict = "beats" if best["beats_baselines"] else "does NOT beat"
    print(
        f"\nbest by validation Sharpe: {best['run_id']} ({best['algorithm']}, "
        f"Sharpe {best['sharpe']:.2f}; {verdict} every baseline)"
    )
    return 0


def _model_name(settings: Settings, args: argparse.Namespace) -> str:
    from pipeline.models.registry import model_name

    return args.name or model_name(str(settings.markets[0]))


def _who() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "cli"


def _models_list(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.learn.tables import text_table
    from pipeline.tasks.promote import versions

    rows = []
    for v in versions(settings, args.name):
        validation = (v["metrics"] or {}).get("validation", {})
        rows.append(
            [
                v["name"],
                str(v["version"]),
                v["algorithm"],
                v["status"],
                ",".join(v["aliases"]) or "-",
                f"{validation['sharpe']:.2f}" if "sharpe" in validation else "-",
                f"{validation['max_drawdown']:.1%}" if "max_drawdown" in validation else "-",
                v["training_run"] or "-",
                f"{v['created_at']:%Y-%m-%d %H:%M}",
            ]
        )
    header = [
        "name",
        "version",
        "algo",
        "status",
        "aliases",
        "val sharpe",
        "val dd",
        "run",
        "created",
    ]
    print(text_table(header, rows) if rows else "no model versions registered yet")
    return 0


def _models_show(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.promote import version

    row = version(settings, _model_name(settings, args), args.version)
    print(json.dumps(row, indent=2, default=str))
    return 0


def _models_promote(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.promote import promote_version

    name = _model_name(settings, args)
    event = promote_version(
        settings,
        name,
        args.version,
        who=_who(),
        reason=args.reason,
        force=args.force,
        end_ms=args.end,
    )
    forced = " (FORCED)" if event["forced"] else ""
    print(f"{name}: champion v{event['from_version'] or '-'} -> v{event['to_version']}{forced}")
    for check, result in event["gates"]["checks"].items():
        print(f"  {check:<20} {'pass' if result['passed'] else 'FAIL'}  {result}")
    return 0


def _models_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.promote import rollback

    name = _model_name(settings, args)
    event = rollback(settings, name, who=_who(), reason=args.reason)
    print(f"{name}: champion v{event['from_version']} -> v{event['to_version']} (rollback)")
    return 0


def _settings(settings: Settings, args: argparse.Namespace) -> int:
    shown = settings.model_dump(mode="json")
    shown["db_url"] = settings.masked_db_url
    print(json.dumps(shown, indent=2))
    return 0

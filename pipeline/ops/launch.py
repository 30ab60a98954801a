"""`make run`: the whole product on one machine, on the embedded defaults.

Migrates the database, starts the exchange simulator on the recorded data (history
shifted to end when the first run started, so that a later run serves the same
candles at the same times), starts `airflow standalone` over `dags/` and `plugins/`
(metadata in SQLite under `var/airflow`), unpauses the DAGs, backfills the markets'
history through the `backfill_history` DAG, trains a first model with a demo budget
through the `train` DAG and promotes it through the `promote` DAG (both skipped when
a champion exists, unless asked), then starts the paper trader. Ctrl-C (or SIGTERM)
stops every process it started. Everything it writes stays under `var/`.

Its children (each in a session of its own, output in `var/logs/<name>.log`) are
supervised by `children`, Airflow is driven through `airflow_api`, the state kept across
runs is `run_state`, and the console lines come from `console`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import httpx

from pipeline.errors import ConfigurationError, CryptobotsError
from pipeline.models.registry import model_name
from pipeline.ops.airflow_api import AirflowAPI, admin_password
from pipeline.ops.children import Children, wait_until
from pipeline.ops.console import say, status_line, trader_books
from pipeline.ops.deployment import (
    ADMIN,
    airflow_bin,
    airflow_env,
    check_celery,
    metadata_url,
    processes,
)
from pipeline.ops.run_state import load_state, save_state
from pipeline.settings import PROJECT_ROOT, Settings, mask_url

DAGS = ("market_data", "backfill_history", "train", "promote", "register_model")


class Stopped(Exception):
    """Ctrl-C or SIGTERM: stop everything, cleanly."""


@dataclass(frozen=True)
class Options:
    """What `python -m pipeline run` was asked for (see its --help)."""

    history_days: int = 150
    train_days: int = 60
    valid_days: int = 14
    folds: int = 2
    ensemble: int = 2
    dqn_steps: int = 20_000
    a2c_steps: int = 200_000
    algorithms: tuple[str, ...] = ("dqn", "a2c")
    decision_every: int | None = 1
    retrain: bool = False
    simulator_speed: float = 1.0
    airflow_port: int = 8080
    trader_port: int | None = None
    timeout_seconds: float = 1800.0
    status_every_seconds: float = 60.0


def simulator_port(settings: Settings) -> int | None:
    """The loopback port the first exchange's URL points at (the simulator's), or None
    when the first exchange is elsewhere (a real exchange: nothing to start)."""
    config = next(iter(settings.exchanges.values()))
    url = urlparse(config.url or "")
    if url.hostname in ("127.0.0.1", "localhost") and url.port:
        return url.port
    return None


def run(settings: Settings, options: Options) -> int:
    """The main job; returns the exit code (0 after Ctrl-C, 1 when something failed)."""

    def on_signal(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    # both set here: a shell starting us in the background leaves SIGINT ignored
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children = Children(settings.var_dir / "logs")
    try:
        bring_up(settings, options, children)
        watch(settings, options, children)
    except Stopped:
        say("stopping every process started here ...")
        return _stop(children, 0)
    except CryptobotsError as error:
        say(f"FAILED: {error}")
        return _stop(children, 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _stop(children, 0)


def _stop(children: Children, code: int) -> int:
    # a second Ctrl-C must not orphan anything
    ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        killed = children.stop()
    finally:
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
    if killed:
        say(f"stopped ({', '.join(killed)} had to be killed)")
    else:
        say("stopped cleanly")
    return code


def bring_up(settings: Settings, options: Options, children: Children) -> None:
    """Every step up to a trading paper bot, each announced as it starts."""
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade

    steps = 8
    check_history(settings, options)
    state_path = settings.var_dir / "run" / "state.json"
    state = load_state(state_path)
    env = airflow_env(settings, options.airflow_port)

    say(f"[1/{steps}] database {settings.masked_db_url}: migrating")
    engine = create_engine(settings.db_url)
    upgrade(engine)

    port = simulator_port(settings)
    if port is None:
        say(f"[2/{steps}] exchange: {next(iter(settings.exchanges))} is not local, no simulator")
    else:
        if settings.data_dir is None:
            raise ConfigurationError(
                "no recorded market data for the simulator: set CRYPTOBOTS_DATA_DIR to the "
                "folder holding the CSV files (default ../shared/data)"
            )
        state.setdefault("history_end", datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00+00:00"))
        save_state(state_path, state)
        say(
            f"[2/{steps}] exchange simulator on http://127.0.0.1:{port} "
            f"({settings.data_dir}, history ending {state['history_end']}, "
            f"speed {options.simulator_speed:g}x)"
        )
        argv = [
            sys.executable, "-m", "pipeline", "simulator", "--data", str(settings.data_dir),
            "--port", str(port), "--shift-to-now", "--history-end", state["history_end"],
            "--speed", str(options.simulator_speed),
        ]  # fmt: skip
        children.start("simulator", argv, env)
        ping = f"http://127.0.0.1:{port}/api/v3/ping"
        wait_until(lambda: _answers(ping), 120, "the simulator", children)

    base = f"http://127.0.0.1:{options.airflow_port}"
    start_airflow(settings, env, children, steps)
    api = AirflowAPI(base, ADMIN, "")
    wait_until(api.healthy, 600, "Airflow's API server and scheduler", children)
    api.password = admin_password(settings.var_dir / "airflow" / "passwords.json")
    pools = subprocess.run(
        [sys.executable, "-m", "pipeline", "airflow-pools"], env=env, cwd=PROJECT_ROOT,
        capture_output=True, text=True,
    )  # fmt: skip
    if pools.returncode:
        raise CryptobotsError(f"creating the exchange pools failed: {pools.stderr[-500:]}")
    say(f"  Airflow UI: {base}  (login {ADMIN} / {api.password})")

    say(f"[4/{steps}] waiting for the DAGs {', '.join(DAGS)}, then unpausing them")
    wait_until(lambda: set(DAGS) <= api.dag_ids(), 300, "the DAGs to be parsed", children)
    for dag_id in DAGS:
        api.unpause(dag_id)

    say(f"[5/{steps}] backfilling {options.history_days} days of history (backfill_history)")
    conf = {"days": options.history_days, "end": ""}
    _run_dag(api, "backfill_history", conf, options, children)
    say(f"  history stored: {_candle_counts(engine)}")

    name = model_name(str((settings.training.markets or settings.markets[:1])[0]))
    champion = _champion(engine, name)
    if champion is not None and not options.retrain:
        say(f"[6/{steps}] training skipped: {name} already has champion v{champion} (--retrain)")
        say(f"[7/{steps}] promotion skipped: the champion stays")
    else:
        conf = {
            "algorithms": list(options.algorithms),
            "train_days": options.train_days,
            "valid_days": options.valid_days,
            "folds": options.folds,
            "ensemble": options.ensemble,
            "dqn_steps": options.dqn_steps,
            "a2c_steps": options.a2c_steps,
        }
        if options.decision_every is not None:
            conf["decision_every"] = options.decision_every
        say(f"[6/{steps}] training a first model with a demo budget (train): {conf}")
        _run_dag(api, "train", conf, options, children)
        say(f"[7/{steps}] promoting the best candidate (promote)")
        reason = "make run: the first model" if champion is None else "make run --retrain"
        reason += " (a demo budget on paper: promoted even where the evidence gate refuses it)"
        conf = {"name": name, "version": 0, "force": True, "reason": reason}
        _run_dag(api, "promote", conf, options, children)
        champion = _champion(engine, name)
        if champion is None:
            raise CryptobotsError(f"promote finished but {name} has no champion")
        state["bootstrap"] = {"model": name, "version": champion}
        save_state(state_path, state)
    say(f"  champion: {name} v{champion}")

    trader_port = options.trader_port or settings.serving.port
    say(f"[8/{steps}] paper trader (python -m serving) on http://127.0.0.1:{trader_port}")
    trader_env = env | {"CRYPTOBOTS_SERVING__PORT": str(trader_port)}
    children.start(
        "trader", [sys.executable, "-m", "serving", "--port", str(trader_port)], trader_env
    )
    ready = f"http://127.0.0.1:{trader_port}/readyz"
    wait_until(lambda: _answers(ready), 300, "the trader to be ready", children)
    say(f"  health  http://127.0.0.1:{trader_port}/healthz   ready {ready}")
    say(f"  metrics http://127.0.0.1:{trader_port}/metrics")
    say(f"ready: Airflow {base} ({ADMIN} / {api.password}), trader {ready}; Ctrl-C stops all")


def start_airflow(
    settings: Settings, env: Mapping[str, str], children: Children, steps: int | None = None
) -> None:
    """Airflow's processes for `airflow.executor`; the Celery ones once the broker answers
    and the metadata database is migrated. `steps`: the main job's step count, for its
    "[3/8]" label (none outside it)."""
    metadata = mask_url(metadata_url(settings))
    step = f"[3/{steps}] " if steps else ""
    if settings.airflow.executor == "local":
        say(f"{step}Airflow standalone (metadata {metadata})")
    else:
        check_celery(settings)
        say(
            f"{step}Airflow with the CeleryExecutor (metadata {metadata}, broker "
            f"{mask_url(settings.airflow.broker_url)}): migrating its database"
        )
        migrate = subprocess.run(
            [airflow_bin(), "db", "migrate"], env=dict(env), cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if migrate.returncode:
            raise CryptobotsError(f"airflow db migrate failed: {migrate.stdout[-1500:]}")
    for process in processes(settings):
        children.start(process.name, process.argv, {**env, **process.env})
    if settings.airflow.executor == "celery":
        say(f"  started {', '.join(children.running)} (logs in {children.log_dir})")


LOOK_BACK_DAYS = 31  # the longest feature window (720 hourly candles) and a day to spare


def check_history(settings: Settings, options: Options) -> None:
    """Refuse, before starting anything, a history too short for training or promotion."""
    needs = {
        "training (--train-days + --folds x --valid-days)": options.train_days
        + options.folds * options.valid_days,
        "promotion (CRYPTOBOTS_PROMOTION__WINDOW_DAYS)": settings.promotion.window_days,
    }
    for what, days in needs.items():
        if options.history_days < days + LOOK_BACK_DAYS:
            raise ConfigurationError(
                f"--history-days {options.history_days} is too short for {what}: {days} days "
                f"plus {LOOK_BACK_DAYS} of feature look-back; pass --history-days "
                f"{days + LOOK_BACK_DAYS} or shorten the window"
            )


def watch(settings: Settings, options: Options, children: Children) -> None:
    """Until stopped: a status line now and then; a child that dies ends the run."""
    from pipeline.db.engine import create_engine

    port = options.trader_port or settings.serving.port
    engine = create_engine(settings.db_url)
    try:
        while True:
            deadline = time.monotonic() + options.status_every_seconds
            while time.monotonic() < deadline:
                children.check()
                time.sleep(1.0)
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
                say(status_line(status, trader_books(engine, str(status.get("account")))))
            except (httpx.HTTPError, ValueError) as error:
                say(f"trader: no answer ({error})")
    finally:
        engine.dispose()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _run_dag(
    api: AirflowAPI, dag_id: str, conf: dict[str, Any], options: Options, children: Children
) -> None:
    run_id = api.trigger(dag_id, conf)
    states: list[str] = []

    def done() -> bool:
        states.append(api.run_state(dag_id, run_id))
        return states[-1] in ("success", "failed")

    def progress() -> str:
        counts = api.task_states(dag_id, run_id)
        return f"{dag_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    wait_until(done, options.timeout_seconds, f"{dag_id} run {run_id}", children, progress)
    if states[-1] != "success":
        raise CryptobotsError(
            f"{dag_id} run {run_id} failed: open the Airflow UI (Dags > {dag_id} > the run) "
            "for the failed task's log"
        )
    say(f"  {dag_id} run {run_id}: success")


def _champion(engine: Any, name: str) -> int | None:
    from pipeline.models.registry import CHAMPION, alias

    found = alias(engine, name, CHAMPION)
    return None if found is None else int(found["version"])


def _candle_counts(engine: Any) -> str:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT exchange, symbol, timeframe, count(*) FROM ohlcv "
                "GROUP BY exchange, symbol, timeframe ORDER BY 1, 2, 3"
            )
        ).all()
    return ", ".join(f"{e}:{s}:{t} {n}" for e, s, t, n in rows) or "none"

"""Airflow 3's own backfill of market_data, run by a real scheduler (airflow standalone).

The same hours backfilled through Airflow against a faulty simulator end with
exactly the candles, quarantine and gaps of a direct, fault-free ingest; a second
backfill of the same hours changes nothing.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.data.ingest import ingest
from pipeline.ops.deployment import free_port
from pipeline.ops.preload import TASK_MODULES
from pipeline.settings import Market
from tests.support.exchange import exchange_client
from tests.support.paths import REPO

pytestmark = pytest.mark.postgres

BIN = Path(sys.executable).parent
# Airflow's --to-date is inclusive: runs for 05:00..07:00 ingest the hours [05:00, 08:00),
# the last hours of the recorded duplicates (rounded and full-precision copies).
START, END = "2020-11-20T05:00", "2020-11-20T07:00"
RUNS = 3
HOUR = 3_600_000
MARKETS = ("binance:BTC/USDT:1h", "binance:ETH/USDT:1h", "binance:ETH/BTC:1h")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def window(engine: Engine) -> dict[str, list[tuple]]:
    """The market-data tables inside the backfilled window, without bookkeeping columns."""
    a, b = ms(START), ms(END) + HOUR
    queries = {
        "ohlcv": "SELECT exchange, symbol, timeframe, ts, open, high, low, close, volume "
        f"FROM ohlcv WHERE ts >= {a} AND ts < {b} ORDER BY 1, 2, 3, 4",
        "quarantine": "SELECT exchange, symbol, timeframe, ts, raw, reason FROM ohlcv_quarantine "
        f"WHERE ts >= {a} AND ts < {b} ORDER BY 1, 2, 3, 4, 5, 6",
        "gaps": "SELECT exchange, symbol, timeframe, start_ts, end_ts, missing FROM ohlcv_gaps "
        f"WHERE start_ts >= {a} AND start_ts < {b} ORDER BY 1, 2, 3, 4",
    }
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(q))] for name, q in queries.items()}


@pytest.fixture(scope="module")
def faulty_exchange(data_dir: Path) -> Iterator[str]:
    from pipeline.exchanges.simulator.app import SimulatorConfig, running

    config = SimulatorConfig(data_dir=data_dir, fault_rate=0.2, seed=13, fault_timeout_seconds=1.5)
    with running(config) as sim:
        yield sim.url


@pytest.fixture(scope="module")
def airflow(
    tmp_path_factory: pytest.TempPathFactory, pg_server: Engine, faulty_exchange: str
) -> Iterator[tuple[dict[str, str], Engine]]:
    """`airflow standalone` (scheduler, API server, DAG processor) on this repo's DAGs."""
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade
    from tests.support.postgres import PG_SERVER_URL

    name = f"cb_airflow_{os.getpid()}"
    metadata = f"{name}_meta"  # Airflow's own metadata on Postgres: SQLite locks under a scheduler
    with pg_server.connect() as conn:
        for database in (name, metadata):
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    server = sa.make_url(PG_SERVER_URL)
    db_url = server.set(database=name).render_as_string(hide_password=False)
    metadata_url = server.set(database=metadata).render_as_string(hide_password=False)
    engine = create_engine(db_url)
    upgrade(engine)
    home = tmp_path_factory.mktemp("airflow-standalone")
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRYPTOBOTS_"))}
    env |= {
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO / "plugins"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "CRYPTOBOTS_DB_URL": db_url,
        "CRYPTOBOTS_EXCHANGES__BINANCE__URL": faulty_exchange,
        "CRYPTOBOTS_MARKETS": ",".join(MARKETS),
        "CRYPTOBOTS_VAR_DIR": str(home / "var"),
    }
    log = (home / "standalone.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "airflow"), "standalone"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: dag_parsed(env), 240, "DAG parsed")
        pools = subprocess.run(
            [sys.executable, "-m", "pipeline", "airflow-pools"], env=env, cwd=REPO, check=False
        )
        assert pools.returncode == 0
        yield env, engine
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        engine.dispose()
        with pg_server.connect() as conn:
            for database in (name, metadata):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def airflow_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "airflow"), *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def wait_for(condition, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(3)


def metadata(env: dict[str, str]) -> Engine:
    """Airflow's metadata database: polled with SQL, not with `airflow` commands, each of
    which is a new interpreter taking seconds of the CPU the scheduler's tasks need."""
    return _engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


@functools.cache
def _engine(url: str) -> Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def dag_parsed(env: dict[str, str]) -> bool:
    """Whether the DAG processor stored market_data (False until `airflow standalone` has
    even created its tables)."""
    try:
        with metadata(env).connect() as conn:
            query = sa.text("SELECT 1 FROM dag WHERE dag_id = 'market_data'")
            return bool(conn.execute(query).all())
    except sa.exc.ProgrammingError:
        return False


def backfill_runs(env: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """run_id -> (state, end_date) of the market_data backfill runs."""
    query = sa.text(
        "SELECT run_id, state, end_date FROM dag_run "
        "WHERE dag_id = 'market_data' AND run_id LIKE 'backfill\\_\\_%'"
    )
    with metadata(env).connect() as conn:
        return {run_id: (state, end) for run_id, state, end in conn.execute(query)}


def run_backfill(env: dict[str, str], *extra: str) -> None:
    before = backfill_runs(env)
    command = ("backfill", "create", "--dag-id", "market_data", "--from-date", START)
    outputs: list[str] = []

    def created() -> bool:
        # the scheduler marks a finished backfill complete some seconds after its runs end;
        # until then Airflow refuses a second one for the DAG
        outputs.append(airflow_cli(env, *command, "--to-date", END, *extra))
        assert "AlreadyRunningBackfill" in outputs[-1] or "Created backfill" in outputs[-1], (
            outputs[-1][-2000:]
        )
        return "Created backfill" in outputs[-1]

    wait_for(created, 180, "Airflow to accept the backfill")

    def finished() -> bool:
        runs = backfill_runs(env)
        return len(runs) == RUNS and all(
            state in ("success", "failed") and end != before.get(run_id, (None, None))[1]
            for run_id, (state, end) in runs.items()
        )

    wait_for(finished, 900, "backfill runs finished")
    assert {state for state, _ in backfill_runs(env).values()} == {"success"}


def test_an_airflow_backfill_under_faults_stores_exactly_what_a_clean_ingest_does(
    airflow, simulator, fresh_pg
) -> None:
    env, engine = airflow
    run_backfill(env)
    clean = fresh_pg()
    with simulator() as sim:
        client = exchange_client(sim.url)
        for market in MARKETS:
            ingest(client, clean, Market.model_validate(market), ms(START), ms(END) + HOUR)
    stored = window(engine)
    assert stored == window(clean)
    assert len(stored["ohlcv"]) == len(MARKETS) * RUNS
    assert stored["quarantine"]  # the rounded copies of the recorded duplicates
    assert stored["gaps"] == []


def test_backfilling_the_same_hours_again_changes_nothing(airflow) -> None:
    env, engine = airflow
    before = window(engine)
    run_backfill(env, "--reprocess-behavior", "completed")
    assert window(engine) == before


def test_the_scheduler_preloaded_the_tasks_modules_once_before_forking_its_workers(
    airflow,
) -> None:
    env, _ = airflow
    log = (Path(env["AIRFLOW_HOME"]) / "standalone.log").read_text()
    preloaded = [line for line in log.splitlines() if "preloaded" in line]
    assert len(preloaded) == 1, [line[:300] for line in preloaded]
    assert f"preloaded {len(TASK_MODULES)} modules" in preloaded[0]
    assert "the scheduler (LocalExecutor)" in preloaded[0]
    assert "could not import" not in log

"""The market_data DAG backfilled over `--days` days, LocalExecutor beside CeleryExecutor,
each with the tasks' modules preloaded in the process that forks them and without.

Every deployment runs on this machine, one after the other, each on fresh scratch
databases (Airflow's metadata in a Postgres database of its own for both, so that
the comparison is fair; a migrated cryptobots database), against the exchange
simulator on the recorded data, with every recorded binance 1h series as the markets
(BTC/USDT, ETH/USDT, ETH/BTC: one mapped task per market and run):

- local: `airflow standalone` (LocalExecutor);
- celery: the API server, scheduler, DAG processor, triggerer and two Celery workers
  (`default` and `gpu` queues; market_data runs on `default`) as separate processes,
  the broker a private Redis database (`--redis`, flushed before and after);
- each with `airflow.preload` on (the shipped default: pipeline.ops.preload) and off
  (`--preload on|off|both`; both by default, off first).

Each backfills market_data through Airflow's REST API (`POST /api/v2/backfills`, the
window ending `--end`, `max_active_runs` 4 for both); the exchange pool bounds both to
4 running tasks, and the default queue's worker gets as many slots
(`--worker-concurrency`; the shipped default is 2) so that a queued task waits for
the executor, not for a slot the Local side has and the Celery side lacks. Printed per
deployment: wall time (backfill created -> last run ended), runs, failed runs, tasks,
scheduling overhead per task (start_date - queued_dttm) p50/p90/max, task duration
(start_date -> end_date, Airflow's own) p50/p90; then the ratios Celery / Local and,
per executor, preloaded / not: the share of a task's p50 that was importing.
Floors: the Celery overhead per task p50 <= 2 s (issue 16); a preloaded task's
duration p50 <= 5 s on both executors (issue 29). Exits 1 when a run failed.

`--days 1` is 24 runs and 72 tasks per deployment; `--days 30` (720 runs, 2,160 tasks)
is issue 29's full figure (`--preload on` to skip the slow deployments without it,
`--executor local` or `celery` for one executor at a time).

    python -m bench.celery_overhead [--days 1] [--end 2020-03-01] [--preload both]
        [--executor both]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
import sqlalchemy as sa

from bench.common import scratch_database
from pipeline.arguments import Parser, positive_int
from pipeline.exchanges.simulator.app import SimulatorConfig, running
from pipeline.ops.airflow_api import AirflowAPI, admin_password
from pipeline.ops.children import Children, wait_until
from pipeline.ops.console import say
from pipeline.ops.deployment import ADMIN, airflow_env, free_port
from pipeline.ops.launch import start_airflow
from pipeline.settings import PROJECT_ROOT, Settings, normalize_db_url

DAG_ID = "market_data"
EXECUTORS = ("local", "celery")
MAX_ACTIVE_RUNS = 4
FLOOR_SECONDS = 2.0
DURATION_FLOOR_SECONDS = 5.0
PRELOAD_CHOICES = {"on": (True,), "off": (False,), "both": (False, True)}
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Result:
    """One executor's backfill: how long it took, and each task's timings in seconds."""

    executor: str
    preload: bool
    startup: float
    wall: float
    runs: int
    runs_failed: int
    tasks: int
    tasks_not_success: int
    overhead: np.ndarray  # start_date - queued_dttm
    duration: np.ndarray  # end_date - start_date


@contextlib.contextmanager
def empty_database(prefix: str) -> Iterator[str]:
    """A fresh, empty Postgres database (for Airflow's metadata); its URL. Dropped after."""
    server_url = normalize_db_url(os.environ.get("CRYPTOBOTS_TEST_PG_URL", SERVER_URL))
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def _seconds(pairs: list[tuple[datetime | None, datetime | None]]) -> np.ndarray:
    return np.array([(b - a).total_seconds() for a, b in pairs if a is not None and b is not None])


def measure(metadata: sa.Engine, backfill_id: int, created: datetime) -> dict[str, Any]:
    """The backfill's runs and task instances as Airflow recorded them."""
    with metadata.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT state, end_date FROM dag_run WHERE backfill_id = :id"),
            {"id": backfill_id},
        ).all()
        tis = conn.execute(
            sa.text(
                "SELECT ti.state, ti.queued_dttm, ti.start_date, ti.end_date "
                "FROM task_instance ti JOIN dag_run dr "
                "ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
                "WHERE dr.backfill_id = :id AND ti.state IS DISTINCT FROM 'removed'"
            ),
            {"id": backfill_id},
        ).all()
    ended = max((end for _, end in runs if end is not None), default=created)
    return {
        "wall": (ended - created).total_seconds(),
        "runs": len(runs),
        "runs_failed": sum(state != "success" for state, _ in runs),
        "tasks": len(tis),
        "tasks_not_success": sum(ti.state != "success" for ti in tis),
        "overhead": _seconds([(ti.queued_dttm, ti.start_date) for ti in tis]),
        "duration": _seconds([(ti.start_date, ti.end_date) for ti in tis]),
    }


def run_states(metadata: sa.Engine, backfill_id: int) -> str:
    with metadata.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT coalesce(state, 'none'), count(*) FROM dag_run "
                "WHERE backfill_id = :id GROUP BY 1 ORDER BY 1"
            ),
            {"id": backfill_id},
        ).all()
    return "runs: " + ", ".join(f"{n} {state}" for state, n in rows)


def bench(
    executor: str,
    preload: bool,
    args: argparse.Namespace,
    sim_url: str,
    markets: list[str],
    var: Path,
) -> Result:
    """Bring up `executor`'s deployment (its tasks' modules preloaded or not) on scratch
    databases, backfill, measure, tear down."""
    label = _label(executor, preload)
    with (
        scratch_database(f"bench_{executor}") as engine,
        empty_database(f"bench_{executor}_airflow") as metadata_url,
    ):
        settings = Settings(
            var_dir=var,
            db_url=engine.url.render_as_string(hide_password=False),
            markets=markets,
            exchanges={"binance": {"ccxt_id": "binance", "url": sim_url}},
            airflow={
                "executor": executor,
                "metadata_db_url": metadata_url,
                "broker_url": args.redis,
                "worker_concurrency": args.worker_concurrency,
            },
        )
        port = free_port()
        env = airflow_env(settings, port) | {
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "CRYPTOBOTS_MARKETS": ",".join(markets),
            "CRYPTOBOTS_EXCHANGES__BINANCE__URL": sim_url,
            "CRYPTOBOTS_AIRFLOW__PRELOAD": str(preload).lower(),
        }
        children = Children(var / "logs")
        metadata = sa.create_engine(normalize_db_url(metadata_url), pool_size=1)
        try:
            started = time.monotonic()
            start_airflow(settings, env, children)
            api = AirflowAPI(f"http://127.0.0.1:{port}", ADMIN, "")
            wait_until(api.healthy, 900, f"{label}: API server and scheduler", children)
            api.password = admin_password(var / "airflow" / "passwords.json")
            pools = subprocess.run(
                [sys.executable, "-m", "pipeline", "airflow-pools"], env=env, cwd=PROJECT_ROOT,
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if pools.returncode:
                raise RuntimeError(f"airflow-pools failed: {pools.stderr[-1000:]}")
            wait_until(lambda: DAG_ID in api.dag_ids(), 600, f"{DAG_ID} parsed", children)
            api.unpause(DAG_ID)
            startup = time.monotonic() - started
            say(f"{label}: up in {startup:.0f} s; backfilling {args.days} days of {DAG_ID}")

            end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)
            backfill = api.request(
                "POST",
                "/backfills",
                json={
                    "dag_id": DAG_ID,
                    "from_date": (end - timedelta(days=args.days)).isoformat(),
                    "to_date": (end - timedelta(hours=1)).isoformat(),  # the last interval
                    "max_active_runs": MAX_ACTIVE_RUNS,
                },
            )
            backfill_id = int(backfill["id"])
            created = datetime.fromisoformat(backfill["created_at"])

            def done() -> bool:
                try:
                    found = api.request("GET", f"/backfills/{backfill_id}")
                except httpx.HTTPError:  # a busy API server: ask again
                    return False
                return found["completed_at"] is not None

            wait_until(
                done,
                1800 + args.days * 24 * 60,
                f"backfill {backfill_id}",
                children,
                lambda: f"{label}: {run_states(metadata, backfill_id)}",
                every=30,
            )
            found = measure(metadata, backfill_id, created)
            say(f"{label}: done in {found['wall']:.0f} s, {run_states(metadata, backfill_id)}")
            return Result(executor, preload, startup, **found)
        finally:
            killed = children.stop()
            if killed:
                say(f"{label}: stopped ({', '.join(killed)} had to be killed)")
            metadata.dispose()


def recorded_1h_markets(sim: Any) -> list[str]:
    """Every binance 1h series the simulator serves, as markets."""
    recordings = [f.recording for f in sim.exchange.feeds.values() if f.recording.timeframe == "1h"]
    return sorted(f"binance:{r.symbol}:1h" for r in recordings)


def check_window(sim: Any, end: datetime, days: int) -> None:
    """Refuse a window outside the data every 1h series holds."""
    spans = [
        (int(f.recording.ts[0]), int(f.recording.ts[-1]) + f.recording.timeframe_ms)
        for f in sim.exchange.feeds.values()
        if f.recording.timeframe == "1h"
    ]
    first, last = max(s for s, _ in spans), min(e for _, e in spans)
    start_ms = int((end - timedelta(days=days)).timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000)
    if start_ms < first or end_ms > last:
        span = " to ".join(
            f"{datetime.fromtimestamp(t / 1000, UTC):%Y-%m-%d %H:%M}" for t in (first, last)
        )
        raise SystemExit(f"the window must lie within the recorded 1h data ({span} UTC)")


def _label(executor: str, preload: bool) -> str:
    return f"{executor}{'+preload' if preload else ''}"


def _row(r: Result) -> str:
    p50, p90, top = (np.percentile(r.overhead, q) for q in (50, 90, 100))
    d50, d90 = (np.percentile(r.duration, q) for q in (50, 90))
    return (
        f"{_label(r.executor, r.preload):<16} {r.runs:>5} {r.runs_failed:>6} {r.tasks:>6} "
        f"{r.wall:>8.1f}s {p50:>8.2f}s {p90:>7.2f}s {top:>7.2f}s {d50:>8.2f}s {d90:>7.2f}s "
        f"{r.startup:>7.0f}s"
    )


def ratios(local: Result, celery: Result) -> dict[str, float]:
    """Celery against Local: wall time, overhead p50 and duration p50, and Celery's
    overhead p50 in seconds (what the floor judges)."""
    return {
        "wall": celery.wall / local.wall,
        "overhead_p50": float(np.median(celery.overhead) / np.median(local.overhead)),
        "duration_p50": float(np.median(celery.duration) / np.median(local.duration)),
        "celery_overhead_p50_s": float(np.median(celery.overhead)),
    }


def preload_ratios(without: Result, preloaded: Result) -> dict[str, float]:
    """One executor preloaded against not: task duration p50 and wall time, and the share
    of a task's p50 without the preload that went to importing."""
    before, after = float(np.median(without.duration)), float(np.median(preloaded.duration))
    return {
        "duration_p50": after / before,
        "wall": preloaded.wall / without.wall,
        "import_share": max(before - after, 0.0) / before,
    }


def report(results: list[Result]) -> bool:
    """Print the table, the ratios and the floors; whether every run succeeded."""
    print(
        f"{'deployment':<16} {'runs':>5} {'failed':>6} {'tasks':>6} {'wall':>9} "
        f"{'ovh p50':>9} {'p90':>8} {'max':>8} {'dur p50':>9} {'p90':>8} {'startup':>8}"
    )
    for r in results:
        print(_row(r))
    found = {(r.executor, r.preload): r for r in results}
    ok = True
    for preload in (False, True):
        if ("local", preload) in found and ("celery", preload) in found:
            pair = ratios(found["local", preload], found["celery", preload])
            print(
                f"ratio celery / local{' (preloaded)' if preload else ''}: wall "
                f"{pair['wall']:.2f}x, overhead p50 {pair['overhead_p50']:.2f}x, duration p50 "
                f"{pair['duration_p50']:.2f}x"
            )
    for executor in EXECUTORS:
        if (executor, False) in found and (executor, True) in found:
            pair = preload_ratios(found[executor, False], found[executor, True])
            print(
                f"ratio {executor} preloaded / not: duration p50 {pair['duration_p50']:.2f}x, "
                f"wall {pair['wall']:.2f}x; importing was {pair['import_share']:.0%} of a "
                "task's p50"
            )
    celery = [r for r in results if r.executor == "celery"]
    if celery:
        p50 = float(np.median(celery[-1].overhead))
        verdict = "PASS" if p50 <= FLOOR_SECONDS else "FAIL"
        print(f"floor celery overhead per task p50 <= {FLOOR_SECONDS:g} s: {p50:.2f} s, {verdict}")
    for r in results:
        if r.preload:
            d50 = float(np.median(r.duration))
            verdict = "PASS" if d50 <= DURATION_FLOOR_SECONDS else "FAIL"
            print(
                f"floor {r.executor} preloaded task duration p50 <= "
                f"{DURATION_FLOOR_SECONDS:g} s: {d50:.2f} s, {verdict}"
            )
    for r in results:
        if r.runs_failed or r.tasks_not_success:
            label = _label(r.executor, r.preload)
            print(f"{label}: {r.runs_failed} runs and {r.tasks_not_success} tasks not success")
            ok = False
    return ok


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = Parser(prog="python -m bench.celery_overhead", description=__doc__)
    parser.add_argument(
        "--days",
        type=positive_int,
        default=1,
        help="days of hourly runs (24 a day); the issue's: 30",
    )
    parser.add_argument("--end", default="2020-03-01", help="end of the window (UTC)")
    parser.add_argument(
        "--worker-concurrency",
        type=positive_int,
        default=Settings().airflow.exchange_pool_slots,
        help="slots of the Celery default-queue worker (default: the exchange pool's)",
    )
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/13", help="the Celery broker (flushed)"
    )
    parser.add_argument(
        "--executor",
        choices=("both", *EXECUTORS),
        default="both",
        help="the executors to run (both: local, then celery)",
    )
    parser.add_argument(
        "--preload",
        choices=sorted(PRELOAD_CHOICES),
        default="both",
        help="the deployments with the tasks' modules preloaded (on), without (off), or both",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs' scratch folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # tear down (finally blocks) on timeout's SIGTERM

    signal.signal(signal.SIGTERM, on_signal)
    data_dir = Settings().data_dir
    if data_dir is None:
        raise SystemExit("no recorded market data: set CRYPTOBOTS_DATA_DIR")
    broker = redis.Redis.from_url(args.redis)
    var = Path(tempfile.mkdtemp(prefix="bench_celery_"))
    results: list[Result] = []
    try:
        broker.flushdb()
        with running(SimulatorConfig(data_dir=data_dir)) as sim:
            markets = recorded_1h_markets(sim)
            end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)
            check_window(sim, end, args.days)
            say(f"markets {', '.join(markets)}; {args.days * 24} runs ending {args.end}")
            for executor in EXECUTORS if args.executor == "both" else (args.executor,):
                for preload in PRELOAD_CHOICES[args.preload]:
                    folder = var / _label(executor, preload)
                    results.append(bench(executor, preload, args, sim.url, markets, folder))
    finally:
        broker.flushdb()
        if args.keep:
            say(f"logs kept in {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)
    if not report(results):
        sys.exit(1)


if __name__ == "__main__":
    main()

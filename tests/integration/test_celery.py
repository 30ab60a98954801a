"""Airflow's CeleryExecutor as `python -m pipeline run --executor celery` starts it: the
API server, scheduler, DAG processor, triggerer and two Celery workers (the `default`
and the `gpu` queue) as separate processes over Postgres and Redis, running the
project's DAGs against the exchange simulator. The workers share nothing but services:
each has a scratch folder of its own, and the artifact store is S3 (moto's server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import fsspec
import onnx
import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.errors import ConfigurationError
from pipeline.exchanges.simulator.app import SimulatorConfig, running
from pipeline.ops.airflow_api import AirflowAPI, admin_password
from pipeline.ops.children import Children
from pipeline.ops.deployment import (
    ADMIN,
    QUEUES,
    airflow_env,
    check_celery,
    free_port,
    worker,
)
from pipeline.ops.launch import DAGS, start_airflow
from pipeline.ops.preload import TASK_MODULES
from pipeline.settings import Settings
from tests.support.postgres import PG_SERVER_URL
from tests.support.services import require_redis

pytestmark = pytest.mark.postgres

SYSTEM_REDIS = "redis://127.0.0.1:6379/14"  # without redis-server: a database of its own
BUCKET = "cryptobots-celery"
HISTORY = {"days": 92, "end": "2020-01-01T00:00"}  # what the training test trains on
RUN_SECONDS = 600
FAULT_ENV = {  # a dead worker's task is failed (then retried) after 45 s without a heartbeat
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
}


class Broker:
    """The deployment's Redis: a private redis-server (append-only file, fsync always, as
    a broker that must not lose queued tasks runs) that a test may restart, or the
    machine's Redis when redis-server is not installed."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.directory, self.process = directory, None
        if self.binary is None:
            self.url = SYSTEM_REDIS
            require_redis(self.url)
        else:
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.start()
        redis.Redis.from_url(self.url).flushdb()

    def start(self) -> None:
        assert self.binary is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
        else:
            redis.Redis.from_url(self.url).flushdb()


@dataclass
class Deployment:
    """The running Celery deployment: its API, the cryptobots database, its settings."""

    api: AirflowAPI
    engine: Engine
    settings: Settings
    children: Children
    env: dict[str, str]
    broker: Broker

    def run(self, dag_id: str, conf: dict[str, Any], logical_date: str | None = None) -> str:
        """Trigger `dag_id`, wait for it to end; its run id (failing the test unless it
        succeeded, with the task states and the workers' logs)."""
        return self.wait(dag_id, self.api.trigger(dag_id, conf, logical_date))

    def wait(self, dag_id: str, run_id: str) -> str:
        """Wait for the run `run_id` of `dag_id` to end, failing the test unless it succeeded."""
        deadline = time.monotonic() + RUN_SECONDS
        while (state := self.api.run_state(dag_id, run_id)) not in ("success", "failed"):
            self.children.check()
            assert time.monotonic() < deadline, f"{dag_id} still {state}"
            time.sleep(2)
        if state != "success":
            logs = "\n".join(
                f"--- {log.name}\n{log.read_text()[-3000:]}"
                for log in sorted(self.children.log_dir.glob("worker-*.log"))
            )
            pytest.fail(f"{dag_id}: {self.api.task_states(dag_id, run_id)}\n{logs}")
        return run_id

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.api.request("GET", path, params={"limit": 100})["task_instances"]


def endpoint(aws: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": aws["AWS_ENDPOINT_URL"],
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
        "region_name": aws["AWS_DEFAULT_REGION"],
    }


@retry(retry=retry_if_exception_type(redis.ConnectionError), stop=stop_after_attempt(3))
def executed_by_worker(broker: str) -> dict[str, int]:
    """Celery tasks each worker has run so far, by its name (queue@host); asked again
    when the broker drops the connection of the question (seen once after its restart)."""
    with Celery(broker=broker) as app:
        stats = app.control.inspect(timeout=5).stats() or {}
    return {name: sum(s.get("total", {}).values()) for name, s in stats.items()}


def ran_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Celery tasks each queue's worker ran between two `executed_by_worker` readings.
    At least one per task instance, not exactly one: on a loaded host a publish that
    outlasts `[celery] operation_timeout` is sent again by the executor (CI saw 4 for 3),
    and the second copy is refused by the execution API as the instance is no longer
    queued."""
    return {name.split("@")[0]: n - before.get(name, 0) for name, n in after.items()}


def database(pg_server: Engine, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return sa.make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)


def drop(pg_server: Engine, url: str) -> None:
    with pg_server.connect() as conn:
        name = sa.make_url(url).database
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, pg_server: Engine, data_dir: Path
) -> Iterator[Deployment]:
    from moto.server import ThreadedMotoServer

    metadata, data = database(pg_server, "cb_airflow"), database(pg_server, "cb_celery")
    var_dir = tmp_path_factory.mktemp("celery") / "var"
    broker = Broker(var_dir.parent / "redis")
    port, s3_port = free_port(), free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    aws = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
    }
    boto3.client("s3", **endpoint(aws)).create_bucket(Bucket=BUCKET)
    settings = Settings(
        var_dir=var_dir,
        db_url=data,
        artifact_root=f"s3://{BUCKET}/artifacts",
        airflow={"executor": "celery", "metadata_db_url": metadata, "broker_url": broker.url},
    )
    engine = create_engine(data)
    upgrade(engine)
    children = Children(var_dir / "logs")
    try:
        with running(SimulatorConfig(data_dir=data_dir)) as simulator:
            env = (
                airflow_env(settings, port)
                | aws
                | FAULT_ENV
                | {
                    "AIRFLOW__API__WORKERS": "1",
                    "CRYPTOBOTS_EXCHANGES__BINANCE__URL": simulator.url,
                    "CRYPTOBOTS_PROMOTION__WINDOW_DAYS": "14",
                    "CRYPTOBOTS_PROMOTION__MIN_DSR": "0",  # a tiny budget: the wiring, not evidence
                    "CRYPTOBOTS_PROMOTION__MAX_FOLD_DRAWDOWN": "1",
                }
            )
            start_airflow(settings, env, children)
            api = AirflowAPI(f"http://127.0.0.1:{port}", ADMIN, "")
            deadline = time.monotonic() + 300
            while not api.healthy():
                children.check()
                assert time.monotonic() < deadline, "the Celery deployment never got healthy"
                time.sleep(2)
            api.password = admin_password(var_dir / "airflow" / "passwords.json")
            pools = [sys.executable, "-m", "pipeline", "airflow-pools"]
            assert subprocess.run(pools, env=env, timeout=300).returncode == 0
            while not set(DAGS) <= api.dag_ids():
                children.check()
                assert time.monotonic() < deadline, "the DAGs were never parsed"
                time.sleep(2)
            for dag_id in ("backfill_history", "train", "promote"):
                api.unpause(dag_id)  # market_data is unpaused by its test: it runs hourly
            yield Deployment(api, engine, settings, children, env, broker)
    finally:
        children.stop()
        s3.stop()
        engine.dispose()
        broker.stop()
        drop(pg_server, metadata)
        drop(pg_server, data)


def stored(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT symbol, count(*) FROM ohlcv GROUP BY symbol")).all()
    return dict(rows)


def test_backfill_history_runs_on_the_default_queues_worker(deployment: Deployment) -> None:
    before = executed_by_worker(deployment.broker.url)
    run_id = deployment.run("backfill_history", HISTORY)
    tis = deployment.task_instances("backfill_history", run_id)
    assert {ti["queue"] for ti in tis} == {"default"}
    assert all(ti["executor"] in (None, "CeleryExecutor") for ti in tis)
    ran = ran_since(before, executed_by_worker(deployment.broker.url))
    assert ran["gpu"] == 0
    assert ran["default"] >= len(tis)
    assert stored(deployment.engine) == {"BTC/USDT": 2208, "ETH/BTC": 2208, "ETH/USDT": 2208}


def test_market_data_stores_the_interval_of_every_market(deployment: Deployment) -> None:
    deployment.api.unpause("market_data")
    deployment.run("market_data", {}, logical_date="2020-02-01T05:00:00Z")
    with deployment.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT symbol FROM ohlcv WHERE ts = :ts ORDER BY symbol"),
            {"ts": 1580529600000},  # 2020-02-01T04:00Z: the interval [04:00, 05:00)
        ).scalars()
        assert list(rows) == ["BTC/USDT", "ETH/BTC", "ETH/USDT"]


def test_each_worker_preloaded_the_tasks_modules_once_before_forking_its_pool(
    deployment: Deployment,
) -> None:
    for queue in QUEUES:
        log = (deployment.children.log_dir / f"worker-{queue}.log").read_text()
        preloaded = [line for line in log.splitlines() if "preloaded" in line]
        assert len(preloaded) == 1, (queue, preloaded)
        assert f"preloaded {len(TASK_MODULES)} modules" in preloaded[0], queue
        assert "the Celery worker" in preloaded[0], queue
        assert "could not import" not in log, queue


def test_training_runs_on_the_gpu_queues_worker_and_its_candidate_is_promoted(
    deployment: Deployment,
) -> None:
    deployment.run("backfill_history", HISTORY)  # fetches nothing when already stored
    before = executed_by_worker(deployment.broker.url)
    conf = {
        "markets": ["binance:BTC/USDT:1h"], "valid_end": "2020-01-01", "train_days": 30,
        "valid_days": 14, "a2c_steps": 20000, "episode_length": 10, "folds": 2,
        "ensemble": 2, "algorithms": ["a2c"],
    }  # fmt: skip
    run_id = deployment.run("train", conf)
    training = [
        ti for ti in deployment.task_instances("train", run_id) if ti["task_id"] == "train_agent"
    ]
    assert len(training) == 2
    assert {ti["queue"] for ti in training} == {"gpu"}
    assert ran_since(before, executed_by_worker(deployment.broker.url))["gpu"] >= len(training)

    with deployment.engine.connect() as conn:
        artifacts = conn.execute(sa.text("SELECT artifacts FROM training_runs")).scalars().all()
    uris = [a[key] for a in artifacts for key in ("snapshot", "onnx", "equity_plot")]
    assert all(uri.startswith("s3://") for uri in uris), uris
    workers = deployment.settings.var_dir / "workers"
    assert (workers / "gpu" / "runs").is_dir(), "training ran in the gpu worker's scratch"
    assert not (workers / "gpu" / "snapshots").exists(), "snapshots are made on the other"
    assert (workers / "default" / "cache" / "onnx").is_dir(), "evaluation fetched the model"

    deployment.run("promote", {"version": 0})
    with deployment.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar()
        champion = conn.execute(
            sa.text("SELECT version FROM model_aliases WHERE alias = 'champion'")
        ).scalar()
        who = conn.execute(sa.text("SELECT who FROM promotion_events")).scalar()
    assert versions == 1, "one candidate: the newest fold's"
    assert champion == 1
    assert who.startswith("airflow:")


def test_a_gpu_worker_killed_mid_training_is_retried_and_registers_one_version_per_run(
    deployment: Deployment,
) -> None:
    """kill -9 of the gpu worker (its whole process group) while it trains; a new one
    starts in the same scratch folder, as a restarted host would. The task is retried
    after the missed heartbeats and the run ends with one training run per task, one
    registered candidate, every artifact whole in the store, no candle doubled."""
    deployment.run("backfill_history", HISTORY)
    candles = stored(deployment.engine)
    with deployment.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar()
    conf = {
        "markets": ["binance:BTC/USDT:1h"], "valid_end": "2020-01-01", "train_days": 30,
        "valid_days": 14, "a2c_steps": 400000, "episode_length": 10, "folds": 2,
        "ensemble": 2, "algorithms": ["a2c"],
    }  # fmt: skip
    run_id = deployment.api.trigger("train", conf)
    deadline = time.monotonic() + RUN_SECONDS
    while not (training := _running(deployment, run_id)):
        deployment.children.check()
        assert time.monotonic() < deadline, deployment.api.task_states("train", run_id)
        time.sleep(1)
    time.sleep(8)  # well into the training
    gpu = deployment.children.running["worker-gpu"]
    os.killpg(gpu.pid, signal.SIGKILL)
    gpu.wait(timeout=30)
    time.sleep(3)
    restarted = worker(deployment.settings, "gpu")
    deployment.children.start(restarted.name, restarted.argv, deployment.env | restarted.env)
    deployment.wait("train", run_id)

    tis = deployment.task_instances("train", run_id)
    agents = [ti for ti in tis if ti["task_id"] == "train_agent"]
    killed = next(ti for ti in agents if ti["map_index"] == training["map_index"])
    assert killed["try_number"] >= 2, "the killed training was retried"
    with deployment.engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT status, artifacts FROM training_runs WHERE orchestrator_run LIKE :r"),
            {"r": f"{run_id}/%"},
        ).all()
        after = conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar()
    assert len(runs) == len(agents), "one training run per task, the retry resumed it"
    assert {status for status, _ in runs} == {"evaluated"}
    assert after == versions + 1, "one candidate registered: the newest fold's"
    env = deployment.env
    fs = fsspec.filesystem(
        "s3",
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": "us-east-1"},
    )
    for _, artifacts in runs:
        with fs.open(artifacts["onnx"], "rb") as policy:
            onnx.checker.check_model(onnx.load_model_from_string(policy.read()))
    assert stored(deployment.engine) == candles


def _running(deployment: Deployment, run_id: str) -> dict[str, Any] | None:
    """The train_agent task instance of `run_id` running now, if any."""
    for ti in deployment.task_instances("train", run_id):
        if ti["task_id"] == "train_agent" and ti["state"] == "running":
            return ti
    return None


def test_a_redis_restart_mid_run_loses_no_task(deployment: Deployment) -> None:
    """The broker stops and starts again while market_data runs: the run completes and
    stores its hour of every market."""
    if deployment.broker.binary is None:
        pytest.skip("redis-server is not installed: the machine's Redis is not restarted")
    deployment.api.unpause("market_data")
    run_id = deployment.api.trigger("market_data", {}, "2020-02-03T05:00:00Z")
    deadline = time.monotonic() + 120
    while not deployment.api.task_states("market_data", run_id).keys() & {"queued", "running"}:
        assert time.monotonic() < deadline, "market_data never started"
        time.sleep(0.5)
    deployment.broker.stop()
    time.sleep(5)
    deployment.broker.start()
    deployment.wait("market_data", run_id)
    with deployment.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT symbol FROM ohlcv WHERE ts = :ts ORDER BY symbol"),
            {"ts": 1580702400000},  # 2020-02-03T04:00Z
        ).scalars()
        assert list(rows) == ["BTC/USDT", "ETH/BTC", "ETH/USDT"]


def test_a_worker_started_for_another_host_joins_and_runs_the_tasks(
    deployment: Deployment, tmp_path: Path
) -> None:
    """`python -m pipeline worker` on a "host" of its own (its own var dir, a copy of the
    secrets): with the local default worker told to stop consuming, it runs market_data."""
    settings = deployment.settings
    secrets = tmp_path / "secrets.json"
    secrets.write_text((settings.var_dir / "airflow" / "secrets.json").read_text())
    env = {
        **{k: v for k, v in deployment.env.items() if not k.startswith("AIRFLOW")},
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "host3"),
        "CRYPTOBOTS_AIRFLOW__METADATA_DB_URL": settings.airflow.metadata_db_url,
        "CRYPTOBOTS_AIRFLOW__BROKER_URL": deployment.broker.url,
    }
    argv = [sys.executable, "-m", "pipeline", "worker", "--queue", "default", "--secrets"]
    argv += [str(secrets), "--api-url", deployment.api.base]
    deployment.children.start("worker-default-remote", argv, env)
    broker = deployment.broker.url
    control = Celery(broker=broker).control
    deadline = time.monotonic() + 120
    while not [n for n in executed_by_worker(broker) if n.startswith("default-remote")]:
        deployment.children.check()
        assert time.monotonic() < deadline, "the remote worker never joined"
        time.sleep(2)
    local = [n for n in executed_by_worker(broker) if n.startswith("default@")]
    control.cancel_consumer("default", destination=local, reply=True)
    deployment.api.unpause("market_data")  # as an earlier test does: runnable alone too
    try:
        before = executed_by_worker(broker)
        run_id = deployment.run("market_data", {}, logical_date="2020-02-02T05:00:00Z")
        tis = deployment.task_instances("market_data", run_id)
        after = executed_by_worker(broker)
    finally:
        control.add_consumer("default", destination=local, reply=True)
    ran = ran_since(before, after)
    assert ran["default-remote"] >= len(tis)
    assert ran["default"] == 0
    assert (tmp_path / "host3" / "airflow").is_dir(), "it ran as a host of its own"


def test_a_broker_that_does_not_answer_is_refused_naming_the_setting(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        airflow={
            "executor": "celery",
            "metadata_db_url": "postgresql://postgres@127.0.0.1:5432/airflow",
            "broker_url": f"redis://127.0.0.1:{free_port()}/0",
        },
    )
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_AIRFLOW__BROKER_URL"):
        check_celery(settings, timeout=2)

"""Shared fixtures: real databases (a fresh Postgres database per module, SQLite files).

Postgres comes from CRYPTOBOTS_TEST_PG_URL (default: the local server). When it
cannot be reached the Postgres tests are skipped locally, and fail the run when
CI=true: CI never passes by silently skipping them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.exchanges.simulator.app import Running, SimulatorConfig, running
from pipeline.settings import ENV_PREFIX, default_data_dir, mask_url
from tests.support.paths import REPO
from tests.support.postgres import PG_SERVER_URL

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


# Side by side under pytest-xdist (`make test ARGS="-n 3"`, opt-in): each group
# below runs on one worker, one test after another, so its module fixtures (an Airflow, a
# database, one running main job for tests/e2e) are built once and the Airflow deployments
# and the training runs, which share two cores badly, queue instead of overlapping.
# Every other module is a group of its own. The longest groups are handed out first.
SERIAL_GROUPS = {
    "e2e": {"test_main_job", "test_browser"},
    "airflow": {"test_dags", "test_models_page", "test_arbitrage_report_dag"},
    "celery": {"test_celery"},
    "cpu": {"test_rl_training", "test_benches", "test_training", "test_promotion"},
}


def group_of(nodeid: str) -> str:
    """The xdist group of a test: its SERIAL_GROUPS name, else its module's path."""
    module = nodeid.split("::", 1)[0]
    stem = Path(module).stem
    return next((name for name, stems in SERIAL_GROUPS.items() if stem in stems), module)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The serial groups first, in SERIAL_GROUPS' order (longest first); the rest as collected."""
    order = {name: rank for rank, name in enumerate(SERIAL_GROUPS)}
    items.sort(key=lambda item: order.get(group_of(item.nodeid), len(order)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Whole groups to a worker (xdist's own loadgroup marks do not reach pytest 9's node
    ids, so the scope is computed from the node id here)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


@pytest.fixture(autouse=True)
def _isolated_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CRYPTOBOTS_* variable of the outer shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX) and not key.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """main() points the root logger at this test's stderr: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite database (not created) and var dir for a CLI run, set in the environment."""
    url = f"sqlite:///{tmp_path / 'var' / 'cryptobots.db'}"
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", url)
    monkeypatch.setenv("CRYPTOBOTS_VAR_DIR", str(tmp_path / "var"))
    return url


@pytest.fixture(scope="session")
def airflow_metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Airflow's SQLite metadata database, migrated once per session (`airflow db migrate`
    is seconds of CPU): each module's isolated Airflow starts from a copy
    (`tests.support.airflow.migrated_home`)."""
    from tests.support.airflow import airflow_env

    home = tmp_path_factory.mktemp("airflow-metadata")
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=airflow_env(home),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return home / "airflow.db"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the Postgres server's maintenance database."""
    engine = sa.create_engine(
        PG_SERVER_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        message = (
            f"PostgreSQL at {mask_url(PG_SERVER_URL)} (CRYPTOBOTS_TEST_PG_URL) is unreachable: "
            f"{str(error.orig).strip()}"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def pg_url(request: pytest.FixtureRequest, pg_server: Engine) -> Iterator[str]:
    """URL of a fresh, empty Postgres database for this test module, dropped afterwards."""
    module = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.split(".")[-1].lower())
    name = f"cb_{module[:40]}_{uuid.uuid4().hex[:8]}"
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module", params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh empty database URL, once per backend: SQLite file, then real Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'cryptobots.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module")
def migrated_engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    engine = create_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The recorded market data (../shared/data); CI has it beside the clone."""
    found = default_data_dir()
    if found is None:
        message = "recorded market data not found at ../shared/data (CRYPTOBOTS_DATA_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture
def simulator(data_dir: Path) -> Callable[..., AbstractContextManager[Running]]:
    """Start simulators over the recorded data: `with simulator(fault_rate=0.2) as url:`."""

    def start(**options: object) -> AbstractContextManager[Running]:
        return running(SimulatorConfig(data_dir=options.pop("data_dir", data_dir), **options))

    return start


@pytest.fixture
def fresh_pg(pg_server: Engine) -> Iterator[Callable[[], Engine]]:
    """Make fresh, migrated Postgres databases inside a test; all dropped afterwards."""
    made: list[tuple[str, Engine]] = []

    def make() -> Engine:
        name = f"cb_fresh_{uuid.uuid4().hex[:12]}"
        with pg_server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.make_url(PG_SERVER_URL).set(database=name)
        engine = create_engine(url.render_as_string(hide_password=False))
        upgrade(engine)
        made.append((name, engine))
        return engine

    yield make
    for name, engine in made:
        engine.dispose()
        with pg_server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def slim_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The interpreter of a fresh virtual environment holding serving/requirements.txt
    and nothing else (uv installs it from its cache in about a second)."""
    uv = Path(sys.executable).with_name("uv")
    uv_command = str(uv) if uv.exists() else shutil.which("uv")
    assert uv_command, "uv not found: run `make setup`"
    venv = tmp_path_factory.mktemp("slim") / "venv"
    for command in (
        [uv_command, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [
            uv_command, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
            "-r", str(REPO / "serving" / "requirements.txt"),
        ],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    return str(venv / "bin" / "python")

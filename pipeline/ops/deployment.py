"""The Airflow processes of one deployment over this checkout, per executor.

- local: `airflow standalone` (API server, scheduler, DAG processor, triggerer and a
  LocalExecutor in one process tree), metadata in SQLite under `var/airflow` unless
  `airflow.metadata_db_url` names a database.
- celery: Airflow's CeleryExecutor as it runs past one machine: the API server,
  scheduler, DAG processor and triggerer as separate processes, and two Celery
  workers, one on the `default` queue and one on the `gpu` queue (the train DAG's
  training tasks), sharing nothing but the metadata database (Postgres), the broker
  (Redis) and the secrets every Airflow process must agree on.

`processes()` says what to start and with which environment; `pipeline.ops.launch`
starts them, and the Celery test starts the same list. `remote_worker()` is one more
Celery worker on another host (`python -m pipeline worker`), joining a running
deployment through its services only.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigurationError
from pipeline.settings import PROJECT_ROOT, Settings, mask_url

ADMIN = "admin"
CELERY_CONFIG_OPTION = "pipeline.ops.celery_config.CELERY_CONFIG"
QUEUES = ("default", "gpu")


@dataclass(frozen=True)
class Process:
    """One Airflow process: its name (and log file), command line and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def airflow_bin(name: str = "airflow") -> str:
    """An executable of this interpreter's environment (airflow, celery, ...)."""
    return str(Path(sys.executable).parent / name)


def metadata_url(settings: Settings) -> str:
    """Airflow's metadata database: the configured one, or SQLite under var/airflow."""
    configured = settings.airflow.metadata_db_url.strip()
    if configured:
        return configured
    return f"sqlite:///{settings.var_dir / 'airflow' / 'airflow.db'}"


def airflow_env(
    settings: Settings, port: int, shared: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of every process of the deployment (Airflow's and the trader's):
    Airflow's home, this checkout's DAGs and plugins, the executor, the metadata
    database, the API server's address, and the settings, explicit and absolute.
    `shared`: the secrets every Airflow process agrees on (default: `shared_secrets`)."""
    home = settings.var_dir / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url(settings),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "CRYPTOBOTS_VAR_DIR": str(settings.var_dir),
        "CRYPTOBOTS_DB_URL": settings.db_url,
        "CRYPTOBOTS_ARTIFACT_ROOT": settings.artifact_root,
    }
    if settings.airflow.executor == "celery":
        shared = shared or shared_secrets(home / "secrets.json")
        env |= {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": settings.airflow.broker_url,
            # the provider's default Celery configuration, plus the workers' preload
            "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": CELERY_CONFIG_OPTION,
            "AIRFLOW__CORE__FERNET_KEY": shared["fernet_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": shared["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": shared["secret_key"],
            # a task not acknowledged within this is sent to a worker again: longer than
            # the longest task (training: 6 h)
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        }
    return env


def shared_secrets(path: Path) -> dict[str, str]:
    """The Fernet key, JWT secret and API secret key every process of a distributed
    deployment must share (each process would otherwise make up its own, and a worker's
    task token would not verify at the API server): made once, kept in `path` (0600)."""
    if path.exists():
        return read_secrets(path)
    from cryptography.fernet import Fernet

    made = {
        "fernet_key": Fernet.generate_key().decode(),
        "jwt_secret": secrets.token_urlsafe(32),
        "secret_key": secrets.token_urlsafe(32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(made, out)
    return made


SECRET_KEYS = ("fernet_key", "jwt_secret", "secret_key")


def read_secrets(path: Path) -> dict[str, str]:
    """The shared secrets kept in `path`; a file that is not such a JSON object is refused,
    naming it and where a good copy comes from."""
    try:
        shared = json.loads(path.read_text())
        problem = (
            None
            if isinstance(shared, dict)
            and all(isinstance(shared.get(key), str) and shared[key] for key in SECRET_KEYS)
            else f"it must be a JSON object with {', '.join(SECRET_KEYS)}"
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = str(error)
    if problem:
        raise ConfigurationError(
            f"{path} is not an Airflow secrets file ({problem}): copy var/airflow/secrets.json "
            "from the host that runs `python -m pipeline run --executor celery` unchanged"
        )
    return shared


def check_celery(settings: Settings, timeout: float = 5.0) -> None:
    """Refuse a Celery deployment that cannot work, naming the setting and the fix: the
    metadata in SQLite (one process at a time) or a broker that does not answer."""
    url = settings.airflow.metadata_db_url.strip()
    if not url or url.startswith("sqlite"):
        raise ConfigurationError(
            "the celery executor needs Airflow's metadata in Postgres: set "
            "CRYPTOBOTS_AIRFLOW__METADATA_DB_URL to a database of its own, e.g. "
            "postgresql://postgres@127.0.0.1:5432/airflow (not CRYPTOBOTS_DB_URL's)"
        )
    if url == settings.db_url:
        raise ConfigurationError(
            "airflow.metadata_db_url is the cryptobots database (CRYPTOBOTS_DB_URL): give "
            "Airflow a database of its own; both keep an alembic_version table"
        )
    from kombu import Connection

    broker = settings.airflow.broker_url
    try:
        with Connection(broker, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as error:  # kombu raises the transport's own errors
        raise ConfigurationError(
            f"the Celery broker {mask_url(broker)} does not answer ({error}): start Redis "
            "there or set CRYPTOBOTS_AIRFLOW__BROKER_URL to one that runs"
        ) from error


def free_port() -> int:
    """A TCP port nothing listens on now (for a worker's log server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker(settings: Settings, queue: str, concurrency: int | None = None) -> Process:
    """A Celery worker serving `queue`, with a log server port and a scratch space of its
    own, as on a host of its own: what a task hands to another goes through the
    artifact store and the database."""
    if queue not in QUEUES:
        raise ConfigurationError(f"unknown queue {queue!r}: use one of {', '.join(QUEUES)}")
    slots = (
        concurrency
        or {
            "default": settings.airflow.worker_concurrency,
            "gpu": settings.airflow.gpu_worker_concurrency,
        }[queue]
    )
    return Process(
        f"worker-{queue}",
        [
            airflow_bin(),
            "celery",
            "worker",
            "--queues",
            queue,
            "--concurrency",
            str(slots),
            "--celery-hostname",
            f"{queue}@{socket.gethostname()}",
        ],
        {
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "CRYPTOBOTS_VAR_DIR": str(settings.var_dir / "workers" / queue),
        },
    )


def processes(settings: Settings) -> list[Process]:
    """What to start, in order, for `settings.airflow.executor`."""
    airflow = airflow_bin()
    if settings.airflow.executor == "local":
        return [Process("airflow", [airflow, "standalone"])]
    return [
        Process("api-server", [airflow, "api-server"]),
        Process("scheduler", [airflow, "scheduler"]),
        Process("dag-processor", [airflow, "dag-processor"]),
        Process(
            "triggerer",
            [airflow, "triggerer"],
            {"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())},
        ),
        *(worker(settings, queue) for queue in QUEUES),
    ]


def check_remote_worker(settings: Settings, secrets_file: Path) -> None:
    """Refuse a worker for another host that could not work there, naming the setting:
    everything it shares with the deployment must be a service, not a local file."""
    if settings.db_url.startswith("sqlite"):
        raise ConfigurationError(
            "a worker on another host needs the cryptobots database as a server: set "
            "CRYPTOBOTS_DB_URL to the deployment's Postgres (it is SQLite here, "
            f"{settings.db_url})"
        )
    local_default = str(settings.var_dir / "artifacts")
    if "artifact_root" not in settings.model_fields_set or settings.artifact_root in (
        "",
        local_default,
    ):
        raise ConfigurationError(
            "a worker on another host needs the artifact store the other workers use: set "
            "CRYPTOBOTS_ARTIFACT_ROOT to the deployment's (an s3:// URL, or a folder every "
            "host mounts); without it snapshots and policies would stay on this host"
        )
    if not secrets_file.is_file():
        raise ConfigurationError(
            f"no Airflow secrets at {secrets_file}: copy var/airflow/secrets.json from the "
            "host that runs `python -m pipeline run --executor celery` (every Airflow "
            "process needs the same Fernet key, JWT secret and API secret key) and pass "
            "it with --secrets"
        )
    read_secrets(secrets_file)
    check_celery(settings)


def remote_worker(
    settings: Settings,
    queue: str,
    api_url: str,
    secrets_file: Path,
    concurrency: int | None = None,
) -> Process:
    """A Celery worker on another host for the deployment whose API server is at
    `api_url`: its process with the whole environment (the metadata database, broker,
    cryptobots database, artifact store, shared secrets, the execution API)."""
    settings = settings.model_copy(
        update={"airflow": settings.airflow.model_copy(update={"executor": "celery"})}
    )
    check_remote_worker(settings, secrets_file)
    shared = read_secrets(secrets_file)
    process = worker(settings, queue, concurrency)
    env = airflow_env(settings, 8080, shared) | process.env
    env |= {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url.rstrip('/')}/execution/",
        "CRYPTOBOTS_VAR_DIR": str(settings.var_dir),
    }
    argv = [*process.argv[:-1], f"{queue}-remote@{socket.gethostname()}"]
    return Process(f"{process.name}-remote", argv, env)

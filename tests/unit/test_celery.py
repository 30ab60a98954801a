"""A Celery deployment refused before anything starts: a worker for another host without
the artifact store, on SQLite or without the secrets, and Celery without Postgres metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.ops.deployment import (
    check_celery,
    check_remote_worker,
)
from pipeline.settings import Settings


def test_a_worker_for_another_host_without_the_artifact_store_is_refused(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text("{}")
    settings = Settings(var_dir=tmp_path, db_url="postgresql://postgres@127.0.0.1:5432/test")
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_ARTIFACT_ROOT"):
        check_remote_worker(settings, secrets)


def test_a_worker_for_another_host_on_sqlite_is_refused(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, artifact_root="s3://bucket/cryptobots")
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_DB_URL"):
        check_remote_worker(settings, tmp_path / "secrets.json")


def test_a_worker_for_another_host_without_the_secrets_is_refused(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        db_url="postgresql://postgres@127.0.0.1:5432/test",
        artifact_root="s3://bucket/cryptobots",
    )
    with pytest.raises(ConfigurationError, match=r"secrets\.json"):
        check_remote_worker(settings, tmp_path / "secrets.json")


def test_a_celery_deployment_without_postgres_metadata_is_refused(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, airflow={"executor": "celery"})
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_AIRFLOW__METADATA_DB_URL"):
        check_celery(settings)

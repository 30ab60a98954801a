"""The Helm chart values of the Celery deployment: its worker sets, their queues and slots."""

from __future__ import annotations

import functools
from typing import Any

import yaml

from tests.support.dag_queues import AIRFLOW_DEFAULT_QUEUE
from tests.support.paths import REPO

VALUES = REPO / "deploy" / "helm" / "values.yaml"
CONCURRENCY_ENV = "AIRFLOW__CELERY__WORKER_CONCURRENCY"


# -- reading the values the way the chart does ----------------------------------------


@functools.cache
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def worker_sets(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each Celery worker workload by name. A set's keys replace the parent's (for the
    lists and maps checked here, the chart's workersMergeValues does the same)."""
    celery = {k: v for k, v in document["workers"]["celery"].items() if k != "sets"}
    found = {}
    if celery.get("enableDefault", True):
        found["default"] = {"queue": AIRFLOW_DEFAULT_QUEUE, **celery}
    for item in document["workers"]["celery"].get("sets", []):
        found[item["name"]] = {**celery, **item}
    return found


def queues(worker_set: dict[str, Any]) -> list[str]:
    return [queue.strip() for queue in str(worker_set["queue"]).split(",")]


def env_of(entries: list[dict[str, Any]] | None) -> dict[str, str]:
    return {e["name"]: e["value"] for e in entries or [] if "value" in e}


def concurrency(document: dict[str, Any], worker_set: dict[str, Any]) -> int:
    """Task slots of a worker set: its own environment, else airflow.cfg's."""
    own = env_of(worker_set.get("env")).get(CONCURRENCY_ENV)
    return int(own if own is not None else document["config"]["celery"]["worker_concurrency"])

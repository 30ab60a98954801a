"""The Celery queues the project's DAG files route tasks to, read from their source."""

from __future__ import annotations

import ast

from tests.support.paths import REPO

AIRFLOW_DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue


def routed_queues() -> set[str]:
    """Every `queue=` a file in dags/ names, and the default queue (a computed queue
    fails: a worker could not be checked against it)."""
    routed = {AIRFLOW_DEFAULT_QUEUE}
    for dag_file in (REPO / "dags").glob("*.py"):
        for node in ast.walk(ast.parse(dag_file.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "queue":
                assert isinstance(node.value, ast.Constant), f"{dag_file.name}: computed queue"
                routed.add(node.value.value)
    return routed

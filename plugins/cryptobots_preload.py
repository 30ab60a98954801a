"""Preload the tasks' modules in LocalExecutor's scheduler before it forks its workers.

A listener's `on_starting` runs when an Airflow job starts (scheduler, triggerer, DAG
processor) and in each task process; only the scheduler that forks tasks (`airflow
scheduler`, also under `airflow standalone`, with LocalExecutor) preloads. Celery
workers preload through `pipeline.ops.celery_config`. See `pipeline.ops.preload`.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin


class PreloadListener:
    """Preloads on the scheduler's start, when `airflow.preload` is on."""

    @hookimpl
    def on_starting(self, component: object) -> None:
        from airflow.configuration import conf

        from pipeline.ops.preload import preload, scheduler_forks_tasks

        if not scheduler_forks_tasks(
            type(component).__name__, sys.argv, conf.get("core", "executor")
        ):
            return
        from pipeline.settings import load_settings

        if load_settings().airflow.preload:
            preload(where="the scheduler (LocalExecutor)")


class CryptobotsPreloadPlugin(AirflowPlugin):
    name = "cryptobots_preload"
    listeners: ClassVar[list[object]] = [PreloadListener()]

"""The Celery app's configuration for CeleryExecutor deployments, with the preload.

`[celery] celery_config_options` (AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS) names
`CELERY_CONFIG`: the Celery provider's default configuration unchanged. Importing this
module also connects Celery's `import_modules` signal, which a Celery worker sends once
in its main process before it forks its pool: there the tasks' modules are preloaded
(`pipeline.ops.preload`, when `airflow.preload` is on). The scheduler and API server
import this module too, to send tasks; the signal never fires there.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


@import_modules.connect
def preload_in_worker(*_: object, **__: object) -> None:
    """Preload the tasks' modules in the Celery worker's main process."""
    from pipeline.ops.preload import preload
    from pipeline.settings import load_settings

    if load_settings().airflow.preload:
        preload(where="the Celery worker")
